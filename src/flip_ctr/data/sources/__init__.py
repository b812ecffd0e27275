"""Dataset loaders: raw files → :class:`~flip_ctr.data.schema.LoadedTable`.

``LOADERS`` maps a dataset name (the ``dataset:`` value of ``conf/data/*.yaml``) to its loader;
``load_dataset(name, data_dir, **kwargs)`` calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flip_ctr.data.schema import DataError, LoadedTable
from flip_ctr.data.sources.bookcrossing import load_bookcrossing
from flip_ctr.data.sources.goodreads import load_goodreads
from flip_ctr.data.sources.movielens import load_ml1m, load_ml100k
from flip_ctr.data.sources.table import load_table

LOADERS: dict[str, Callable[..., LoadedTable]] = {
    "ml1m": load_ml1m,
    "ml100k": load_ml100k,
    "bookcrossing": load_bookcrossing,
    "goodreads": load_goodreads,
    "table": load_table,
}


def load_dataset(name: str, data_dir: str | Path, **kwargs: Any) -> LoadedTable:
    """Load dataset ``name`` from ``data_dir`` (for ``table``: the table file; pass ``schema_yaml=``)."""
    try:
        loader = LOADERS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(LOADERS))}") from None
    return loader(data_dir, **kwargs)


__all__ = ["LOADERS", "load_dataset", "load_ml1m", "load_ml100k", "load_bookcrossing", "load_goodreads", "load_table"]
