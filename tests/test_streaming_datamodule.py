"""``data.engine=streaming``: the datamodule trains from the out-of-core artifact (issue 13, item 1).

The streaming engine builds the artifact with :func:`~flip_ctr.data.preprocess_large.load_or_build_large`
and reads every batch from its memory maps; it must give exactly the batches, metrics and
predictions of the in-memory engine on a table small enough for both (a 3000-row synthetic
GoodReads table), with and without DataLoader workers, ID-only and with text.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from flip_ctr.data.datamodule import BatchBuilder, CTRDataModule, synthetic_goodreads_datamodule
from flip_ctr.data.schema import DataError

ROWS = 3000
SRC = Path(__file__).resolve().parents[1] / "src"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("streaming")
    return root / "data", root / "cache"


def make_dm(folders, engine: str, tokenizer=None, **kw) -> CTRDataModule:
    data_dir, cache_dir = folders
    dm = synthetic_goodreads_datamodule(
        num_rows=ROWS, dataset="synthetic_goodreads", name="synthetic_goodreads", data_dir=str(data_dir),
        cache_dir=str(cache_dir), tokenizer=tokenizer, max_length=128, batch_size=256, eval_batch_size=128,
        engine=engine, **kw,
    )
    dm.prepare_data()
    dm.setup()
    return dm


def batches_of(loader, seed: int = 0) -> list[dict]:
    torch.manual_seed(seed)  # the shuffling sampler and the loader's base seed draw from it
    return list(loader)


def batches(dm: CTRDataModule, split: str, seed: int = 0) -> list[dict]:
    return batches_of(getattr(dm, f"{split}_dataloader")(), seed)


def assert_same_batches(expected: list[dict], got: list[dict]) -> None:
    assert len(expected) == len(got) > 1
    for a, b in zip(expected, got):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def memory(folders, minilm_tokenizer) -> CTRDataModule:
    return make_dm(folders, "memory", minilm_tokenizer)


@pytest.fixture(scope="module")
def streaming(folders, minilm_tokenizer) -> CTRDataModule:
    return make_dm(folders, "streaming", minilm_tokenizer)


def test_the_engines_build_separate_entries_with_equal_arrays(memory, streaming):
    assert synthetic_goodreads_datamodule(dataset="synthetic_goodreads").engine == "streaming"  # the scale path's default
    assert memory.artifact.path != streaming.artifact.path
    for name in ("value_ids", "labels", "row_in_source", "feature_frequencies"):
        np.testing.assert_array_equal(getattr(memory.artifact, name), getattr(streaming.artifact, name), err_msg=name)
    assert memory.space.values == streaming.space.values and memory.space.num_seen == streaming.space.num_seen


def test_streaming_batch_builder_holds_the_memory_maps_not_a_copy(streaming):
    collate = streaming.train_dataloader().collate_fn
    assert isinstance(collate.value_ids, np.memmap) and collate.value_ids is streaming.artifact.value_ids
    assert isinstance(collate.labels, np.memmap) and collate.labels is streaming.artifact.labels
    # a spawned worker gets the artifact's path, not its arrays, and reopens the maps
    plain = BatchBuilder(streaming.artifact, None, in_memory=False)
    copied = BatchBuilder(streaming.artifact, None, in_memory=True)
    assert len(pickle.dumps(plain)) < 4096 < streaming.artifact.value_ids.nbytes < len(pickle.dumps(copied))
    reopened = pickle.loads(pickle.dumps(plain))
    assert isinstance(reopened.value_ids, np.memmap)
    rows = torch.randperm(ROWS, generator=torch.Generator().manual_seed(1))[:300]
    for key, value in plain(rows).items():
        assert torch.equal(value, reopened(rows)[key]) and torch.equal(value, copied(rows)[key]), key


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_streaming_batches_equal_memory_batches_with_text(memory, streaming, split):
    got = batches(streaming, split)
    assert {"input_ids", "token_field_ids", "text_value_ids"} <= got[0].keys()
    assert_same_batches(batches(memory, split), got)


def test_streaming_batches_equal_memory_batches_id_only(folders):
    memory, streaming = make_dm(folders, "memory"), make_dm(folders, "streaming")
    for split in ("train", "val", "test"):
        got = batches(streaming, split, seed=3)
        assert set(got[0]) == {"feature_ids", "labels", "row_ids"}
        assert_same_batches(batches(memory, split, seed=3), got)
    streaming.train_split = "train"  # protocol=refit's second fit: the whole training part
    memory.train_split = "train"
    assert_same_batches(batches(memory, "train", seed=4), batches(streaming, "train", seed=4))


def test_two_persistent_workers_give_the_same_batches(folders, memory, minilm_tokenizer, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    parallel = make_dm(folders, "streaming", minilm_tokenizer, num_workers=2)
    reference = make_dm(folders, "memory", minilm_tokenizer, num_workers=2)
    loaders = parallel.train_dataloader(), reference.train_dataloader()
    assert loaders[0].num_workers == 2 and loaders[0].persistent_workers
    for epoch in range(2):  # the second epoch reuses the workers (and draws no new base seed)
        got, expected = (batches_of(loader, seed=epoch) for loader in loaders)
        assert_same_batches(expected, got)
        if epoch == 0:  # a fresh loader shuffles as without workers
            assert_same_batches(batches(memory, "train", seed=0), got)
    assert_same_batches(batches(memory, "val"), list(parallel.val_dataloader()))


def test_a_parquet_table_trains_on_either_engine(folders, streaming, tmp_path):
    table, schema = streaming.source().parquet_table()
    own = {engine: CTRDataModule(dataset="table", path=str(table), schema=str(schema), cache_dir=str(tmp_path),
                                 eval_batch_size=128, engine=engine) for engine in ("memory", "streaming")}
    for dm in own.values():
        dm.setup()
    assert isinstance(own["streaming"].val_dataloader().collate_fn.value_ids, np.memmap)
    np.testing.assert_array_equal(own["streaming"].artifact.value_ids, streaming.artifact.value_ids)
    assert_same_batches(batches(own["memory"], "val"), batches(own["streaming"], "val"))


def test_serving_reads_the_streaming_entry(folders, streaming, monkeypatch):
    from omegaconf import OmegaConf

    from flip_ctr import serving
    from flip_ctr.data import preprocess, preprocess_large

    data_dir, cache_dir = folders
    cfg = OmegaConf.create({"dataset": "synthetic_goodreads", "data_dir": str(data_dir), "cache_dir": str(cache_dir),
                            "loader_kwargs": {"num_rows": ROWS, "seed": 0}, "engine": "streaming"})
    for module in (preprocess, preprocess_large):
        monkeypatch.setattr(module, "load_or_build", lambda *a, **k: pytest.fail("loaded the table into memory"))
    monkeypatch.setattr(preprocess_large, "preprocess_large", lambda *a, **k: pytest.fail("rebuilt the cached entry"))
    space = serving.feature_space(cfg)
    assert space.values == streaming.space.values and space.num_seen == streaming.space.num_seen


def test_bad_engine_dataset_table_and_rows_are_refused(folders, tmp_path, streaming):
    with pytest.raises(ValueError, match=r"data\.engine\) must be one of memory, streaming, got 'disk'"):
        make_dm(folders, "disk")
    with pytest.raises(DataError, match="dataset 'ml100k' is read by its own loader.*data.engine=memory"):
        CTRDataModule(dataset="ml100k", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"), engine="streaming")
    table = Path(streaming.source().parquet_table()[0])
    csv = tmp_path / "t.csv"
    pl.read_parquet(table).write_csv(csv)
    schema = table.parent / "schema.yaml"
    as_csv = CTRDataModule(dataset="table", path=str(csv), schema=str(schema), cache_dir=str(tmp_path / "c"), engine="streaming")
    with pytest.raises(DataError, match=r"t\.csv: data\.engine=streaming reads Parquet tables only, this one is '\.csv'"):
        as_csv.setup()
    collate = streaming.val_dataloader().collate_fn
    with pytest.raises(IndexError, match=f"row index {ROWS} outside the artifact's {ROWS} rows"):
        collate(torch.tensor([0, ROWS]))


def train_run(tmp_path: Path, engine: str, *extra: str) -> Path:
    run = tmp_path / f"run_{engine}"
    proc = subprocess.run(
        [sys.executable, "-m", "flip_ctr.cli", "train", "data=synthetic_goodreads", f"data.num_rows={ROWS}",
         f"data.engine={engine}", "protocol=refit", "trainer.max_epochs=2", "trainer.deterministic=true", "seed=0",
         f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}", "logger=none", "num_threads=1", *extra],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
             "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))},
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    found = list(run.rglob("metrics.json"))
    assert len(found) == 1, list(run.rglob("*"))
    return found[0].parent


STAGES = {
    "id_only": [],  # the default stage: an ID model from scratch
    "text": ["stage=finetune_joint", "plm=tiny_random", "stage.limit_train_batches=3"],  # FLIP joint finetuning
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_refit_training_gives_the_same_metrics_and_predictions(tmp_path, stage):
    # same loader settings on both sides: persistent workers shuffle epochs >= 2 unlike a loader without
    memory, streaming = (train_run(tmp_path, engine, "data.num_workers=2", *STAGES[stage]) for engine in ("memory", "streaming"))
    a, b = (json.loads((run / "metrics.json").read_text()) for run in (memory, streaming))
    assert a["protocol_name"] == "refit" and a["train_split"] == "train"  # retrained on the whole training part
    for key in ("auc", "logloss", "num_test_rows", "best_val_auc", "selected_epochs", "epochs_trained", "train_rows"):
        assert a.get(key) == b.get(key), (key, a.get(key), b.get(key))
    assert 0.0 < a["auc"] < 1.0
    pa, pb = (pl.read_parquet(run / "predictions.parquet") for run in (memory, streaming))
    assert pa.height == a["num_test_rows"] and pa.equals(pb)
    # each run built (and read) its own engine's cache entry
    manifests = [json.loads((p / "manifest.json").read_text()) for p in (tmp_path / "cache").glob("synthetic_goodreads-*")]
    assert sorted(str(m["source"]["options"]) for m in manifests) == sorted([str({"engine": "streaming"}), str({"num_rows": ROWS, "seed": 0})])


def test_a_later_run_memory_maps_the_stored_text_pieces(folders, streaming, minilm_tokenizer, monkeypatch):
    """The text pieces live with the artifact: a second datamodule tokenizes nothing, maps the
    stored matrices, and its workers (forked, sharing the maps) give the first one's batches."""
    import flip_ctr.data.text as text

    stored = sorted((streaming.artifact.path / "text_pieces").glob("*/pieces.json"))
    assert len(stored) == 1
    monkeypatch.setattr(text, "tokenize_values", lambda *a, **k: pytest.fail("tokenized although the pieces are stored"))
    again = make_dm(folders, "streaming", minilm_tokenizer, num_workers=2)
    with open("/proc/self/maps") as fh:
        assert str(stored[0].parent / "field0_tokens.npy") in fh.read()
    assert_same_batches(batches(streaming, "val"), batches(again, "val"))
