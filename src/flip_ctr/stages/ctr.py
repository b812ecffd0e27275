"""Supervised CTR training and exact evaluation.

``CTRStage`` owns what every supervised stage shares: BCE training, AUC and Logloss over the
*full* validation/test set (exact, no threshold binning, streamed from per-score counts:
:mod:`flip_ctr.stages.metrics`), and writing
``metrics.json`` and per-row ``predictions.parquet`` into the run directory. Subclasses only
say how a batch becomes a logit (``forward``) and what the training loss is.

``CTRModule`` is the plain case: an ID model trained from scratch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import polars as pl
import torch
import torch.nn.functional as F
from torch import nn

from flip_ctr.atomic import atomic_path, atomic_write_text
from flip_ctr.models.id.regularization import l2_penalty
from flip_ctr.stages.lazy_adam import LazyAdam, use_sparse_embedding_gradients
from flip_ctr.stages.metrics import StreamedBinaryMetrics, streamed_auc

log = logging.getLogger(__name__)


def _unique_rows(rows: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Keeps the first occurrence of every row id (sorted by row id)."""
    unique, inverse = torch.unique(rows, sorted=True, return_inverse=True)
    first = torch.full((unique.numel(),), rows.numel(), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(rows.numel()), reduce="amin")
    return (unique, *(v[first] for v in values))


def exact_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """AUC (exact) and Logloss of click probabilities ``probs`` against 0/1 ``labels``."""
    auc = streamed_auc(probs, labels)
    probs = probs.double()
    logloss = F.binary_cross_entropy(probs.clamp(1e-15, 1 - 1e-15), labels.double())
    return {"auc": float(auc), "logloss": float(logloss)}


class CTRStage(L.LightningModule):
    """Base class: exact AUC/Logloss on val and test, predictions and metrics written on test."""

    def __init__(self) -> None:
        super().__init__()
        # One streamed metric per split: exact AUC and Logloss in memory bounded by the distinct
        # scores, synced across DDP ranks when computed (as the torchmetrics states were).
        self.val_metrics = StreamedBinaryMetrics()
        self.test_metrics = StreamedBinaryMetrics()
        self._test_rows: list[torch.Tensor] = []
        self._test_probs: list[torch.Tensor] = []
        self._test_labels: list[torch.Tensor] = []

    # subclasses: forward(batch) -> logit [B]; training_step(batch) -> loss
    def bce(self, logit: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logit.float(), labels.float())

    def _evaluate(self, batch: dict, split: str) -> torch.Tensor:
        logit = self(batch).float()
        labels = batch["labels"]
        getattr(self, f"{split}_metrics").update(logit, labels)
        return logit

    def _log_epoch(self, split: str) -> dict[str, float]:
        metric = getattr(self, f"{split}_metrics")
        values = metric.compute()
        metric.reset()
        self.log_dict({f"{split}/auc": values["auc"], f"{split}/logloss": values["logloss"]}, prog_bar=True, sync_dist=False)
        return {"auc": float(values["auc"]), "logloss": float(values["logloss"])}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        logit = self._evaluate(batch, "test")
        self._test_rows.append(batch["row_ids"].detach().cpu())
        self._test_probs.append(torch.sigmoid(logit).detach().cpu())
        self._test_labels.append(batch["labels"].detach().cpu())

    def on_test_epoch_end(self) -> None:
        metrics = self._log_epoch("test")
        rows = torch.cat(self._test_rows)
        probs = torch.cat(self._test_probs)
        labels = torch.cat(self._test_labels)
        self._test_rows, self._test_probs, self._test_labels = [], [], []
        if self.trainer.world_size > 1:
            rows, probs, labels = (self.all_gather(t).reshape(-1).cpu() for t in (rows, probs, labels))
            # DistributedSampler pads the test set to a multiple of the world size by repeating
            # rows: keep each row once and recompute the metrics over exactly the test set.
            rows, probs, labels = _unique_rows(rows, probs, labels)
            metrics = {**metrics, **exact_metrics(probs, labels)}
        if self.trainer.is_global_zero:
            self.write_test_outputs(metrics, rows, probs, labels)

    def write_test_outputs(self, metrics: dict, rows: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor) -> None:
        run_dir = Path(self.trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics = {**metrics, "num_test_rows": int(rows.numel())}
        atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
        frame = pl.DataFrame({"row_id": rows.numpy(), "label": labels.numpy().astype("int8"), "prob": probs.numpy()})
        with atomic_path(run_dir / "predictions.parquet") as tmp:
            frame.sort("row_id").write_parquet(tmp)
        log.info("test AUC %.4f Logloss %.4f over %d rows → %s", metrics["auc"], metrics["logloss"], rows.numel(), run_dir)


class CTRModule(CTRStage):
    """An ID model trained from scratch on clicks (the ID baselines of Table II).

    ``l2`` (group → coefficient, :mod:`flip_ctr.models.id.regularization`) adds the reference
    code's L2 penalty to the loss every step; ``bce_reduction="sum"`` sums the BCE over the batch
    as deepctr-torch does (with Adam this mostly changes how strong the L2 term is relative to
    the data term: λ against a sum of B losses is λ/B against their mean). ``optimizer="lazy_adam"``
    (:mod:`flip_ctr.stages.lazy_adam`) updates only the feature-table rows of each batch: the
    scale path, where dense Adam's whole-table update is most of a step.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        l2: dict | None = None,
        bce_reduction: str = "mean",
        optimizer: str = "adam",
    ) -> None:
        super().__init__()
        if bce_reduction not in ("mean", "sum"):
            raise ValueError(f"regularization.bce_reduction must be 'mean' or 'sum', got {bce_reduction!r}")
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        self.l2 = dict(l2 or {})
        self.bce_reduction = bce_reduction
        self.optimizer = optimizer
        if optimizer == "lazy_adam":
            self._check_lazy_adam()
            use_sparse_embedding_gradients(model)
        elif optimizer != "adam":
            raise ValueError(f"stage.optimizer must be 'adam' (the reference's) or 'lazy_adam' (sparse rows), got {optimizer!r}")
        self.save_hyperparameters(ignore=["model"])

    def _check_lazy_adam(self) -> None:
        # Weight decay and a whole-table L2 penalty give every row a gradient at every step:
        # the table would be dense again, and lazy updates would silently skip that decay.
        dense = {f"regularization.l2.{g}": self.l2.get(g, 0.0) for g in ("embedding", "linear")}
        dense["stage.weight_decay"] = self.weight_decay
        offending = {name: value for name, value in dense.items() if value}
        if offending:
            given = ", ".join(f"{name}={value}" for name, value in offending.items())
            raise ValueError(
                f"stage.optimizer=lazy_adam updates only the feature-table rows of each batch; {given} needs the whole "
                "table every step. Use id_recipe=ours (no L2) and stage.weight_decay=0, or stage.optimizer=adam."
            )

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(batch["feature_ids"])[1]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(self(batch).float(), batch["labels"].float(), reduction=self.bce_reduction)
        penalty = l2_penalty(self.model, self.l2)
        loss = bce if penalty is None else bce + penalty
        self.log("train/loss", loss, prog_bar=True)
        if penalty is not None:
            self.log("train/l2", penalty)
        return loss

    def configure_optimizers(self):
        if self.optimizer == "lazy_adam":
            return LazyAdam(self.parameters(), lr=self.lr)
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
