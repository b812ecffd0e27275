"""Shared fixtures: small synthetic tables in the loader contract, and the real MiniLM tokenizer
(tokenizer files only: loading it reads no model weights)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from flip_ctr.data.schema import DatasetSchema, Field, LoadedTable


def make_loaded_table(num_rows: int = 200, seed: int = 0, shuffle_time: bool = True) -> LoadedTable:
    """A clickable toy dataset: label depends on (user kind, item genre) so models can learn it."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 30, num_rows)
    items = rng.integers(0, 40, num_rows)
    genres = np.array(["Drama", "Comedy", "Sci-Fi", "Film-Noir"])[items % 4]
    kinds = np.array(["college/grad student", "doctor/health care", "writer"])[users % 3]
    label = ((users % 3 == 0) ^ (items % 4 < 2)).astype(np.int8)
    timestamps = rng.permutation(num_rows) if shuffle_time else np.arange(num_rows)
    table = pl.DataFrame(
        {
            "user_id": [str(u) for u in users],
            "occupation": kinds.tolist(),
            "movie_id": [str(i) for i in items],
            "genre": genres.tolist(),
            "label": label,
            "timestamp": timestamps.astype(np.int64),
            "row_in_source": np.arange(num_rows, dtype=np.int64),
        }
    )
    schema = DatasetSchema(
        name="toy",
        fields=(
            Field("user_id", "user id", "user"),
            Field("occupation", "occupation", "user"),
            Field("movie_id", "movie id", "item"),
            Field("genre", "genre", "item"),
        ),
    )
    return LoadedTable(table=table, schema=schema)


@pytest.fixture
def loaded_table() -> LoadedTable:
    return make_loaded_table()


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from flip_ctr.models.plm import load_tokenizer

    return load_tokenizer("minilm_l6")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is ~20x faster than two
    competing with other processes (OpenMP spin-waits), and leaves a core to the rest.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Preamble of a child-process script that must run as if transformers were not installed:
# unimportable, and invisible to optional-dependency probes (torchmetrics imports it at import
# time when its distribution metadata is present).
WITHOUT_TRANSFORMERS = """\
import importlib.metadata as md, json, sys
sys.modules["transformers"] = None
_version, _distribution = md.version, md.distribution
def _hide(fn):
    def wrapped(name):
        if name.lower().replace("_", "-") == "transformers":
            raise md.PackageNotFoundError(name)
        return fn(name)
    return wrapped
md.version, md.distribution = _hide(_version), _hide(_distribution)
"""
