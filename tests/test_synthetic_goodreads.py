"""``data=synthetic_goodreads data.num_rows=N``: the GoodReads-shaped synthetic table, generated
deterministically by seed, through the normal data path (issue 13, item 3). Tiny N only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from flip_ctr.data.schema import DataError
from flip_ctr.data.sources import synthetic_goodreads as sg

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_table_is_a_function_of_rows_and_seed(tmp_path):
    a = sg.ensure_table(tmp_path / "a", 700, seed=3)
    b = sg.ensure_table(tmp_path / "b", 700, seed=3)
    c = sg.ensure_table(tmp_path / "a", 700, seed=4)
    ta, tb, tc = (pl.read_parquet(p / "table.parquet") for p in (a, b, c))
    assert ta.height == 700 and ta.width == 15 + 2  # 15 fields, label, timestamp
    assert ta.equals(tb)
    assert not ta.equals(tc)
    # an identical table already there is reused, not regenerated
    before = (a / "table.parquet").stat().st_mtime_ns
    assert sg.ensure_table(tmp_path / "a", 700, seed=3) == a
    assert (a / "table.parquet").stat().st_mtime_ns == before
    # a different size is its own table
    assert sg.ensure_table(tmp_path / "a", 300, seed=3) != a


def test_entity_counts_scale_with_rows():
    full = sg.synthetic_spec(20_000_000)
    small = sg.synthetic_spec(200_000, seed=1)
    assert (full.num_users, full.num_books) == (1_200_000, 1_500_000)
    assert (small.num_users, small.num_books, small.seed) == (12_000, 15_000, 1)
    assert sg.synthetic_spec(10).num_shelves >= 16  # the named shelves always fit
    assert sg.synthetic_spec(1000, num_users=77).num_users == 77
    with pytest.raises(DataError, match="unknown option"):
        sg.synthetic_spec(1000, num_user=77)
    with pytest.raises(DataError, match="num_rows"):
        sg.synthetic_spec(0)


def test_config_builds_the_datamodule_of_that_table(tmp_path):
    import hydra
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data=synthetic_goodreads", "data.num_rows=500", "data.seed=2",
                                                      f"paths.cache_dir={tmp_path / 'cache'}"])
    assert dict(cfg.data.loader_kwargs) == {"num_rows": 500, "seed": 2}
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    artifact = dm.artifact
    assert artifact.value_ids.shape == (500, 15)
    assert artifact.space.schema.name == "synthetic_goodreads"
    assert (tmp_path / "cache" / "synthetic_goodreads" / "rows500_seed2" / "table.parquet").is_file()
    batch = next(iter(dm.train_dataloader()))
    assert batch["feature_ids"].shape[1] == 15


def test_train_one_epoch_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "flip_ctr.cli", "train", "data=synthetic_goodreads", "data.num_rows=3000",
         "trainer.max_epochs=1", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}", "logger=none",
         "num_threads=1"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    found = list(run.rglob("metrics.json"))
    assert found, list(run.rglob("*"))
    metrics = json.loads(found[0].read_text())
    assert 250 <= metrics["num_test_rows"] <= 350  # about the chronological 10% of 3000 rows
    assert 0.0 < metrics["auc"] < 1.0 and metrics["logloss"] > 0
