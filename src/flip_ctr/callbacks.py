"""Callbacks shared by every stage."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch


class SpeedMonitor(L.Callback):
    """Training throughput (samples/s, after ``warmup_steps``) and peak accelerator memory,
    logged and written to ``<run dir>/speed.json`` at the end of fitting."""

    def __init__(self, warmup_steps: int = 10) -> None:
        self.warmup_steps = warmup_steps
        self._samples = 0
        self._start: float | None = None
        self._steps = 0

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

    def on_fit_end(self, trainer, pl_module) -> None:
        if self._start is None or not trainer.is_global_zero:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self._start
        stats = {
            "samples_per_second": self._samples / seconds if seconds > 0 else None,
            "measured_samples": self._samples,
            "measured_seconds": seconds,
            "world_size": trainer.world_size,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
            "torch": torch.__version__,
        }
        Path(trainer.default_root_dir).mkdir(parents=True, exist_ok=True)
        (Path(trainer.default_root_dir) / "speed.json").write_text(json.dumps(stats, indent=2))


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the message says where and which checkpoint is the last good one."""


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
        saved = [Path(c.last_model_path or c.best_model_path) for c in trainer.checkpoint_callbacks]
        saved = [p for p in saved if p.is_file()]
        last = max(saved, key=lambda p: p.stat().st_mtime) if saved else None
        raise NonFiniteLossError(
            f"non-finite training loss {loss.detach().float().cpu().tolist()} in stage {type(pl_module).__name__} "
            f"(run dir {trainer.default_root_dir}) at epoch {trainer.current_epoch}, global step {trainer.global_step}: "
            f"training stopped; last good checkpoint: {last or 'none written yet'}"
            + (f" (resume with ckpt_path={last})" if last else "")
        )
