"""Callbacks shared by every stage."""

from __future__ import annotations

import json
import math
import resource
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from flip_ctr.atomic import atomic_path, atomic_write_text


class SpeedMonitor(L.Callback):
    """Training throughput (samples/s, after ``warmup_steps``), the wall time of the validation
    passes and of the test pass (with its samples/s), the peak RSS of the main process and peak
    accelerator memory, logged and written to ``<run dir>/speed.json`` at the end of fitting
    (the test figures are added when testing ends)."""

    def __init__(self, warmup_steps: int = 10) -> None:
        self.warmup_steps = warmup_steps
        self._samples = 0
        self._start: float | None = None
        self._steps = 0
        self._validation_seconds = 0.0
        self._validation_passes = 0
        self._phase_start: float | None = None
        self._test_samples = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._steps == self.warmup_steps:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._start = time.perf_counter()
            self._samples = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._steps += 1
        if self._start is not None:
            self._samples += int(batch["labels"].shape[0])

    # Validation runs inside the timed training window: its time is reported, and taken out of
    # the training rate so that samples/s is the training loop's own.
    def on_validation_start(self, trainer, pl_module) -> None:
        self._phase_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._phase_start is None or trainer.sanity_checking:
            return
        seconds = time.perf_counter() - self._phase_start
        self._validation_seconds += seconds
        self._validation_passes += 1
        if self._start is not None and self._phase_start >= self._start:
            self._start += seconds

    def on_test_start(self, trainer, pl_module) -> None:
        self._phase_start = time.perf_counter()
        self._test_samples = 0

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._test_samples += int(batch["labels"].shape[0])

    def on_fit_end(self, trainer, pl_module) -> None:
        if self._start is None or not trainer.is_global_zero:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self._start
        self._write(trainer, merge=False, stats={
            "samples_per_second": self._samples / seconds if seconds > 0 else None,
            "measured_samples": self._samples,
            "measured_seconds": seconds,
            "validation_seconds": self._validation_seconds,
            "validation_passes": self._validation_passes,
            "world_size": trainer.world_size,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
            "torch": torch.__version__,
        })

    def on_test_end(self, trainer, pl_module) -> None:
        if self._phase_start is None or not trainer.is_global_zero:
            return
        seconds = time.perf_counter() - self._phase_start
        self._write(trainer, merge=True, stats={
            "test_seconds": seconds,
            "test_samples": self._test_samples,  # this rank's (DDP: each rank tests its share)
            "test_samples_per_second": self._test_samples / seconds if seconds > 0 else None,
        })

    @staticmethod
    def _write(trainer, stats: dict, merge: bool) -> None:
        path = Path(trainer.default_root_dir) / "speed.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        previous = json.loads(path.read_text()) if merge and path.is_file() else {}
        # ru_maxrss is KiB on Linux: the peak of this process so far (DataLoader workers not included)
        peak = {"peak_rss_main_process_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        atomic_write_text(path, json.dumps({**previous, **stats, **peak}, indent=2))


class RngState(L.Callback):
    """Saves the global random generators (torch, CUDA, numpy, python) in every checkpoint and
    puts them back when a run resumes, so that what the resumed run draws (the next epoch's order,
    dropout) is what the uninterrupted run drew after the checkpoint.

    When: at ``on_load_checkpoint``, before Lightning creates the training iterator, which at an
    epoch boundary draws the next epoch's order exactly as the uninterrupted run did. Resumed in
    the middle of an epoch, the iterator's creation draws once more than the uninterrupted run
    did (its base seed; the order itself comes from the checkpoint, see
    :class:`flip_ctr.data.datamodule.ResumableRandomSampler`), so then the generators are put back
    a second time at ``on_train_start``, right before the first resumed batch."""

    def __init__(self) -> None:
        self._state: dict | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        import random

        import numpy as np

        # tensors and plain Python values only: checkpoints stay loadable with weights_only=True
        name, keys, pos, has_gauss, cached = np.random.get_state()
        checkpoint["rng_state"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        from lightning.pytorch.trainer.states import TrainerFn

        # only a resumed fit: trainer.test(ckpt_path="best") loads checkpoints too, and must leave
        # the generators alone (the pipeline's next stage draws from them)
        if trainer.state.fn != TrainerFn.FITTING:
            return
        self._state = checkpoint.get("rng_state")
        if self._state is not None:
            self._restore(self._state)

    def on_train_start(self, trainer, pl_module) -> None:
        state, self._state = self._state, None
        if state is not None and 0 < trainer.fit_loop.epoch_loop.batch_progress.current.processed < trainer.num_training_batches:
            self._restore(state)

    @staticmethod
    def _restore(state: dict) -> None:
        import random

        import numpy as np

        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
        random.setstate(state["python"])


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the message says where and which checkpoint is the last good one."""


class DivergedLossError(RuntimeError):
    """The training loss stayed far above its starting value; same message shape as NonFiniteLossError."""


def _last_good_checkpoint(trainer, before: float | None = None) -> Path | None:
    """The newest checkpoint on disk (written before wall-clock time ``before``, when given)."""
    saved = [Path(c.last_model_path or c.best_model_path) for c in trainer.checkpoint_callbacks]
    saved = [p for p in saved if p.is_file() and (before is None or p.stat().st_mtime < before)]
    return max(saved, key=lambda p: p.stat().st_mtime) if saved else None


def _stopped(trainer, pl_module, what: str, before: float | None = None) -> str:
    """``<what> in stage … at epoch …, global step …: training stopped; last good checkpoint: …``."""
    last = _last_good_checkpoint(trainer, before)
    return (
        f"{what} in stage {type(pl_module).__name__} (run dir {trainer.default_root_dir}) at epoch "
        f"{trainer.current_epoch}, global step {trainer.global_step}: training stopped; last good checkpoint: "
        f"{last or 'none written yet'}" + (f" (resume with ckpt_path={last})" if last else "")
    )


class FiniteLossGuard(L.Callback):
    """Stops the run at the first NaN/inf training loss, with a clear error.

    Checked before backward, so the bad loss never reaches the weights, and raising ends fit
    before any later checkpoint is written: the newest checkpoint on disk (``last.ckpt``, also
    written every N steps by ``callbacks.step_checkpoint``) is the last good state to resume from.
    Costs one device→host sync per step (the loss is read to check it)."""

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        # every rank must agree, or the healthy ranks would hang in the next collective
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        raise NonFiniteLossError(_stopped(trainer, pl_module, f"non-finite training loss {loss.detach().float().cpu().tolist()}"))


class DivergenceGuard(L.Callback):
    """Stops the run when the training loss stays above ``factor`` × its starting value (the first
    training loss of the run) for ``steps`` consecutive training batches: a divergence that stays
    finite, which FiniteLossGuard never sees (e.g. ``stage.lr=1e3``: logloss 1e30, AUC 0.5).

    While the loss is above the threshold, :class:`LastCheckpoint` does not refresh ``last.ckpt``
    (:attr:`diverging`), so the checkpoint named in the error is one written before the loss rose.
    The starting value is saved in checkpoints: a resumed run compares with the same one.
    ``steps`` batches of patience let a one-batch spike pass. Costs one device→host sync per step."""

    def __init__(self, factor: float = 10.0, steps: int = 100) -> None:
        if factor <= 1 or steps < 1:
            raise ValueError(f"callbacks.divergence needs factor > 1 and steps >= 1, got factor={factor}, steps={steps}")
        self.factor, self.steps = float(factor), int(steps)
        self.start: float | None = None
        self._streak = 0
        self._streak_began: float | None = None  # wall-clock time of the first batch above the threshold

    @property
    def diverging(self) -> bool:
        return self._streak > 0

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        value = float(loss.detach().float().mean())
        if self.start is None and math.isfinite(value) and value > 0:
            self.start = value  # non-finite: FiniteLossGuard's case; non-positive: no scale to compare with
        above = self.start is not None and value > self.factor * self.start
        # every rank must agree (on stopping, and on holding last.ckpt, whose save is collective)
        if not trainer.strategy.reduce_boolean_decision(above, all=False):
            self._streak, self._streak_began = 0, None
            return
        self._streak += 1
        self._streak_began = self._streak_began or time.time()
        if self._streak >= self.steps:
            raise DivergedLossError(_stopped(
                trainer, pl_module,
                f"training loss {value:.4g} stayed above {self.factor:g} x its starting value {self.start:.4g} "
                f"for {self._streak} steps (callbacks.divergence)",
                before=self._streak_began,
            ))

    def state_dict(self) -> dict:
        return {"start": self.start}

    def load_state_dict(self, state_dict: dict) -> None:
        self.start = state_dict.get("start", self.start)


# -- checkpoints --------------------------------------------------------------------------------
class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, with two changes that make a run directory trustworthy:

    - atomic writes (temp file, then rename): a kill during a save leaves the previous file, never
      a truncated one that a resume would choke on;
    - relocatable: resuming a run directory copied or moved elsewhere maps the paths saved in the
      checkpoint (best, last, top-k) into the new directory when the files came along, so the
      best score and best checkpoint survive (Lightning forgets them when ``dirpath`` changed,
      and would test the best checkpoint of the *old* directory)."""

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        if not trainer.is_global_zero:  # only rank 0 writes; the others take part in the barrier
            return super()._save_checkpoint(trainer, filepath)
        with atomic_path(filepath) as tmp:
            super()._save_checkpoint(trainer, str(tmp))
        self._last_checkpoint_saved = filepath

    def load_state_dict(self, state_dict: dict) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:
            moved = _relocated(state_dict, old, self.dirpath)
            anchor = moved.get("best_model_path") or moved.get("last_model_path")
            if anchor and Path(anchor).is_file():  # the checkpoints came along: a copied run dir
                state_dict = moved
        super().load_state_dict(state_dict)


def relocate(value, old: str, new: str):
    """``value`` with the directory prefix ``old`` replaced by ``new`` (a run dir copied or moved);
    anything that is not a path below ``old`` unchanged."""
    if isinstance(value, str) and (value == old or value.startswith(old.rstrip("/") + "/")):
        return new + value[len(old):]
    return value


def _relocated(state: dict, old: str, new: str) -> dict:
    out = {k: relocate(v, old, new) for k, v in state.items()}
    out["best_k_models"] = {relocate(k, old, new): v for k, v in (state.get("best_k_models") or {}).items()}
    return out


class LastCheckpoint(RunCheckpoint):
    """The one ``last.ckpt``: refreshed every ``every_n_train_steps`` steps (mid-epoch, so a killed
    run loses at most that many) and at every epoch end, after validation (null: epoch ends only).

    Lightning would give a second ``save_last`` callback in the same folder ``last-v1.ckpt``; here
    the best-checkpoint callback saves no last, and this one writes both cadences to one file.
    Not refreshed while :class:`DivergenceGuard` sees the loss above its threshold."""

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int | None = 1000) -> None:
        super().__init__(dirpath=dirpath, every_n_train_steps=every_n_train_steps or None, save_top_k=0, save_last=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        pass  # the epoch-end save is on_train_epoch_end, which runs after validation

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not (trainer.sanity_checking or trainer.fast_dev_run):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_last_checkpoint(self, trainer, monitor_candidates: dict) -> None:
        if not any(getattr(c, "diverging", False) for c in trainer.callbacks):
            super()._save_last_checkpoint(trainer, monitor_candidates)
