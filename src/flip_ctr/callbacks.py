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
