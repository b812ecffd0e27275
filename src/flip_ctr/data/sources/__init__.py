"""Dataset loaders: raw files → :class:`~flip_ctr.data.schema.LoadedTable`.

``LOADERS`` maps a dataset name (the ``dataset:`` value of ``conf/data/*.yaml``) to its loader;
``FILES`` maps it to the function that lists the files that loader reads with the same
arguments (what the preprocessing cache is keyed by); ``PARQUET_TABLES`` to the (Parquet table,
YAML schema) the out-of-core build reads instead, for the datasets that have that form. ``data_source(...)`` turns the values of
a data config into a :class:`DataSource`; ``load_dataset(name, data_dir, **kwargs)`` loads directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flip_ctr.data.schema import DataError, LoadedTable
from flip_ctr.data.sources.bookcrossing import bookcrossing_files, load_bookcrossing
from flip_ctr.data.sources.goodreads import goodreads_files, goodreads_table, load_goodreads
from flip_ctr.data.sources.movielens import load_ml1m, load_ml100k, ml1m_files, ml100k_files
from flip_ctr.data.sources.synthetic_goodreads import load_synthetic_goodreads, synthetic_goodreads_files, synthetic_goodreads_table
from flip_ctr.data.sources.table import load_table, parquet_table, table_files

LOADERS: dict[str, Callable[..., LoadedTable]] = {
    "ml1m": load_ml1m,
    "ml100k": load_ml100k,
    "bookcrossing": load_bookcrossing,
    "goodreads": load_goodreads,
    "table": load_table,
    "synthetic_goodreads": load_synthetic_goodreads,
}
FILES: dict[str, Callable[..., list[Path]]] = {
    "ml1m": ml1m_files,
    "ml100k": ml100k_files,
    "bookcrossing": bookcrossing_files,
    "goodreads": goodreads_files,
    "table": table_files,
    "synthetic_goodreads": synthetic_goodreads_files,
}
# Datasets that are (or can be) one Parquet table + YAML schema: the out-of-core build
# (data.engine=streaming, flip_ctr.data.preprocess_large) reads them. Same arguments as LOADERS.
PARQUET_TABLES: dict[str, Callable[..., tuple[Path, Path]]] = {
    "table": parquet_table,
    "synthetic_goodreads": synthetic_goodreads_table,
    "goodreads": goodreads_table,  # converted from its JSON lines once, chunk by chunk, into cache_dir
}


def _check_known(name: str) -> None:
    if name not in LOADERS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(LOADERS))}")


def load_dataset(name: str, data_dir: str | Path, **kwargs: Any) -> LoadedTable:
    """Load dataset ``name`` from ``data_dir`` (for ``table``: the table file; pass ``schema_yaml=``)."""
    _check_known(name)
    return LOADERS[name](data_dir, **kwargs)


# Loader arguments that only say where files are: what they point to is ``DataSource.files``.
PATH_ARGUMENTS = frozenset({"data_dir", "path", "schema_yaml", "ratings_file", "interactions_file", "books_file", "authors_file"})


@dataclass(frozen=True)
class DataSource:
    """One dataset to load: its loader, the loader's arguments, and the files it will read."""

    dataset: str
    kwargs: dict = field(hash=False)
    files: tuple[Path, ...]

    @property
    def options(self) -> dict:
        """The arguments that change what is loaded from ``files`` (e.g. ``missing_books``), not where
        they are: ``data.path=t.csv`` and ``data.data_dir=t.csv`` are one cache entry."""
        return {k: v for k, v in self.kwargs.items() if k not in PATH_ARGUMENTS}

    def load(self) -> LoadedTable:
        loaded = LOADERS[self.dataset](**self.kwargs)
        unlisted = {Path(p).resolve() for p in loaded.source_files} - {p.resolve() for p in self.files}
        if unlisted:  # pragma: no cover - a loader and its FILES function disagree (a bug)
            raise RuntimeError(f"{self.dataset} loader read {sorted(map(str, unlisted))}, which FILES[{self.dataset!r}] does not list")
        return loaded

    def parquet_table(self, cache_dir: str | Path | None = None) -> tuple[Path, Path]:
        """(Parquet table, YAML schema) for the out-of-core build (``data.engine=streaming``).
        ``cache_dir`` goes to the datasets that convert their files into one (GoodReads)."""
        import inspect

        require_parquet_table(self.dataset)
        build = PARQUET_TABLES[self.dataset]
        converts = cache_dir is not None and "cache_dir" in inspect.signature(build).parameters
        return build(**self.kwargs, **({"cache_dir": cache_dir} if converts else {}))


def require_parquet_table(dataset: str) -> None:
    """Refuses ``data.engine=streaming`` for a dataset that is not one Parquet table + YAML schema."""
    if dataset not in PARQUET_TABLES:
        raise DataError(
            f"data.engine=streaming builds from a Parquet table + YAML schema; dataset {dataset!r} is read by its own "
            f"loader (streaming datasets: {', '.join(sorted(PARQUET_TABLES))}): use data.engine=memory"
        )


def data_source(
    dataset: str,
    data_dir: str | Path | None = None,
    data_subdir: str | None = None,
    loader_kwargs: dict | None = None,
    path: str | Path | None = None,
    schema: str | Path | None = None,
) -> DataSource:
    """The values of a data config (``conf/data/*.yaml``) → what to load.

    ``table``: ``path`` (a CSV/TSV/Parquet file or a directory of Parquet files, else
    ``data_dir``) and ``schema`` (the YAML schema). Other datasets: ``data_dir`` resolved by
    :func:`~flip_ctr.data.sources.download.resolve_data_dir` (``data_subdir`` appended when
    ``data_dir`` is not set), plus ``loader_kwargs``.
    """
    _check_known(dataset)
    kwargs = dict(loader_kwargs or {})
    if dataset == "table":
        given = {"path": path, "schema_yaml": schema, "data_dir": data_dir}
        kwargs.update({k: v for k, v in given.items() if v is not None})
    elif dataset == "synthetic_goodreads" and data_dir not in (None, ""):
        kwargs["data_dir"] = Path(str(data_dir)).expanduser()  # generated into: it need not exist yet
    else:
        kwargs["data_dir"] = dataset_dir(data_dir, data_subdir)
    return DataSource(dataset, kwargs, tuple(FILES[dataset](**kwargs)))


def dataset_dir(data_dir: str | Path | None, data_subdir: str | None) -> Path:
    """``data_dir`` when set, else the data root (:func:`~flip_ctr.data.sources.download.resolve_data_dir`) / ``data_subdir``."""
    from flip_ctr.data.sources.download import resolve_data_dir

    root = resolve_data_dir(data_dir)
    return root / data_subdir if data_subdir and data_dir is None else root


__all__ = [
    "LOADERS",
    "FILES",
    "PARQUET_TABLES",
    "DataSource",
    "data_source",
    "dataset_dir",
    "load_dataset",
    "require_parquet_table",
    "load_ml1m",
    "load_ml100k",
    "load_bookcrossing",
    "load_goodreads",
    "load_table",
]
