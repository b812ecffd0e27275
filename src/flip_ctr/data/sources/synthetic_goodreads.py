"""The GoodReads-shaped synthetic table (:mod:`flip_ctr.data.synthetic`) as a dataset.

``data=synthetic_goodreads data.num_rows=N data.seed=S`` generates the table once, into
``data_dir/rows<N>_seed<S>[_<options digest>]/`` (``table.parquet``, ``schema.yaml``,
``spec.json``), and then reads it like any other table (:func:`~flip_ctr.data.sources.table.load_table`),
so everything downstream (preprocessing cache, splits, stages) is the normal path. By default
(``data.engine: streaming``) the artifact is built out of core from the Parquet file
(:mod:`flip_ctr.data.preprocess_large`) and batches are read from its memory maps, since this
dataset is the scale path; ``data.engine=memory`` loads it with ``load_table`` instead. The table is
a deterministic function of ``(num_rows, seed, spec options)``: a second run, or another
machine, regenerates the same bytes' worth of rows and hits the same cache entry.

The entity counts (users, books, authors, publishers, shelves) are the 20M-row defaults of
:class:`~flip_ctr.data.synthetic.SyntheticSpec` scaled by ``num_rows / 20M`` (with small floors),
so the table keeps GoodReads' rows-per-entity shape at any N and a small N generates in seconds.
Any ``SyntheticSpec`` field can be set explicitly through ``loader_kwargs`` (e.g.
``+data.loader_kwargs.num_users=5000``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields
from pathlib import Path

from flip_ctr.data.schema import DataError, LoadedTable

FULL_ROWS = 20_000_000
# entity counts scaled with num_rows, and the smallest each may get
SCALED = {"num_users": 50, "num_books": 50, "num_authors": 20, "num_publishers": 10, "num_shelves": 24}


def synthetic_spec(num_rows: int, seed: int = 0, **options):
    """The :class:`SyntheticSpec` of a ``num_rows``-row table (entity counts scaled, see module docstring)."""
    from flip_ctr.data.synthetic import SyntheticSpec

    if int(num_rows) < 1:
        raise DataError(f"synthetic_goodreads: num_rows must be >= 1, got {num_rows}")
    known = {f.name for f in fields(SyntheticSpec)} - {"num_rows", "seed", "extra"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise DataError(f"synthetic_goodreads: unknown option(s) {unknown}; SyntheticSpec fields: {sorted(known)}")
    default = SyntheticSpec()
    scale = min(1.0, int(num_rows) / FULL_ROWS)
    scaled = {k: max(floor, round(getattr(default, k) * scale)) for k, floor in SCALED.items()}
    return SyntheticSpec(num_rows=int(num_rows), seed=int(seed), **{**scaled, **options})


def table_dir(data_dir: str | Path, num_rows: int, seed: int = 0, **options) -> Path:
    name = f"rows{int(num_rows)}_seed{int(seed)}"
    if options:
        digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:10]
        name += f"_{digest}"
    return Path(data_dir) / name


def ensure_table(data_dir: str | Path, num_rows: int, seed: int = 0, **options) -> Path:
    """Generates the table unless an identical one (same ``spec.json``) is already there; its folder."""
    from flip_ctr.data.synthetic import generate

    spec = synthetic_spec(num_rows, seed, **options)
    out = table_dir(data_dir, num_rows, seed, **options)
    spec_path = out / "spec.json"
    wanted = asdict(spec)
    if spec_path.is_file() and (out / "table.parquet").is_file() and (out / "schema.yaml").is_file():
        if json.loads(spec_path.read_text()) == json.loads(json.dumps(wanted)):
            return out
    spec_path.unlink(missing_ok=True)  # generate() writes spec.json last: its presence marks a whole table
    generate(out, spec, chunk_rows=min(1_000_000, spec.num_rows))
    return out


def synthetic_goodreads_files(data_dir: str | Path, num_rows: int = 20_000, seed: int = 0, **options) -> list[Path]:
    """The files the loader reads (generating the table first when it is not there yet)."""
    from flip_ctr.data.sources.table import table_files

    out = ensure_table(data_dir, num_rows, seed, **options)
    return table_files(out / "table.parquet", out / "schema.yaml")


def synthetic_goodreads_table(data_dir: str | Path, num_rows: int = 20_000, seed: int = 0, **options) -> tuple[Path, Path]:
    """(``table.parquet``, ``schema.yaml``) for the out-of-core build (``data.engine=streaming``)."""
    out = ensure_table(data_dir, num_rows, seed, **options)
    return out / "table.parquet", out / "schema.yaml"


def load_synthetic_goodreads(data_dir: str | Path, num_rows: int = 20_000, seed: int = 0, **options) -> LoadedTable:
    from flip_ctr.data.sources.table import load_table

    out = ensure_table(data_dir, num_rows, seed, **options)
    return load_table(out / "table.parquet", out / "schema.yaml")
