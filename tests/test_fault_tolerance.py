"""Fault tolerance of `flip-ctr train` on the ML-100K fixture, end to end in subprocesses:

- a NaN loss stops the run with a message naming the stage, step and value, and the newest
  checkpoint on disk is the last good (finite) state;
- a run SIGKILLed mid-epoch resumes from last.ckpt (written every N steps) and ends where an
  uninterrupted run ends;
- with trainer.deterministic=true two identical runs give identical predictions.

Each run is a fresh process (~8 s, mostly importing Lightning); no test starts more than two.

The fault injectors below are Lightning callbacks added with `+callbacks.<name>._target_=`
(the subprocess gets tests/ on PYTHONPATH).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import polars as pl
import pytest
import torch

TESTS = Path(__file__).resolve().parent
BATCH = 32


class PoisonAtStep(L.Callback):
    """Sets the weights to NaN before global step ``step`` (a diverged model's next loss is NaN)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))


class KillAtStep(L.Callback):
    """SIGKILLs its own process after global step ``step``: no cleanup, no final checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class StepRecorder(L.Callback):
    """Writes the global step at which fitting starts and ends to <run dir>/steps.json."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        (Path(trainer.default_root_dir) / "steps.json").write_text(json.dumps([self.start, trainer.global_step]))


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    from test_datamodule import make_dm, write_ml100k_fixture

    root = tmp_path_factory.mktemp("fault")
    data = write_ml100k_fixture(root / "data" / "ml-100k")
    torch.set_num_threads(1)
    artifact = make_dm(data, root / "cache").artifact  # builds the cache the runs share
    return {"data": data, "cache": root / "cache", "steps_per_epoch": math.ceil(artifact.num_fit / BATCH)}


def train(fixture, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [
        f"data.data_dir={fixture['data']}", f"data.cache_dir={fixture['cache']}", f"hydra.run.dir={run_dir}",
        "stage=ctr", f"stage.batch_size={BATCH}", "stage.max_epochs=3", "callbacks.early_stopping.patience=100",
        "trainer.deterministic=true", "logger=none", "num_threads=1",
        "+callbacks.steps._target_=test_fault_tolerance.StepRecorder", *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "flip_ctr.cli", "train", *args], capture_output=True, text=True,
                          timeout=120, cwd=run_dir.parent, env=env)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(fixture, tmp_path):
    poison, every = 7, 3
    assert poison < fixture["steps_per_epoch"]  # mid-epoch: only the step checkpoints have been written
    proc = train(fixture, tmp_path / "run", f"callbacks.step_checkpoint.every_n_train_steps={every}",
                 "+callbacks.poison._target_=test_fault_tolerance.PoisonAtStep", f"+callbacks.poison.step={poison}")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "NonFiniteLossError" in out and "non-finite training loss nan" in out, out[-3000:]
    assert f"global step {poison}" in out and "stage CTRModule" in out
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert f"last good checkpoint: {last}" in out
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == (poison // every) * every  # the newest save before the NaN step
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())
    assert not (tmp_path / "run" / "metrics.json").exists()


EVERY = 4  # step_checkpoint.every_n_train_steps of the runs below


@pytest.fixture(scope="module")
def full_run(fixture, tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run (shared by the determinism and the resume tests)."""
    run = tmp_path_factory.mktemp("full") / "run"
    proc = train(fixture, run, f"callbacks.step_checkpoint.every_n_train_steps={EVERY}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_deterministic_runs_repeat_exactly(fixture, full_run, tmp_path):
    proc = train(fixture, tmp_path / "again", f"callbacks.step_checkpoint.every_n_train_steps={EVERY}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    probs = [pl.read_parquet(run / "predictions.parquet").sort("row_id")["prob"].to_numpy()
             for run in (full_run, tmp_path / "again")]
    np.testing.assert_array_equal(probs[0], probs[1])
    assert probs[0].std() > 0  # a trained model, not a constant


def test_resume_after_sigkill_matches_an_uninterrupted_run(fixture, full_run, tmp_path):
    per_epoch = fixture["steps_per_epoch"]
    kill = per_epoch + per_epoch // 2 + 1  # in the middle of the second epoch
    run = tmp_path / "killed"
    proc = train(fixture, run, f"callbacks.step_checkpoint.every_n_train_steps={EVERY}",
                 "+callbacks.kill._target_=test_fault_tolerance.KillAtStep", f"+callbacks.kill.step={kill}")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (run / "metrics.json").exists()
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == kill // EVERY * EVERY and saved["global_step"] % per_epoch != 0  # mid-epoch

    resumed = train(fixture, run, f"callbacks.step_checkpoint.every_n_train_steps={EVERY}",
                    f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((full_run / "metrics.json").read_text())
    b = json.loads((run / "metrics.json").read_text())
    assert a["epochs_trained"] == b["epochs_trained"] == 3
    # the resumed fit started at the checkpoint's step (not over) and stopped where the full run did
    assert json.loads((run / "steps.json").read_text()) == [saved["global_step"], 3 * per_epoch]
    assert json.loads((full_run / "steps.json").read_text()) == [0, 3 * per_epoch]
    # The remainder of the interrupted epoch sees other batches than the uninterrupted run (the
    # train loader is not resumable mid-epoch), so the results agree within SGD noise, not exactly.
    assert abs(a["auc"] - b["auc"]) < 0.05 and abs(a["logloss"] - b["logloss"]) < 0.02, (a, b)
