"""Your own table (CSV, Parquet or a directory of Parquet files + a YAML schema), and the file
helpers every loader shares.

``load_table(path, schema_yaml)`` turns any interaction log into the loader contract of
:mod:`flip_ctr.data.schema`; the YAML keys and the value rules (missing markers, text or numeric
labels) are documented in :mod:`flip_ctr.data.sources.table_schema`. Reading rules:

- CSV files are read as UTF-8 with every column as text, so identifiers such as ``"007"``
  keep their leading zeros, and values are stripped of surrounding whitespace; Parquet
  columns of any type are cast to text (not stripped).
- A directory is read as its ``*.parquet`` files in name order (one table).
- ``time_column`` may be integer/float seconds, a date/datetime column (Parquet) or ISO-8601
  text; it becomes the Int64 ``timestamp`` column (seconds since the epoch).
- ``row_in_source`` is the 0-based data-row position (across the files of a directory), the
  tie-breaker of the chronological sort done by the preprocess layer.

The module also holds the small I/O helpers shared by the other loaders (reading plain or
gzip files, strict decoding with a line number on failure, the final-newline check that
catches truncated files, and splitting delimiter-separated lines with exact line numbers in
error messages).
"""

from __future__ import annotations

import glob as globlib
import gzip
import io
import logging
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from flip_ctr.data.schema import (
    LABEL_COLUMN,
    ROW_COLUMN,
    TIME_COLUMN,
    DatasetSchema,
    DataError,
    Field,
    LabelRule,
    LoadedTable,
)
from flip_ctr.data.sources.table_schema import (
    UNKNOWN,
    check_columns,
    check_labels,
    field_value,
    label_rule,
    read_table_schema,
    row_location,
)

log = logging.getLogger(__name__)
LINE_COLUMN = "_line"  # 1-based physical line number, kept while parsing for error messages


# --------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a DataError that says what the file should hold."""
    path = Path(path)
    if not path.is_file():
        where = "is a directory, not a file" if path.is_dir() else "not found"
        raise DataError(f"{path}: {what} {where}")
    return path


def read_bytes(path: Path) -> bytes:
    """File contents, gunzipped when the file is gzip (by magic bytes, whatever the suffix).

    Raises DataError for a missing, empty or corrupt-gzip file.
    """
    path = Path(path)
    require_file(path, "file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path}: not a valid gzip file ({err})") from err
    elif path.suffix == ".gz":
        raise DataError(f"{path}: expected a gzip file (name ends in .gz), found no gzip header")
    if not raw.strip():
        raise DataError(f"{path}: file is empty")
    return raw


def decode_text(raw: bytes, path: Path, encoding: str) -> str:
    """Decode ``raw``; ``encoding`` is "utf-8", "latin-1" or "latin-1-or-utf-8".

    - "utf-8": strict; an undecodable byte raises DataError with its 1-based line number.
    - "latin-1-or-utf-8": the GroupLens/BX formats are ISO-8859-1, but a user may have
      re-encoded them to UTF-8. Non-ASCII content that is valid UTF-8 is read as UTF-8
      (real ISO-8859-1 text with accents is practically never valid UTF-8), else ISO-8859-1.
    A leading UTF-8 byte-order mark is removed.
    """
    if encoding == "utf-8":
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            line = raw.count(b"\n", 0, err.start) + 1
            bad = raw[err.start : err.start + 1].hex()
            raise DataError(
                f"{path} line {line}: byte 0x{bad} is not valid UTF-8 (expected a UTF-8 encoded file, "
                f"found undecodable bytes; re-encode the file as UTF-8)"
            ) from err
    elif encoding == "latin-1":
        text = raw.decode("latin-1")
    elif encoding == "latin-1-or-utf-8":
        text = None
        if not raw.isascii():
            try:
                text = raw.decode("utf-8")
                log.info("%s: non-ASCII content is valid UTF-8; reading it as UTF-8 instead of ISO-8859-1", path)
            except UnicodeDecodeError:
                text = None
        if text is None:
            text = raw.decode("latin-1")
    else:  # pragma: no cover - programming error
        raise ValueError(f"unknown encoding {encoding!r}")
    return text.removeprefix("\ufeff")


def require_final_newline(raw: bytes, path: Path, first_line: int = 1) -> None:
    """A text file that does not end with a newline may have been cut short (a partial copy or
    download): its last line would be read as a complete, but wrong, record. ``raw`` may be the
    file's last chunk, starting at line ``first_line``."""
    if raw.endswith(b"\n"):
        return
    line = raw.count(b"\n") + first_line
    last = raw[raw.rfind(b"\n") + 1 :].decode("latin-1")
    raise DataError(
        f"{path} line {line}: the file does not end with a newline, so its last line may be truncated "
        f"(it ends with {last[-60:]!r}); if the file is complete, add the missing final newline"
    )


def read_text(path: Path, encoding: str) -> str:
    """:func:`read_bytes` + :func:`require_final_newline` + :func:`decode_text`."""
    raw = read_bytes(path)
    require_final_newline(raw, path)
    return decode_text(raw, path, encoding)


def text_lines(text: str) -> list[str]:
    """Physical lines (LF or CRLF), without the empty tail after the last newline(s)."""
    lines = text.split("\n")
    while lines and lines[-1].strip() == "":
        lines.pop()
    return lines


def _describe_sep(sep: str) -> str:
    return {"\t": "tab", "|": "'|'", "::": "'::'", ",": "','", ";": "';'"}.get(sep, repr(sep))


def split_delimited(
    path: Path,
    sep: str,
    columns: Sequence[str],
    *,
    encoding: str,
    header: bool = False,
    lines: list[str] | None = None,
) -> pl.DataFrame:
    """Split a plain delimiter-separated file (no quoting) into Utf8 columns.

    Every physical line must have exactly ``len(columns)`` fields; the first line that does
    not raises DataError naming the file, its 1-based line number and the expected layout.
    With ``header`` the first line is skipped (the caller checked it). The frame gets the
    1-based line number in column ``_line``. ``lines`` may be given when the caller already
    decoded the file.
    """
    if lines is None:
        lines = text_lines(read_text(path, encoding))
    first = 1
    if header:
        lines = lines[1:]
        first = 2
    if not lines:
        raise DataError(f"{path}: no data rows (only a header)" if header else f"{path}: file is empty")
    s = pl.Series("line", lines, dtype=pl.Utf8).str.strip_chars_end("\r")
    parts = s.str.split(sep)
    counts = parts.list.len()
    bad = counts != len(columns)
    if bad.any():
        i = int(bad.arg_true()[0])
        got = int(counts[i])
        value = s[i]
        hint = " (blank line)" if value.strip() == "" else ""
        if got == 1 and value.strip():
            for other in ("::", "\t", "|", ",", ";"):
                if other != sep and other in value:
                    hint = f" (the line looks {_describe_sep(other)}-separated: wrong file or separator?)"
                    break
        raise DataError(
            f"{path} line {i + first}: expected {len(columns)} {_describe_sep(sep)}-separated fields "
            f"{sep.join(columns)}, got {got}{hint}: {value[:120]!r}"
        )
    frame = pl.DataFrame(
        {name: parts.list.get(k, null_on_oob=True) for k, name in enumerate(columns)}
        | {LINE_COLUMN: pl.int_range(first, first + len(lines), eager=True, dtype=pl.Int64)}
    )
    return frame


def cast_number(
    frame: pl.DataFrame,
    column: str,
    path: Path,
    *,
    dtype: type[pl.DataType] = pl.Int64,
    what: str | None = None,
    line_column: str = LINE_COLUMN,
) -> pl.Series:
    """Text column → Int64/Float64; the first unparsable value raises DataError with its line."""
    text = frame[column].str.strip_chars()
    out = text.cast(dtype, strict=False)
    bad = out.is_null()
    if dtype == pl.Float64:
        bad = bad | ~out.is_finite().fill_null(False)
    if bad.any():
        i = int(bad.arg_true()[0])
        kind = "an integer" if dtype == pl.Int64 else "a number"
        raise DataError(
            f"{path} line {frame[line_column][i]}: column {what or column!r}: expected {kind}, "
            f"got {frame[column][i]!r} ({int(bad.sum())} such value(s) in the file)"
        )
    return out


def cast_rating(frame: pl.DataFrame, column: str, path: Path, low: int, high: int, *, what: str | None = None) -> pl.Series:
    """A rating column → Int64, each value an integer in the dataset's documented scale
    ``[low, high]``; the first that is not (text, a fraction, out of range) raises DataError with its line."""
    numbers = frame[column].str.strip_chars().cast(pl.Float64, strict=False)
    bad = (numbers.is_null() | ~numbers.is_between(low, high) | (numbers != numbers.floor())).fill_null(True)
    if bad.any():
        i = int(bad.arg_true()[0])
        raise DataError(
            f"{path} line {frame[LINE_COLUMN][i]}: column {what or column!r}: expected an integer rating from {low} to {high}, "
            f"got {frame[column][i]!r} ({int(bad.sum())} such value(s) in the file)"
        )
    return numbers.cast(pl.Int64)


def check_unique(frame: pl.DataFrame, column: str, path: Path, what: str) -> None:
    """Duplicate keys in a users/items file would multiply rating rows in the join."""
    dup = ~frame[column].is_first_distinct()
    if dup.any():
        i = int(dup.arg_true()[0])
        raise DataError(
            f"{path} line {frame[LINE_COLUMN][i]}: duplicate {what} {frame[column][i]!r} "
            f"(each {what} must appear once)"
        )


def check_references(
    frame: pl.DataFrame,
    key: str,
    known: pl.Series,
    path: Path,
    ref_path: Path,
    what: str,
    *,
    line_column: str = LINE_COLUMN,
) -> None:
    """Every ``frame[key]`` must be in ``known`` (e.g. each rating's user in users.dat)."""
    missing = ~frame[key].is_in(known.implode())  # implode: the membership meaning, without polars' ambiguity warning
    if missing.any():
        i = int(missing.arg_true()[0])
        raise DataError(
            f"{path} line {frame[line_column][i]}: {what} {frame[key][i]!r} does not appear in {ref_path} "
            f"({int(missing.sum())} row(s) reference a {what} missing from that file)"
        )


def locate_dir(data_dir: str | Path, subdirs: Sequence[str], markers: Sequence[str]) -> Path:
    """``data_dir`` itself when it holds one of ``markers``, else the first ``data_dir/<subdir>`` that does.

    Lets callers pass either the dataset folder (``.../ml-1m``) or the data root.
    """
    base = Path(data_dir).expanduser()
    if not base.exists():
        raise DataError(f"{base}: data directory not found")
    if not base.is_dir():
        raise DataError(f"{base}: expected a data directory, found a file")
    candidates = [base] + [base / s for s in subdirs]
    for cand in candidates:
        if any((cand / m).exists() for m in markers):
            return cand
    return base


def apply_label_rule(table: pl.DataFrame, rule: LabelRule, rating_column: str, where: str) -> pl.DataFrame:
    """Apply ``rule`` and log how many rows it dropped (the only rows a loader may drop)."""
    before = table.height
    out = rule.apply(table, rating_column)
    dropped = before - out.height
    if rule.drop_equal:
        log.info("%s: label rule dropped %d of %d rows with rating == %g", where, dropped, before, rule.threshold)
    return out


# --------------------------------------------------------------------------------------
# load_table
# --------------------------------------------------------------------------------------

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".tsv", ".txt")


def parquet_files(path: str | Path) -> list[Path]:
    """A Parquet file, a directory of ``*.parquet`` / ``*.pq`` (name order) or a glob → files."""
    text = os.fspath(path)
    p = Path(text).expanduser()
    if p.is_dir():
        files = sorted(x for x in p.iterdir() if x.suffix in PARQUET_SUFFIXES and x.is_file())
    elif p.is_file():
        files = [p]
    else:
        files = [Path(x) for x in sorted(globlib.glob(text))]
    if not files:
        raise DataError(f"{path}: no Parquet file found (expected a .parquet file, a directory of them or a glob)")
    for f in files:
        if not set(PARQUET_SUFFIXES) & set(f.suffixes):
            raise DataError(f"{f}: only Parquet files can be read from a directory or glob (a CSV table: give the file)")
    return files


def table_paths(path: str | Path | None, schema_yaml: str | Path | None, data_dir: str | Path | None) -> tuple[Path, Path]:
    """(the table: file or directory, the schema YAML). Without ``path``, ``data_dir`` is the table;
    with both, a relative ``path``/``schema_yaml`` that does not exist is taken relative to ``data_dir``."""
    if schema_yaml is None:
        raise DataError("the table's YAML schema is required (data.schema=SCHEMA.yaml): it says which columns are fields and the label")
    if path is None:
        if data_dir is None:
            raise DataError("the table is required (data.path=FILE_OR_DIR: a CSV/TSV/Parquet file or a directory of Parquet files)")
        path, data_dir = data_dir, None
    table, yaml_path = Path(path).expanduser(), Path(schema_yaml).expanduser()
    if data_dir is not None and Path(data_dir).is_dir():
        if not table.is_absolute() and not table.exists():
            table = Path(data_dir) / table
        if not yaml_path.is_absolute() and not yaml_path.exists():
            yaml_path = Path(data_dir) / yaml_path
    return table, yaml_path


def table_data_files(table: Path) -> list[Path]:
    """The file(s) a table is read from: a CSV/TSV/Parquet file, or the Parquet files of a directory."""
    if table.is_dir() or not table.exists() and any(c in str(table) for c in "*?["):
        return parquet_files(table)
    require_file(table, "table file (CSV, TSV or Parquet, or a directory of Parquet files)")
    suffixes = {s.lower() for s in table.suffixes}
    if not suffixes & set(PARQUET_SUFFIXES + CSV_SUFFIXES):
        raise DataError(f"{table}: unsupported table format {table.suffix!r} (expected .csv, .tsv, .parquet or a directory of .parquet files)")
    return [table]


def table_files(path: str | Path | None = None, schema_yaml: str | Path | None = None, *,
                data_dir: str | Path | None = None) -> list[Path]:
    """Every file :func:`load_table` reads with these arguments (the table file(s), then the schema)."""
    table, yaml_path = table_paths(path, schema_yaml, data_dir)
    return [*table_data_files(table), require_file(yaml_path, "table schema (YAML)")]


def parquet_table(path: str | Path | None = None, schema_yaml: str | Path | None = None, *,
                  data_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(the table, its schema YAML) for the out-of-core build (``data.engine=streaming``,
    :mod:`flip_ctr.data.preprocess_large`), which scans Parquet only: a CSV/TSV table is refused
    here, naming the file, rather than deep inside the build."""
    table, yaml_path = table_paths(path, schema_yaml, data_dir)
    for f in table_data_files(table):
        if not {s.lower() for s in f.suffixes} & set(PARQUET_SUFFIXES):
            raise DataError(
                f"{f}: data.engine=streaming reads Parquet tables only, this one is {f.suffix!r} "
                "(convert it to Parquet, or use data.engine=memory)"
            )
    return table, require_file(yaml_path, "table schema (YAML)")


def _read_csv_table(path: Path, sep: str) -> pl.DataFrame:
    text = read_text(path, "utf-8")
    try:
        frame = pl.read_csv(
            io.BytesIO(text.encode("utf-8")),
            separator=sep,
            infer_schema=False,
            empty_string_is_null=True,
            raise_if_empty=True,
        )
    except Exception as err:  # polars raises several exception types for malformed CSV
        raise DataError(f"{path}: could not parse as {_describe_sep(sep)}-separated CSV with a header ({err})") from err
    if frame.width == 1 and sep not in text.split("\n", 1)[0]:
        for other in (",", ";", "\t", "|"):
            if other != sep and other in frame.columns[0]:
                raise DataError(
                    f"{path} line 1: expected a {_describe_sep(sep)}-separated header, found one column "
                    f"{frame.columns[0][:80]!r} (set `separator: \"{other}\"` in the schema YAML?)"
                )
    return frame


def _read_table(files: list[Path], spec: dict) -> tuple[pl.DataFrame, int]:
    """(the raw table, the line of data row 0 minus 0: 2 for CSV, 0 (no lines) for Parquet)."""
    first = files[0]
    if set(PARQUET_SUFFIXES) & {s.lower() for s in first.suffixes}:
        try:
            return pl.read_parquet([str(f) for f in files]), 0
        except Exception as err:  # noqa: BLE001 - polars/arrow raise several types
            raise DataError(f"{', '.join(map(str, files[:3]))}: could not read as Parquet ({err})") from err
    sep = spec["separator"] or ("\t" if ".tsv" in {s.lower() for s in first.suffixes} else ",")
    return _read_csv_table(first, sep), 2  # data row i (0-based) is on line i + 2 when no value holds a line break


def _to_epoch_seconds(col: pl.Series, path: Path, name: str, line_offset: int) -> pl.Series:
    dtype = col.dtype
    if dtype.is_integer():
        out = col.cast(pl.Int64)
    elif dtype.is_float():
        out = col.floor().cast(pl.Int64, strict=False)
    elif dtype == pl.Date:
        out = col.cast(pl.Datetime("ms")).dt.epoch("s")
    elif isinstance(dtype, pl.Datetime):
        out = col.dt.epoch("s")
    elif dtype == pl.Utf8:
        out = _text_to_epoch_seconds(col)
    else:
        raise DataError(f"{path}: time column {name!r} has type {dtype}, expected seconds, a date/datetime or ISO-8601 text")
    bad = out.is_null()
    if bad.any():
        i = int(bad.arg_true()[0])
        raise DataError(
            f"{row_location(str(path), i, line_offset)}: time column {name!r}: "
            f"expected epoch seconds, a date/datetime or ISO-8601 text, got {col[i]!r}"
        )
    return out


def _text_to_epoch_seconds(col: pl.Series) -> pl.Series:
    text = col.str.strip_chars()
    out = text.cast(pl.Int64, strict=False)
    out = out.fill_null(text.cast(pl.Float64, strict=False).floor().cast(pl.Int64, strict=False))
    if out.null_count() > text.null_count():
        try:
            parsed = text.str.to_datetime(strict=False, time_unit="ms")
        except Exception:  # noqa: BLE001 - no ISO-8601 format could be inferred
            return out
        if parsed.dtype.time_zone is None:  # type: ignore[union-attr]
            parsed = parsed.dt.replace_time_zone("UTC")
        out = out.fill_null(parsed.dt.epoch("s"))
    return out


def _dataset_schema(spec: dict, has_time: bool) -> DatasetSchema:
    fields = tuple(Field(f["column"], f["name"], f["side"], f["missing"]) for f in spec["fields"])
    return DatasetSchema(spec["name"], fields, time_column=TIME_COLUMN if has_time else None)


def _labelled_rows(frame: pl.DataFrame, spec: dict, source: str, line_offset: int, yaml_path: Path) -> pl.DataFrame:
    """Field values, label, timestamp and row position of every kept row (see the value rules)."""
    label = spec["label"]
    dtypes = frame.schema
    lf = frame.lazy().with_row_index(ROW_COLUMN).with_columns(pl.col(ROW_COLUMN).cast(pl.Int64))
    check_labels(lf, label, dtypes[label["column"]], yaml_path, source, line_offset, ROW_COLUMN)
    label_value, keep = label_rule(label, dtypes[label["column"]])
    columns = [field_value(f, dtypes[f["column"]], strip=line_offset > 0).alias(f["column"]) for f in spec["fields"]]
    columns += [label_value.alias(LABEL_COLUMN)] + ([pl.col(TIME_COLUMN)] if TIME_COLUMN in frame.columns else []) + [pl.col(ROW_COLUMN)]
    if keep is not None:
        lf = lf.filter(keep)
    out = lf.select(columns).collect()
    if keep is not None:
        log.info("%s: label rule dropped %d of %d rows with label == %g", source, frame.height - out.height, frame.height, label["threshold"])
    return out


def load_table(
    path: str | Path | None = None,
    schema_yaml: str | Path | None = None,
    *,
    data_dir: str | Path | None = None,
) -> LoadedTable:
    """Load a CSV/TSV (optionally gzip) or Parquet file, or a directory of Parquet files, described by a YAML schema.

    ``load_table(path, schema_yaml)``; ``data_dir`` is the fallback of :func:`table_paths`
    (``data.data_dir=TABLE`` works like ``data.path=TABLE``). See
    :mod:`flip_ctr.data.sources.table_schema` for the YAML keys and the value rules. Errors name
    the YAML file and key (schema problems) or the data file, row, column and value.
    """
    table, yaml_path = table_paths(path, schema_yaml, data_dir)
    spec = read_table_schema(require_file(yaml_path, "table schema (YAML)"))
    files = table_data_files(table)
    frame, line_offset = _read_table(files, spec)
    if frame.height == 0:
        raise DataError(f"{table}: table has a header but no rows")
    check_columns(spec, frame.columns, yaml_path, str(table))
    time_column = spec["time_column"]
    if time_column:
        frame = frame.with_columns(_to_epoch_seconds(frame[time_column], table, time_column, line_offset).alias(TIME_COLUMN))
    work = _labelled_rows(frame, spec, str(table), line_offset, yaml_path)
    loaded = LoadedTable(work, _dataset_schema(spec, bool(time_column)), [*files, yaml_path])
    loaded.validate()
    log.info("%s: loaded %d rows, %d fields", table, loaded.table.height, len(spec["fields"]))
    return loaded


__all__ = [
    "UNKNOWN",
    "LINE_COLUMN",
    "load_table",
    "table_files",
    "parquet_table",
    "table_paths",
    "parquet_files",
    "read_table_schema",
    "require_file",
    "read_bytes",
    "read_text",
    "decode_text",
    "text_lines",
    "split_delimited",
    "cast_number",
    "cast_rating",
    "check_unique",
    "check_references",
    "locate_dir",
    "apply_label_rule",
]
