"""Run tracking for flip-ctr runs: W&B (``logger=wandb``, conf/logger/wandb.yaml) and the CSV
history (``logger=csv``, the default: :class:`ResumableCSVLogger`).

:class:`FlipWandbLogger` is Lightning's ``WandbLogger`` with the conventions of this project:

- one W&B run per stage (a pipeline gives pretrain, scratch, finetune_id, ... runs), named
  ``<dataset>-<model>-<stage>-<ablation>-s<seed>`` (model: the ID model, ``+<plm>`` for stages
  that read text), grouped by the run directory, ``job_type`` = the stage, tagged with all of it;
- the resolved Hydra config (``log_hyperparams``), the losses and metrics Lightning logs, and —
  when the stage logs its final metrics (``final/*``, once, after testing) — a one-row
  ``results`` table (dataset, model, stage, ablation, seed, AUC, Logloss, ...) and the test
  metrics under ``test/*`` in the run summary;
- offline by default: the run is written to ``<stage dir>/wandb/offline-run-*/`` and uploaded
  later with ``wandb sync``. :func:`read_offline_run` reads such a directory back (config,
  summary, history) without a W&B account — that is what the tests and notebooks use.
"""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["FlipWandbLogger", "ResumableCSVLogger", "run_name", "find_offline_runs", "read_offline_run"]


# ----------------------------------------------------------------------------- CSV history
class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv when it starts; this one appends to
    it (under its header; Lightning rewrites the file if later rows bring new columns)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
                self.metrics_keys = sorted(csv.DictReader(fh).fieldnames or [])


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a restart: a run resumed in its directory
    (``ckpt_path=.../last.ckpt``) appends to the history written before the kill instead of
    replacing it. Steps between the last checkpoint and the kill appear twice (as logged before
    the kill, then as redone)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

# Stages that read no text: their run name leaves the PLM out.
ID_ONLY_STAGES = ("ctr", "scratch", "finetune_id")
# Runs started by a FlipWandbLogger in this process (a later stage finishes them, see below).
_STARTED_RUN_IDS: set[str] = set()


def run_name(dataset: str | None, id_model: str | None, stage: str | None, ablation: str | None = None,
             seed: int | None = None, plm: str | None = None) -> str:
    """``ml100k-dcnv2-finetune_id-full-s42``; ``ml100k-dcnv2+minilm_l6-finetune_joint-full-s42``."""
    model = id_model or "model"
    if plm and stage not in ID_ONLY_STAGES:
        model = f"{model}+{plm}"
    parts = [dataset or "data", model, stage or "stage"]
    if ablation:
        parts.append(ablation)
    if seed is not None:
        parts.append(f"s{seed}")
    return "-".join(str(p) for p in parts)


class FlipWandbLogger(WandbLogger):
    """``WandbLogger`` that names, groups and tags its run after the flip-ctr stage it logs.

    ``stage`` may be left out (null): it is then the name of ``save_dir``, which `flip-ctr
    pipeline` points at ``<run dir>/<strategy>``. Explicit ``name`` / ``group`` / ``job_type`` /
    ``tags`` win over the derived ones. Any other keyword goes to ``WandbLogger`` / ``wandb.init``.
    """

    def __init__(
        self,
        *,
        dataset: str | None = None,
        id_model: str | None = None,
        stage: str | None = None,
        ablation: str | None = None,
        plm: str | None = None,
        seed: int | None = None,
        task: str | None = None,
        run_dir: str | None = None,
        save_dir: str = ".",
        name: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        tags: list[str] | tuple[str, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        # protocol=refit fits a stage twice: <stage dir>/selection (choosing the epoch count), then
        # <stage dir> itself. The selection fit is its own run, named and typed as such.
        directory = Path(save_dir).resolve()
        selection = directory.name == "selection"
        stage = stage or (directory.parent if selection else directory).name
        self.flip_info = {
            "dataset": dataset, "id_model": id_model, "plm": plm, "stage": stage, "ablation": ablation, "seed": seed
        }
        name = name or run_name(dataset, id_model, stage, ablation, seed, plm) + ("-selection" if selection else "")
        job_type = job_type or (f"{stage}-selection" if selection else stage)
        group = group or (Path(run_dir).name if run_dir else None)
        derived_tags = [str(t) for t in (dataset, id_model, stage, ablation, task) if t]
        if plm and stage not in ID_ONLY_STAGES:
            derived_tags.append(str(plm))
        tags = list(dict.fromkeys([*(tags or []), *derived_tags]))  # keep order, no duplicates
        super().__init__(name=name, save_dir=save_dir, group=group, job_type=job_type, tags=tags, **kwargs)

    @property
    @rank_zero_experiment
    def experiment(self):
        import wandb

        if self._experiment is None and wandb.run is not None and wandb.run.id in _STARTED_RUN_IDS:
            # The previous stage's run of this process (Lightning never finishes its runs): close it,
            # so that this stage gets a run of its own instead of appending to that one.
            wandb.run.finish()
        run = super().experiment
        if getattr(run, "id", None):
            _STARTED_RUN_IDS.add(run.id)
        return run

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        final = {k.removeprefix("final/"): v for k, v in metrics.items() if k.startswith("final/")}
        if "auc" in final:
            self.log_results(final)

    @rank_zero_only
    def log_results(self, metrics: dict[str, Any]) -> None:
        """The stage's result as a one-row ``results`` table, and its test metrics in the summary."""
        import wandb

        row = {**self.flip_info, **{k: v for k, v in metrics.items() if k not in self.flip_info}}
        columns = list(row)
        self.experiment.log({"results": wandb.Table(columns=columns, data=[[row[c] for c in columns]])})
        for key in ("auc", "logloss"):
            if key in metrics:
                self.experiment.summary[f"test/{key}"] = metrics[key]


# ----------------------------------------------------------------------------- offline runs
# A run's ``run-<id>.wandb`` file is W&B's transaction log: a ":W&B" header, then 32 KiB blocks
# of LevelDB-log records (4-byte checksum, 2-byte length, 1-byte type: full/first/middle/last),
# each payload a ``wandb_internal_pb2.Record`` protobuf. `wandb sync` uploads exactly this.
_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    if data[:4] != b":W&B":
        raise ValueError("not a W&B transaction log (no ':W&B' header)")
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer padding
            pos += left
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        payload = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            yield payload
        elif kind == _FIRST:
            pending = payload
        elif kind == _MIDDLE:
            pending += payload
        elif kind == _LAST:
            yield pending + payload
            pending = b""


def _set(target: dict, item) -> None:
    keys = list(item.nested_key) or [item.key]
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = json.loads(item.value_json)


def find_offline_runs(root: str | Path) -> list[Path]:
    """Every ``offline-run-*`` directory below ``root`` (oldest first)."""
    return sorted(Path(root).rglob("offline-run-*"), key=lambda p: p.name)


def read_offline_run(run_dir: str | Path) -> dict[str, Any]:
    """``{"id", "name", "group", "job_type", "tags", "config", "summary", "history"}`` of an
    offline W&B run directory (``.../wandb/offline-run-<time>-<id>``), read from its
    transaction log. ``summary`` is the run summary as W&B shows it (last logged values plus
    explicit summary updates); ``history`` the logged rows in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    logs = sorted(Path(run_dir).glob("run-*.wandb"))
    if not logs:
        raise FileNotFoundError(f"no run-*.wandb transaction log in {run_dir}")
    out: dict[str, Any] = {"config": {}, "summary": {}, "history": []}
    for raw in _payloads(logs[0].read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out.update(id=run.run_id, name=run.display_name, group=run.run_group, job_type=run.job_type, tags=list(run.tags))
            for item in run.config.update:
                _set(out["config"], item)
        elif kind == "config":
            for item in record.config.update:
                _set(out["config"], item)
        elif kind == "summary":
            for item in record.summary.update:
                _set(out["summary"], item)
            for item in record.summary.remove:
                (out["summary"]).pop(item.key, None)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set(row, item)
            out["history"].append(row)
    out["config"].pop("_wandb", None)
    return out
