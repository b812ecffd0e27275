"""Pieces the baselines share: a nested training phase run by a builder, and per-side text.

Two baselines have a phase before their supervised CTR training (PTab: MLM on the dataset's
text; CTRL: contrastive alignment). Their builder runs that phase with :func:`fit_phase` — a
Lightning ``Trainer`` built from the same ``cfg.trainer`` (devices, precision) in
``<stage_dir>/<phase>`` with no validation and no checkpointing — and then returns the
supervised module that ``flip-ctr train`` fits and tests like any other stage.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def fit_phase(cfg: DictConfig, module, datamodule, phase_dir: Path, phase: DictConfig) -> dict:
    """Fit ``module`` on the training split for ``phase.max_epochs`` epochs (``phase.limit_train_batches``
    batches per epoch: an int, a share in (0, 1), or null for all). An explicit ``trainer.max_epochs``
    / ``trainer.limit_train_batches`` on the command line (e.g. ``debug=fast``) wins, as for stages."""
    import hydra
    from lightning.pytorch.loggers import CSVLogger

    from flip_ctr.callbacks import SpeedMonitor

    phase_dir = Path(phase_dir)
    phase_dir.mkdir(parents=True, exist_ok=True)
    loader = datamodule.train_dataloader()
    overrides = {
        "default_root_dir": str(phase_dir),
        "limit_val_batches": 0,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
    }
    if cfg.trainer.get("max_epochs") is None:
        overrides["max_epochs"] = int(phase.get("max_epochs", 1))
    limit = phase.get("limit_train_batches")
    if limit is not None and cfg.trainer.get("limit_train_batches") is None:
        if isinstance(limit, float) and 0 < limit < 1:
            limit = max(1, int(limit * len(loader)))
        overrides["limit_train_batches"] = limit
    # log at least once per epoch however short the phase is (metrics.csv of the phase)
    steps = overrides.get("limit_train_batches") or cfg.trainer.get("limit_train_batches") or len(loader)
    steps = int(steps * len(loader)) if isinstance(steps, float) and steps <= 1 else int(steps)
    overrides["log_every_n_steps"] = max(1, min(int(cfg.trainer.get("log_every_n_steps") or 50), steps))
    logger = CSVLogger(str(phase_dir), name="", version="")
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[SpeedMonitor()], logger=logger, **overrides)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    seconds = time.perf_counter() - start
    log.info("%s: %d steps in %.0f s", phase_dir.name, trainer.global_step, seconds)
    return {"steps": int(trainer.global_step), "seconds": seconds}


def fields_of_side(schema, side: str, context_side: str = "user") -> list[int]:
    """Field indices of one tower: ``side`` ("user"/"item") plus the context fields when
    ``context_side == side``. Raises if the schema has no field on that side."""
    if side not in ("user", "item"):
        raise ValueError(f"side must be 'user' or 'item', got {side!r}")
    if context_side not in ("user", "item"):
        raise ValueError(f"context_side must be 'user' or 'item', got {context_side!r}")
    fields = [i for i, f in enumerate(schema.fields) if f.side == side or (f.side == "context" and context_side == side)]
    if not fields:
        raise ValueError(
            f"dataset {schema.name!r} has no {side}-side field (Field.side); CTR-BERT/P5 need user and item fields "
            f"(sides: {[f.side for f in schema.fields]})"
        )
    return fields


def select_fields(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_field_ids: torch.Tensor,
    keep: torch.Tensor,
    cls_id: int,
    sep_id: int,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sub-sequence of the chosen fields' sentences: ``[CLS] s_f ... [SEP]`` for the fields with
    ``keep[f]`` (BoolTensor [F]), tokens compacted to the left, dynamic padding.

    ``input_ids``/``attention_mask``/``token_field_ids`` [B, L] are a batch of the datamodule (the
    whole row's text); the result depends only on the tokens of the kept fields.
    """
    keep = keep.to(device=input_ids.device, dtype=torch.bool)
    in_field = token_field_ids >= 0
    valid = in_field & keep[token_field_ids.clamp(min=0)] & attention_mask.to(torch.bool)
    batch_size = input_ids.shape[0]
    body = valid.sum(1)
    length = int(body.max()) + 2 if batch_size else 2
    target = torch.cumsum(valid.long(), 1)  # 1-based position after [CLS]
    rows = torch.arange(batch_size, device=input_ids.device)[:, None].expand_as(input_ids)
    out = torch.full((batch_size, length), pad_id, dtype=input_ids.dtype, device=input_ids.device)
    out[rows[valid], target[valid]] = input_ids[valid]
    out[:, 0] = cls_id
    out[torch.arange(batch_size, device=input_ids.device), body + 1] = sep_id
    mask = (torch.arange(length, device=input_ids.device)[None, :] <= (body + 1)[:, None]).to(attention_mask.dtype)
    return out, mask
