"""Your own table (CSV or Parquet + a YAML schema), and the file helpers every loader shares.

``load_table(path, schema_yaml)`` turns any interaction log into the loader contract of
:mod:`flip_ctr.data.schema`. The YAML file says which columns are fields, what they are
called in the text template, which side they describe, how the label is made and (optionally)
which column orders the rows in time::

    name: my_shop
    fields:
      - {column: user, name: user id, side: user}
      - {column: item_title, name: item title, side: item}
      - {column: hour, name: hour of day}            # side defaults to "context"
    label: {column: clicked}                         # already 0/1 (or true/false)
    # label: {column: stars, threshold: 3, drop_equal: true}   # stars > 3 → 1, == 3 dropped
    time_column: ts                                  # optional
    separator: ","                                   # optional, CSV only (default ",")

Value rules (documented contract):

- CSV files are read as UTF-8 with every column as text, so identifiers such as ``"007"``
  keep their leading zeros; Parquet columns of any type are cast to text. Field values are
  stripped of surrounding whitespace only at the CSV level (not at all for Parquet).
- A null or empty field value becomes the string ``"unknown"`` (one shared "missing" value
  per field, so missing is a feature like any other).
- The label column must hold 0/1 (or true/false) when no ``threshold`` is given; otherwise it
  must be numeric and ``value > threshold`` is positive (``drop_equal`` removes ties). A null
  or non-numeric label is an error, never a silent drop.
- ``time_column`` may be integer/float seconds, a date/datetime column (Parquet) or ISO-8601
  text; it becomes the Int64 ``timestamp`` column (seconds since the epoch).
- ``row_in_source`` is the 0-based data-row position in the file (the tie-breaker of the
  chronological sort done by the preprocess layer).

The module also holds the small I/O helpers shared by the other loaders (reading plain or
gzip files, strict decoding with a line number on failure, and splitting delimiter-separated
lines with exact line numbers in error messages).
"""

from __future__ import annotations

import gzip
import io
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
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
        lines = text_lines(decode_text(read_bytes(path), path, encoding))
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
    missing = ~frame[key].is_in(known)
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

_TOP_KEYS = {"name", "fields", "label", "time_column", "separator"}
_REQUIRED_TOP = {"name", "fields", "label"}
_FIELD_KEYS = {"column", "name", "side"}
_LABEL_KEYS = {"column", "threshold", "drop_equal"}


def _yaml_error(yaml_path: Path, key: str, message: str) -> DataError:
    return DataError(f"{yaml_path}: key {key!r}: {message}")


def read_table_schema(schema_yaml: str | Path) -> dict[str, Any]:
    """Parse and validate the YAML schema of :func:`load_table` (structure only, not columns)."""
    import yaml

    yaml_path = Path(schema_yaml)
    raw = read_bytes(yaml_path)
    text = decode_text(raw, yaml_path, "utf-8")
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise DataError(f"{yaml_path}: not valid YAML ({err})") from err
    if not isinstance(spec, dict):
        raise DataError(f"{yaml_path}: expected a mapping with keys {sorted(_REQUIRED_TOP)}, got {type(spec).__name__}")
    unknown = set(spec) - _TOP_KEYS
    if unknown:
        raise _yaml_error(yaml_path, sorted(unknown)[0], f"unknown key (allowed: {sorted(_TOP_KEYS)})")
    for key in sorted(_REQUIRED_TOP - set(spec)):
        raise _yaml_error(yaml_path, key, "missing (required keys: name, fields, label)")
    if not isinstance(spec["name"], str) or not spec["name"]:
        raise _yaml_error(yaml_path, "name", f"expected a non-empty string, got {spec['name']!r}")
    fields = spec["fields"]
    if not isinstance(fields, list) or not fields:
        raise _yaml_error(yaml_path, "fields", "expected a non-empty list of {column, name, side}")
    for i, f in enumerate(fields):
        key = f"fields[{i}]"
        if not isinstance(f, dict):
            raise _yaml_error(yaml_path, key, f"expected a mapping {{column, name, side}}, got {f!r}")
        unknown = set(f) - _FIELD_KEYS
        if unknown:
            raise _yaml_error(yaml_path, f"{key}.{sorted(unknown)[0]}", f"unknown key (allowed: {sorted(_FIELD_KEYS)})")
        for req in ("column", "name"):
            if req not in f:
                raise _yaml_error(yaml_path, f"{key}.{req}", "missing")
            if not isinstance(f[req], str) or not f[req]:
                raise _yaml_error(yaml_path, f"{key}.{req}", f"expected a non-empty string, got {f[req]!r}")
        side = f.get("side", "context")
        if side not in ("user", "item", "context"):
            raise _yaml_error(yaml_path, f"{key}.side", f"expected user, item or context, got {side!r}")
    columns = [f["column"] for f in fields]
    dups = sorted({c for c in columns if columns.count(c) > 1})
    if dups:
        raise _yaml_error(yaml_path, "fields", f"column(s) {dups} listed more than once")
    label = spec["label"]
    if not isinstance(label, dict):
        raise _yaml_error(yaml_path, "label", f"expected a mapping {{column, threshold, drop_equal}}, got {label!r}")
    unknown = set(label) - _LABEL_KEYS
    if unknown:
        raise _yaml_error(yaml_path, f"label.{sorted(unknown)[0]}", f"unknown key (allowed: {sorted(_LABEL_KEYS)})")
    if "column" not in label or not isinstance(label["column"], str):
        raise _yaml_error(yaml_path, "label.column", "missing or not a string")
    if "threshold" in label and (isinstance(label["threshold"], bool) or not isinstance(label["threshold"], (int, float))):
        raise _yaml_error(yaml_path, "label.threshold", f"expected a number, got {label['threshold']!r}")
    if "drop_equal" in label:
        if not isinstance(label["drop_equal"], bool):
            raise _yaml_error(yaml_path, "label.drop_equal", f"expected true/false, got {label['drop_equal']!r}")
        if "threshold" not in label:
            raise _yaml_error(yaml_path, "label.drop_equal", "only meaningful together with label.threshold")
    if label["column"] in columns:
        raise _yaml_error(yaml_path, "label.column", f"{label['column']!r} is also listed as a field")
    tc = spec.get("time_column")
    if tc is not None and (not isinstance(tc, str) or not tc):
        raise _yaml_error(yaml_path, "time_column", f"expected a column name, got {tc!r}")
    sep = spec.get("separator", ",")
    if not isinstance(sep, str) or len(sep) != 1:
        raise _yaml_error(yaml_path, "separator", f"expected one character, got {sep!r}")
    return spec


def _read_csv_table(path: Path, sep: str) -> pl.DataFrame:
    raw = read_bytes(path)
    text = decode_text(raw, path, "utf-8")
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
        text = col.str.strip_chars()
        out = text.cast(pl.Int64, strict=False)
        floats = text.cast(pl.Float64, strict=False)
        out = out.fill_null(floats.floor().cast(pl.Int64, strict=False))
        if out.null_count() > text.null_count():
            try:
                parsed = text.str.to_datetime(strict=False, time_unit="ms")
            except Exception:  # noqa: BLE001 - no ISO-8601 format could be inferred
                parsed = None
            if parsed is not None:
                if parsed.dtype.time_zone is None:  # type: ignore[union-attr]
                    parsed = parsed.dt.replace_time_zone("UTC")
                out = out.fill_null(parsed.dt.epoch("s"))
    else:
        raise DataError(f"{path}: time column {name!r} has type {dtype}, expected seconds, a date/datetime or ISO-8601 text")
    bad = out.is_null()
    if bad.any():
        i = int(bad.arg_true()[0])
        raise DataError(
            f"{path} data row {i + 1}{line_offset and f' (line {i + line_offset})' or ''}: time column {name!r}: "
            f"expected epoch seconds, a date/datetime or ISO-8601 text, got {col[i]!r}"
        )
    return out


def load_table(
    path: str | Path | None = None,
    schema_yaml: str | Path | None = None,
    *,
    data_dir: str | Path | None = None,
) -> LoadedTable:
    """Load a CSV (``.csv``, ``.tsv``, optionally ``.gz``) or Parquet file described by a YAML schema.

    ``load_table(path, schema_yaml)``. For the loader registry (which passes ``data_dir=``):
    a relative ``path``/``schema_yaml`` is taken relative to ``data_dir``, and without
    ``path`` ``data_dir`` itself is the table file.

    See the module docstring for the YAML keys and the value rules. Errors name the YAML file
    and key (schema problems) or the data file, row and column (data problems).
    """
    if schema_yaml is None:
        raise DataError("load_table: schema_yaml is required (the YAML file that describes the table)")
    if path is None:
        if data_dir is None:
            raise DataError("load_table: give the table file (path=... or data_dir=...)")
        path = Path(data_dir)
    path, yaml_path = Path(path), Path(schema_yaml)
    if data_dir is not None and Path(data_dir).is_dir():
        if not path.is_absolute() and not path.exists():
            path = Path(data_dir) / path
        if not yaml_path.is_absolute() and not yaml_path.exists():
            yaml_path = Path(data_dir) / yaml_path
    spec = read_table_schema(yaml_path)
    require_file(path, "table file")
    suffixes = [s.lower() for s in path.suffixes]
    is_parquet = ".parquet" in suffixes or ".pq" in suffixes
    line_offset = 0
    if is_parquet:
        try:
            frame = pl.read_parquet(path)
        except Exception as err:
            raise DataError(f"{path}: could not read as Parquet ({err})") from err
    elif {".csv", ".tsv", ".txt"} & set(suffixes):
        sep = spec.get("separator", "\t" if ".tsv" in suffixes else ",")
        frame = _read_csv_table(path, sep)
        line_offset = 2  # data row i (0-based) is on line i + 2 when no value holds a line break
    else:
        raise DataError(f"{path}: unsupported table format {path.suffix!r} (expected .csv, .tsv or .parquet)")
    if frame.height == 0:
        raise DataError(f"{path}: table has a header but no rows")

    field_specs = spec["fields"]
    label_spec = spec["label"]
    time_column = spec.get("time_column")
    needed = [(f"fields[{i}].column", f["column"]) for i, f in enumerate(field_specs)]
    needed.append(("label.column", label_spec["column"]))
    if time_column:
        needed.append(("time_column", time_column))
    for key, column in needed:
        if column not in frame.columns:
            raise DataError(
                f"{yaml_path}: key {key!r}: column {column!r} not found in {path} "
                f"(its columns: {frame.columns[:30]})"
            )

    def where(i: int) -> str:
        return f"{path} data row {i + 1}" + (f" (line {i + line_offset})" if line_offset else "")

    out: dict[str, pl.Series] = {}
    for f in field_specs:
        col = frame[f["column"]]
        text = col if col.dtype == pl.Utf8 else col.cast(pl.Utf8)
        if col.dtype == pl.Utf8 and line_offset:
            text = text.str.strip_chars()
        text = text.fill_null(UNKNOWN)
        text = text.replace("", UNKNOWN)
        out[f["column"]] = text

    label_col = frame[label_spec["column"]]
    if label_col.null_count():
        i = int(label_col.is_null().arg_true()[0])
        raise DataError(f"{where(i)}: label column {label_spec['column']!r} is empty")
    if label_col.dtype == pl.Boolean:
        numeric = label_col.cast(pl.Float64)
    elif label_col.dtype == pl.Utf8:
        lowered = label_col.str.strip_chars().str.to_lowercase()
        numeric = lowered.replace({"true": "1", "false": "0"}).cast(pl.Float64, strict=False)
    else:
        numeric = label_col.cast(pl.Float64, strict=False)
    if numeric.null_count():
        i = int(numeric.is_null().arg_true()[0])
        raise DataError(f"{where(i)}: label column {label_spec['column']!r}: expected a number, got {label_col[i]!r}")
    rating_col = "__rating"
    work = pl.DataFrame(out).with_columns(
        numeric.alias(rating_col),
        pl.int_range(0, frame.height, dtype=pl.Int64).alias(ROW_COLUMN),
    )
    if time_column:
        work = work.with_columns(_to_epoch_seconds(frame[time_column], path, time_column, line_offset).alias(TIME_COLUMN))

    if "threshold" in label_spec:
        rule = LabelRule(float(label_spec["threshold"]), bool(label_spec.get("drop_equal", False)))
        work = apply_label_rule(work, rule, rating_col, str(path))
    else:
        bad = ~numeric.is_in([0.0, 1.0])
        if bad.any():
            i = int(bad.arg_true()[0])
            raise DataError(
                f"{where(i)}: label column {label_spec['column']!r}: expected 0/1 (no threshold in {yaml_path}), "
                f"got {label_col[i]!r}; add `threshold:` to the label to binarise ratings"
            )
        work = work.with_columns(pl.col(rating_col).cast(pl.Int8).alias(LABEL_COLUMN))

    fields = tuple(Field(f["column"], f["name"], f.get("side", "context")) for f in field_specs)
    schema = DatasetSchema(spec["name"], fields, time_column=TIME_COLUMN if time_column else None)
    columns = [f.column for f in fields] + [LABEL_COLUMN] + ([TIME_COLUMN] if time_column else []) + [ROW_COLUMN]
    loaded = LoadedTable(work.select(columns), schema, [path, yaml_path])
    loaded.validate()
    log.info("%s: loaded %d rows, %d fields", path, loaded.table.height, len(fields))
    return loaded


__all__ = [
    "UNKNOWN",
    "LINE_COLUMN",
    "load_table",
    "read_table_schema",
    "require_file",
    "read_bytes",
    "decode_text",
    "text_lines",
    "split_delimited",
    "cast_number",
    "check_unique",
    "check_references",
    "locate_dir",
    "apply_label_rule",
]
