"""Out-of-core preprocessing of a large Parquet table into the artifact of :mod:`flip_ctr.data.preprocess`.

:func:`flip_ctr.data.preprocess.build_artifact` holds the whole loaded table (every field as a
string column) in memory and sorts it: fine for ML-1M, tens of GiB for a 20M-row, 15-field
log. This module produces the *same* artifact (same files, same manifest, readable with
:func:`flip_ctr.data.preprocess.read_artifact`; equal arrays, checked by tests/test_synthetic.py)
without ever materialising the table:

1. **Keys** (one streaming scan of two columns): timestamp and row position of every kept
   row → the chronological order by a stable ``argsort`` on the timestamp (equal timestamps keep
   file order, as ``sort([timestamp, row_in_source])`` does). The split is
   :meth:`SplitConfig.sizes`; the training part is then the expression
   ``(timestamp, row) < (t*, r*)`` with ``(t*, r*)`` the key of the first test row, so the
   later scans need no per-row lookup.
2. **Vocabulary**, one field at a time (a streaming ``group_by`` over one column): per value
   its training count; seen values first (most frequent first, ties by value text), then the
   values that only occur outside the training part (by text); local index 0 is the OOV slot;
   frequencies over the training part.
3. **Encoding**, one field at a time: a streaming left join of the column with the field's
   dictionary gives the local index of every row in file order (an int32 array), permuted to
   chronological order and written into column ``f`` of a memory-mapped ``value_ids.npy``
   ``[N, F]`` int32 (``numpy.lib.format.open_memmap``): never more than one field's int32
   column in memory besides the dictionary.

Peak memory is ~ (a few int arrays of N) + the largest field dictionary + polars' streaming
buffers, not N × F strings; see results/benchmarks.md for a measured 20M-row run.

Input: one Parquet file, a directory of ``*.parquet`` files (read in name order; ``row_in_source``
counts rows across them) or a glob, plus the YAML schema of
:func:`flip_ctr.data.sources.table.load_table`, whose value rules apply unchanged: field values
cast to text, null or empty → ``"unknown"``; label 0/1 (or true/false) or ``threshold`` /
``drop_equal``; ``row_in_source`` is the position in the file before any row is dropped.
Time column: integer or float seconds, Date or Datetime, or text holding (integer or float)
seconds. ISO-8601 *text* timestamps, which ``load_table`` also parses, are not supported here
(a DataError says so): convert them to a Datetime column first.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import polars as pl

from flip_ctr.atomic import atomic_directory
from flip_ctr.data import cache
from flip_ctr.data.preprocess import (
    OOV_TEXT,
    Artifact,
    SplitConfig,
    StaleCacheError,
    load_or_build,
    read_artifact,
    value_dictionary,
    write_manifest,
)
from flip_ctr.data.schema import LABEL_COLUMN, ROW_COLUMN, TIME_COLUMN, DataError, DatasetSchema, Field
from flip_ctr.data.sources.table import parquet_files, read_table_schema
from flip_ctr.data.sources.table_schema import check_columns, check_labels, field_value, label_rule

log = logging.getLogger(__name__)

__all__ = ["ENGINES", "check_engine", "load_artifact", "parquet_files", "preprocess_large", "load_or_build_large"]  # parquet_files: re-exported

_STREAMING = "streaming"
# data.engine: how the artifact of a data config is built (load_artifact)
ENGINES = ("memory", "streaming")


def _time_expr(column: str, dtype: pl.DataType, where: str) -> pl.Expr:
    col = pl.col(column)
    if dtype.is_integer():
        return col.cast(pl.Int64)
    if dtype.is_float():
        return col.floor().cast(pl.Int64, strict=False)
    if dtype == pl.Date:
        return col.cast(pl.Datetime("ms")).dt.epoch("s")
    if isinstance(dtype, pl.Datetime):
        return col.dt.epoch("s")
    if dtype == pl.Utf8:
        text = col.str.strip_chars()
        return text.cast(pl.Int64, strict=False).fill_null(text.cast(pl.Float64, strict=False).floor().cast(pl.Int64, strict=False))
    raise DataError(f"{where}: time column {column!r} has type {dtype}, expected seconds, a date or a datetime")


def _first_row(lf: pl.LazyFrame, condition: pl.Expr) -> dict:
    return lf.filter(condition).head(1).collect(engine=_STREAMING).row(0, named=True)


# ------------------------------------------------------------------------------------------
# the build
# ------------------------------------------------------------------------------------------
def preprocess_large(
    table_path: str | Path,
    schema_yaml: str | Path,
    out_path: str | Path,
    split: SplitConfig | None = None,
    progress=None,
    source: dict | None = None,
) -> dict:
    """Builds the artifact of ``table_path`` (+ YAML schema) into ``out_path`` (atomically).
    ``source``: recorded in the manifest (what a cache entry was built from).

    Returns a summary: rows, split sizes, features, per-phase seconds. ``progress`` (a
    callable taking a string) receives one line per phase/field.
    """
    split = split or SplitConfig()
    say = progress or (lambda msg: log.info("%s", msg))
    t_start = time.perf_counter()
    phases: dict[str, float] = {}
    files = parquet_files(table_path)
    yaml_path = Path(schema_yaml)
    spec = read_table_schema(yaml_path)
    where = ", ".join(str(f) for f in files[:3]) + (f" (+{len(files) - 3} files)" if len(files) > 3 else "")

    try:
        lf = pl.scan_parquet([str(f) for f in files], row_index_name=ROW_COLUMN)
        schema = lf.collect_schema()
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{where}: could not read as Parquet ({err})") from err
    lf = lf.with_columns(pl.col(ROW_COLUMN).cast(pl.Int64))
    field_specs, label_spec, time_column = spec["fields"], spec["label"], spec["time_column"]
    check_columns(spec, list(schema), yaml_path, where)

    # -- label and rows kept ----------------------------------------------------------------
    t0 = time.perf_counter()
    rows_in_files = lf.select(pl.len()).collect(engine=_STREAMING).item()
    if rows_in_files == 0:
        raise DataError(f"{where}: table has no rows")
    check_labels(lf, label_spec, schema[label_spec["column"]], yaml_path, where, 0, ROW_COLUMN)
    time_expr = _time_expr(time_column, schema[time_column], where) if time_column else None
    if time_expr is not None and lf.select(time_expr.is_null().any()).collect(engine=_STREAMING).item():
        row = _first_row(lf, time_expr.is_null())
        raise DataError(
            f"{where} data row {row[ROW_COLUMN] + 1}: time column {time_column!r}: expected epoch seconds, a date or a datetime "
            f"(ISO-8601 text is only read by load_table), got {row[time_column]!r}"
        )
    label_expr, keep = label_rule(label_spec, schema[label_spec["column"]])
    kept = lf.filter(keep) if keep is not None else lf

    # -- keys, chronological order and split -------------------------------------------------
    key_columns = [pl.col(ROW_COLUMN), label_expr.alias(LABEL_COLUMN)] + ([time_expr.alias(TIME_COLUMN)] if time_expr is not None else [])
    keys = kept.select(key_columns).collect(engine=_STREAMING)
    num_rows = keys.height
    if num_rows == 0:
        raise DataError(f"{where}: no rows left after loading (every row filtered out by the label rule)")
    rows = keys[ROW_COLUMN].to_numpy()
    labels = keys[LABEL_COLUMN].to_numpy()
    if time_expr is not None:
        timestamps = keys[TIME_COLUMN].to_numpy()
        order = np.argsort(timestamps, kind="stable")  # rows ascend in scan order: ties keep file order
    else:
        timestamps = None
        order = np.arange(num_rows)
    del keys
    index_dtype = np.int32 if num_rows < 2**31 else np.int64
    order = order.astype(index_dtype, copy=False)
    num_fit, num_val, num_test = split.sizes(num_rows)
    num_train = num_fit + num_val
    if min(num_fit, num_test) == 0:
        raise ValueError(f"dataset {spec['name']!r} has {num_rows} rows: too few for a train/test split")
    cut = int(order[num_train])  # first test row: training part = keys strictly below its key
    if timestamps is not None:
        t_cut, r_cut = int(timestamps[cut]), int(rows[cut])
        is_train = (time_expr < t_cut) | ((time_expr == t_cut) & (pl.col(ROW_COLUMN) < r_cut))
    else:
        is_train = pl.col(ROW_COLUMN) < int(rows[cut])
    row_in_source = rows[order]
    labels = labels[order].astype(np.int8)
    del rows, timestamps
    phases["keys_and_order_s"] = time.perf_counter() - t0
    say(f"keys: {num_rows:,} rows, split {num_fit:,}/{num_val:,}/{num_test:,} ({phases['keys_and_order_s']:.1f}s)")

    # -- output directory (atomic) -----------------------------------------------------------
    out_path = Path(out_path)
    with atomic_directory(out_path, published_marker="manifest.json") as tmp:
        columns = [f["column"] for f in field_specs]
        value_ids = np.lib.format.open_memmap(tmp / "value_ids.npy", mode="w+", dtype=np.int32, shape=(num_rows, len(columns)))
        num_seen: list[int] = []
        frequencies: list[np.ndarray] = []
        t_vocab = t_encode = 0.0
        with open(tmp / "values.json", "w") as values_file:
            values_file.write("[")
            for f, column in enumerate(columns):
                value = field_value(field_specs[f], schema[column], strip=False).alias("value")
                # -- vocabulary
                t0 = time.perf_counter()
                counts = (
                    kept.select(value, is_train.alias("train"))
                    .group_by("value")
                    .agg(pl.col("train").sum().alias("train_count"))
                    .collect(engine=_STREAMING)
                )
                dictionary, seen = value_dictionary(counts)
                del counts
                num_seen.append(seen.height)
                frequencies.append(np.concatenate([[0], seen["train_count"].to_numpy().astype(np.int64)]))
                del seen
                if f:
                    values_file.write(",")
                json.dump([OOV_TEXT] + dictionary["value"].to_list(), values_file)
                t1 = time.perf_counter()
                t_vocab += t1 - t0
                # -- encoding: local index per row (file order) → chronological order → column f
                local = (
                    kept.select(value)
                    .join(dictionary.select("value", "local").lazy(), on="value", how="left", maintain_order="left")
                    .select("local")
                    .collect(engine=_STREAMING)
                    .to_series()
                    .to_numpy()
                )
                if len(local) != num_rows:  # pragma: no cover - would be a polars bug
                    raise RuntimeError(f"field {column!r}: encoded {len(local)} rows, expected {num_rows}")
                value_ids[:, f] = local[order]
                del local, dictionary
                t_encode += time.perf_counter() - t1
                say(f"field {f + 1}/{len(columns)} {column}: {num_seen[-1]:,} seen values ({time.perf_counter() - t0:.1f}s)")
            values_file.write("]")
        value_ids.flush()
        del value_ids
        phases["vocabulary_s"], phases["encode_s"] = t_vocab, t_encode

        t0 = time.perf_counter()
        del order
        np.save(tmp / "labels.npy", labels)
        np.save(tmp / "row_in_source.npy", row_in_source.astype(np.int64, copy=False))
        np.save(tmp / "feature_frequencies.npy", np.concatenate(frequencies))
        fields = tuple(Field(f["column"], f["name"], f["side"], f["missing"]) for f in field_specs)
        ds_schema = DatasetSchema(spec["name"], fields, time_column=TIME_COLUMN if time_column else None)
        write_manifest(tmp, ds_schema, num_seen, num_fit, num_val, num_test, source)
    phases["write_s"] = time.perf_counter() - t0
    num_features = int(sum(num_seen) + len(num_seen))
    summary = {
        "rows": num_rows,
        "rows_in_files": int(rows_in_files),
        "num_fit": num_fit,
        "num_val": num_val,
        "num_test": num_test,
        "num_fields": len(num_seen),
        "num_seen": num_seen,
        "num_features": num_features,
        "seconds": time.perf_counter() - t_start,
        "phases": phases,
        "path": str(out_path),
        "artifact_bytes": sum(p.stat().st_size for p in out_path.iterdir()),
    }
    say(f"done: {num_features:,} features in {summary['seconds']:.1f}s → {out_path}")
    return summary


def load_or_build_large(
    table_path: str | Path,
    schema_yaml: str | Path,
    split: SplitConfig | None = None,
    cache_dir: str | Path = ".cache/flip_ctr",
    dataset: str = "table_large",
    progress=None,
) -> Artifact:
    """The cached artifact of a large Parquet table (built by :func:`preprocess_large` when
    absent, stale or corrupt), keyed like :func:`flip_ctr.data.preprocess.load_or_build`: the
    split and the content of the input files and the schema (:mod:`flip_ctr.data.cache`)."""
    split = split or SplitConfig()
    files = [*parquet_files(table_path), Path(schema_yaml)]
    entry = cache.locate(Path(cache_dir), dataset, {"engine": "streaming"}, files, asdict(split))
    if entry.path.exists():
        try:
            return read_artifact(entry.path)
        except StaleCacheError as err:
            log.warning("rebuilding cache: %s", err)
    preprocess_large(table_path, schema_yaml, entry.path, split, progress=progress, source=entry.source)
    cache.prune_superseded(entry)
    return read_artifact(entry.path, verify=False)


def check_engine(dataset: str, engine: str) -> None:
    """``data.engine`` is known and can build ``dataset`` (checked when the datamodule is made,
    before any file is read)."""
    from flip_ctr.data.sources import require_parquet_table

    if engine not in ENGINES:
        raise ValueError(f"engine (data.engine) must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == _STREAMING:
        require_parquet_table(dataset)


def load_artifact(source, split: SplitConfig, cache_dir: str | Path, engine: str = "memory") -> Artifact:
    """The cached artifact of ``source`` (a :class:`flip_ctr.data.sources.DataSource`), built by
    ``engine`` (``data.engine``):

    - ``memory``: :func:`~flip_ctr.data.preprocess.load_or_build`, the dataset's loader reads the
      whole table into RAM (any dataset; fine up to ML-1M/BookCrossing sizes);
    - ``streaming``: :func:`load_or_build_large` from the source's Parquet table + YAML schema
      (:meth:`~flip_ctr.data.sources.DataSource.parquet_table`), never materialising the table:
      the scale path (``data=synthetic_goodreads``, a large ``data=table``).

    Both build equal arrays (tests/test_synthetic.py) into separate cache entries.
    """
    check_engine(source.dataset, engine)
    if engine == _STREAMING:
        table, schema_yaml = source.parquet_table(cache_dir)
        return load_or_build_large(table, schema_yaml, split, cache_dir, dataset=source.dataset)
    return load_or_build(source, split, Path(cache_dir))
