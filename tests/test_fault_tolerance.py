"""Fault tolerance of `flip-ctr train` on the ML-100K fixture, end to end in subprocesses:

- a NaN loss stops the run with a message naming the stage, step and value, and the newest
  checkpoint on disk is the last good (finite) state;
- a finite blow-up (the learning rate jumps to 1e3) stops the run the same way, and last.ckpt
  stays the one written before the loss rose;
- one last.ckpt, the newest state (no last-v1.ckpt);
- a run SIGKILLed mid-epoch resumes from last.ckpt (written every N steps) and ends bit-exactly
  where an uninterrupted run ends (weights, metrics, predictions), and its metrics.csv still holds
  the rows logged before the kill; so does a run resumed from an epoch-end checkpoint;
- a copy of the killed run directory, elsewhere, resumes too, with its own best checkpoint;
- skip_completed_stages accepts a finished stage whose run dir was copied elsewhere;
- with trainer.deterministic=true two identical runs give identical predictions.

Each run is a fresh process (~8 s, mostly importing Lightning); no test starts more than two.
The runs use protocol=holdout with dcnv2 + id_recipe=ours: one fit per run (the default refit fits twice,
selection/ then the run dir, and each fit checkpoints and resumes the same way). Under the reference
recipe as well: the resumed run ends bit-exactly where the uninterrupted one ends (weights,
metrics, predictions), because the datamodule saves the interrupted epoch's order and RngState the
random generators.

The fault injectors below are Lightning callbacks added with `+callbacks.<name>._target_=`
(the subprocess gets tests/ on PYTHONPATH).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
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


class LearningRateJump(L.Callback):
    """From global step ``step`` on, every learning rate is 1e3 (issue 16's `stage.lr=1e3`, switched
    on mid-run so that good checkpoints exist): the loss blows up and stays large, but finite."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = 1e3


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
        "stage=ctr", "protocol=holdout", "id_model=dcnv2", "id_recipe=ours", f"stage.batch_size={BATCH}", "stage.max_epochs=3", "protocol.patience=100",  # the protocol sets the early-stopping patience (exact AUCs can tie across epochs)
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


def test_a_finite_blow_up_stops_the_run_and_keeps_the_last_good_checkpoint(fixture, tmp_path):
    jump, every, patience = 4, 3, 4
    proc = train(fixture, tmp_path / "run", f"callbacks.step_checkpoint.every_n_train_steps={every}",
                 f"callbacks.divergence.steps={patience}",
                 "+callbacks.jump._target_=test_fault_tolerance.LearningRateJump", f"+callbacks.jump.step={jump}")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "DivergedLossError" in out and "NonFiniteLossError" not in out, out[-3000:]
    # the step-`jump` update is the first at lr 1e3: the losses of steps jump+1 .. jump+patience are the streak
    stopped = jump + patience
    assert f"for {patience} steps (callbacks.divergence) in stage CTRModule" in out and f"global step {stopped}:" in out, out[-3000:]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert f"last good checkpoint: {last}" in out
    # written at step 3; the cadence points 6 (and, without the hold, 9) fall inside the streak
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == (jump // every) * every
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_one_last_ckpt_is_the_newest_state(fixture, full_run):
    folder = full_run / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt"]  # no last-v1.ckpt
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 3 * fixture["steps_per_epoch"] and last["epoch"] == 2  # the end of the last epoch


@pytest.fixture(scope="module")
def killed_run(fixture, tmp_path_factory) -> dict:
    """A run SIGKILLed in the middle of its second epoch, its metrics history at that moment, and
    a copy of its directory taken right after the kill (in another folder)."""
    per_epoch = fixture["steps_per_epoch"]
    kill = per_epoch + per_epoch // 2 + 1
    root = tmp_path_factory.mktemp("killed")
    run = root / "run"
    proc = train(fixture, run, f"callbacks.step_checkpoint.every_n_train_steps={EVERY}", "logger=csv",
                 "+callbacks.kill._target_=test_fault_tolerance.KillAtStep", f"+callbacks.kill.step={kill}")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (run / "metrics.json").exists()
    copy = root / "elsewhere" / "run"
    shutil.copytree(run, copy)
    return {"run": run, "copy": copy, "kill": kill, "history": _csv_rows(run / "csv" / "metrics.csv")}


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _keeps_history(before: list[dict], after: list[dict]) -> None:
    """``after`` starts with every row of ``before`` (columns added later are blank in them)."""
    assert any(r.get("val/auc") for r in before), "the epoch-0 validation AUC was logged before the kill"
    assert len(after) > len(before)
    assert [{k: r[k] for k in before[0]} for r in after[: len(before)]] == before


def test_resume_after_sigkill_matches_an_uninterrupted_run(fixture, full_run, killed_run):
    per_epoch = fixture["steps_per_epoch"]
    run = killed_run["run"]
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == killed_run["kill"] // EVERY * EVERY and saved["global_step"] % per_epoch != 0  # mid-epoch
    # last.ckpt carries what a continuation needs: Adam's moments for every parameter, at the
    # checkpoint's step count; the scheduler list (empty: the ctr stage has no lr schedule); the loop state
    (optimizer,) = saved["optimizer_states"]
    params = [i for group in optimizer["param_groups"] for i in group["params"]]
    assert optimizer["state"] and set(optimizer["state"]) <= set(params)
    assert all({"exp_avg", "exp_avg_sq", "step"} <= set(state) for state in optimizer["state"].values())
    assert max(int(state["step"]) for state in optimizer["state"].values()) == saved["global_step"]
    assert any(state["exp_avg_sq"].sum() > 0 for state in optimizer["state"].values())
    assert saved["lr_schedulers"] == []
    assert saved["epoch"] == 1 and saved["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 1

    resumed = train(fixture, run, f"callbacks.step_checkpoint.every_n_train_steps={EVERY}", "logger=csv",
                    f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((full_run / "metrics.json").read_text())
    b = json.loads((run / "metrics.json").read_text())
    assert a["epochs_trained"] == b["epochs_trained"] == 3
    # the resumed fit started at the checkpoint's step (not over) and stopped where the full run did
    assert json.loads((run / "steps.json").read_text()) == [saved["global_step"], 3 * per_epoch]
    assert json.loads((full_run / "steps.json").read_text()) == [0, 3 * per_epoch]
    # Bit-exact: the rest of the interrupted epoch replays the same batches in the same order (the
    # datamodule's saved epoch seed) with the same dropout draws (RngState), under deterministic=true
    assert (a["auc"], a["logloss"]) == (b["auc"], b["logloss"]), (a, b)
    weights = [torch.load(r / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"] for r in (full_run, run)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    probs = [pl.read_parquet(r / "predictions.parquet").sort("row_id")["prob"].to_numpy() for r in (full_run, run)]
    np.testing.assert_array_equal(probs[0], probs[1])
    # Adam continued from the checkpoint's moments: its step count runs on from the saved one
    # (an optimizer reset on resume would count only the steps after it)
    final = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    (optimizer,) = final["optimizer_states"]
    assert final["global_step"] == 3 * per_epoch
    assert max(int(state["step"]) for state in optimizer["state"].values()) == 3 * per_epoch
    _keeps_history(killed_run["history"], _csv_rows(run / "csv" / "metrics.csv"))


def test_resume_from_an_epoch_end_checkpoint_matches_an_uninterrupted_run(fixture, full_run, tmp_path):
    """Killed one step into epoch 1, with the newest checkpoint written at the end of epoch 0: the
    resumed run draws epoch 1's order itself (from the restored generators), as the full run did."""
    per_epoch = fixture["steps_per_epoch"]
    run = tmp_path / "run"
    killed = train(fixture, run, f"callbacks.step_checkpoint.every_n_train_steps={per_epoch}",
                   "+callbacks.kill._target_=test_fault_tolerance.KillAtStep", f"+callbacks.kill.step={per_epoch + 1}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == per_epoch
    resumed = train(fixture, run, f"callbacks.step_checkpoint.every_n_train_steps={per_epoch}",
                    f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (json.loads((r / "metrics.json").read_text()) for r in (full_run, run))
    assert (a["auc"], a["logloss"]) == (b["auc"], b["logloss"]), (a, b)
    probs = [pl.read_parquet(r / "predictions.parquet").sort("row_id")["prob"].to_numpy() for r in (full_run, run)]
    np.testing.assert_array_equal(probs[0], probs[1])


def test_a_copied_run_dir_resumes_with_its_own_checkpoints(fixture, killed_run):
    copy = killed_run["copy"]
    saved = torch.load(copy / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    resumed = train(fixture, copy, f"callbacks.step_checkpoint.every_n_train_steps={EVERY}", "logger=csv",
                    f"ckpt_path={copy / 'checkpoints' / 'last.ckpt'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "dirpath has changed" not in resumed.stdout + resumed.stderr  # Lightning would forget the best score
    assert json.loads((copy / "steps.json").read_text()) == [saved["global_step"], 3 * fixture["steps_per_epoch"]]
    folder = copy / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt"]  # no best-v1.ckpt beside the copied one
    state = _callback_state(torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False), "RunCheckpoint")
    before = _callback_state(saved, "RunCheckpoint")
    assert state["best_model_path"] == str(folder / "best.ckpt")  # tested: this copy's best, not the original's
    assert float(state["best_model_score"]) >= float(before["best_model_score"])  # the pre-kill best was remembered
    _keeps_history(killed_run["history"], _csv_rows(copy / "csv" / "metrics.csv"))


def _callback_state(checkpoint: dict, name: str) -> dict:
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith(name)]
    return state


def test_skip_completed_stages_accepts_a_copied_run_dir(tmp_path):
    from omegaconf import OmegaConf

    from flip_ctr.train import _completed_stage

    def config(run: Path, lr: float = 1e-3):
        return OmegaConf.create({
            "paths": {"output_dir": str(run)}, "seed": 1, "data": {"dataset": "ml100k"}, "id_model": {"name": "dcnv2"},
            "trainer": {"default_root_dir": str(run), "max_epochs": 2},
            "stages": {"finetune_id": {"name": "finetune_id", "lr": lr, "pretrained_dir": str(run / "pretrain" / "aligned")}},
        })

    original = tmp_path / "original"
    (original / "finetune_id").mkdir(parents=True)
    (original / "finetune_id" / "config.yaml").write_text(OmegaConf.to_yaml(config(original)))
    (original / "finetune_id" / "metrics.json").write_text(json.dumps({"auc": 0.7, "stage": "finetune_id"}))
    copy = tmp_path / "moved" / "original"
    shutil.copytree(original, copy)
    assert _completed_stage(config(copy), "finetune_id", copy / "finetune_id")["auc"] == 0.7
    with pytest.raises(ValueError, match=r"\(stages.finetune_id differ"):  # a real difference still counts
        _completed_stage(config(copy, lr=1e-2), "finetune_id", copy / "finetune_id")
