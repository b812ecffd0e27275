"""A failing job of a Hydra multirun is recorded and does not stop the sweep.

Two jobs on the ML-100K fixture, one with a learning rate that composes fine but fails at
runtime (torch.optim rejects it in configure_optimizers): the good job finishes with its
metrics, the bad one leaves error.txt (its traceback) in its run dir and a line in
<sweep dir>/failures.tsv, and the command exits 1 once the sweep is over. A failing single
run writes error.txt too and exits non-zero.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from oracles import check_test_outputs


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from test_datamodule import write_ml100k_fixture

    root = tmp_path_factory.mktemp("sweep")
    return {"data": write_ml100k_fixture(root / "data" / "ml-100k"), "cache": root / "cache"}


def flip_ctr(data, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    common = [f"data.data_dir={data['data']}", f"data.cache_dir={data['cache']}", "stage.batch_size=64",
              "stage.max_epochs=1", "logger=none", "num_threads=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "flip_ctr.cli", "train", *args, *common], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env=env)


def test_failed_job_is_recorded_and_the_sweep_goes_on(data, tmp_path):
    sweep = tmp_path / "sweep"
    proc = flip_ctr(data, tmp_path, "-m", "stage.lr=-1,0.001", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${hydra:job.num}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert f"some sweep jobs failed; see {sweep / 'failures.tsv'}" in out
    # the failing job ran first and the second still ran to the end
    from test_datamodule import make_dm

    # its metrics are the oracles' AUC / logloss of its own (non-constant) test predictions
    check_test_outputs(sweep / "1", make_dm(data["data"], data["cache"]).artifact)
    assert not (sweep / "1" / "error.txt").exists()
    error = (sweep / "0" / "error.txt").read_text()
    # the job's config is checked before it runs (flip_ctr.config): the value is named
    assert error.startswith("Traceback") and "ConfigError: stage.lr must be a number > 0, got -1" in error
    assert not (sweep / "0" / "metrics.json").exists()
    lines = (sweep / "failures.tsv").read_text().splitlines()
    assert len(lines) == 1
    num, run_dir, overrides, reason = lines[0].split("\t")
    assert (num, Path(run_dir)) == ("0", sweep / "0") and "stage.lr=-1" in overrides.split()
    assert reason == "ConfigError: stage.lr must be a number > 0, got -1"


def test_failed_single_run_writes_its_traceback(data, tmp_path):
    proc = flip_ctr(data, tmp_path, "stage.lr=-1", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode != 0
    assert "stage.lr must be a number > 0, got -1" in (tmp_path / "run" / "error.txt").read_text()
    assert not list(tmp_path.rglob("failures.tsv"))
