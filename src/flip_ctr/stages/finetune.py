"""Stage 2 with the PLM: FLIP (joint, Eq. 16-17) and FLIP_PLM (Eq. 19).

FLIP:      ŷ = σ(α·Linear_ID(v) + (1−α)·Linear_PLM(w_1)), α learnable,
           loss = BCE(ŷ) + BCE(ŷ_ID) + BCE(ŷ_PLM).
FLIP_PLM:  ŷ_PLM = σ(Linear_PLM(w_1)), loss = BCE(ŷ_PLM).

Separate learning rates for the PLM and the ID side (a PLM wants ~1e-5..5e-5, an ID model
~1e-3). FLIP_ID lives in :mod:`flip_ctr.stages.finetune_id` so it never imports the PLM stack.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from flip_ctr.stages.checkpoints import submodule_state
from flip_ctr.stages.ctr import CTRStage


class FinetunePLMModule(CTRStage):
    """FLIP_PLM, and (from plain pretrained weights) the PLM-only reference classifier."""

    def __init__(self, plm: nn.Module, lr_plm: float = 5e-5, weight_decay: float = 0.0) -> None:
        super().__init__()
        self.plm = plm
        self.plm_head = nn.Linear(plm.hidden_size, 1)
        self.lr_plm, self.weight_decay = lr_plm, weight_decay
        self.save_hyperparameters(ignore=["plm"])

    def forward(self, batch: dict) -> torch.Tensor:
        states = self.plm(batch["input_ids"], batch["attention_mask"])
        return self.plm_head(self.plm.sentence_embedding(states, batch["attention_mask"])).squeeze(-1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.bce(self(batch), batch["labels"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr_plm, weight_decay=self.weight_decay)


class FinetuneJointModule(CTRStage):
    """FLIP: both aligned models, fused logit with learnable α (kept in (0, 1) by a sigmoid)."""

    def __init__(
        self,
        id_model: nn.Module,
        plm: nn.Module,
        lr_id: float = 1e-3,
        lr_plm: float = 5e-5,
        weight_decay: float = 0.0,
        alpha_init: float = 0.5,
        lr_alpha: float | None = None,
    ) -> None:
        super().__init__()
        self.id_model = id_model
        self.plm = plm
        self.plm_head = nn.Linear(plm.hidden_size, 1)
        self.alpha_logit = nn.Parameter(torch.logit(torch.tensor(float(alpha_init))))
        self.lr_id, self.lr_plm, self.weight_decay = lr_id, lr_plm, weight_decay
        # α is one scalar gate: with Adam it moves ~lr per step, so a short run at the ID lr
        # leaves it stuck near its initial value. It gets its own lr (None → lr_id).
        self.lr_alpha = lr_alpha
        self.save_hyperparameters(ignore=["id_model", "plm"])

    def warm_start(self, id_checkpoint: str | Path, plm_checkpoint: str | Path) -> None:
        """Start from the finetuned FLIP_ID and FLIP_PLM checkpoints instead of the aligned ones.

        A reduced-compute option (CPU scale): a full joint epoch through the PLM costs as much as
        FLIP_PLM itself, so the joint stage starts where the single-model finetunes ended and only
        learns α and the fused objective. Paper scale starts from the aligned checkpoints.
        """
        id_state = torch.load(id_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        plm_state = torch.load(plm_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        self.id_model.load_state_dict(submodule_state(id_state, "model"))
        self.plm.load_state_dict(submodule_state(plm_state, "plm"))
        self.plm_head.load_state_dict(submodule_state(plm_state, "plm_head"))

    @property
    def alpha(self) -> torch.Tensor:
        return torch.sigmoid(self.alpha_logit)

    def logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(fused, ID-only, PLM-only) logits."""
        id_logit = self.id_model(batch["feature_ids"])[1].float()
        states = self.plm(batch["input_ids"], batch["attention_mask"])
        plm_logit = self.plm_head(self.plm.sentence_embedding(states, batch["attention_mask"])).squeeze(-1).float()
        fused = self.alpha * id_logit + (1 - self.alpha) * plm_logit
        return fused, id_logit, plm_logit

    def forward(self, batch: dict) -> torch.Tensor:
        return self.logits(batch)[0]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        fused, id_logit, plm_logit = self.logits(batch)
        labels = batch["labels"]
        loss = self.bce(fused, labels) + self.bce(id_logit, labels) + self.bce(plm_logit, labels)
        self.log_dict({"train/loss": loss, "train/alpha": self.alpha.detach()}, prog_bar=True)
        return loss

    def write_test_outputs(self, metrics: dict, *args) -> None:
        # α says how much the fused prediction leans on each model: worth having beside the AUC.
        super().write_test_outputs({**metrics, "alpha": float(self.alpha)}, *args)

    def configure_optimizers(self):
        plm_params = list(self.plm.parameters()) + list(self.plm_head.parameters())
        groups = [
            {"params": list(self.id_model.parameters()), "lr": self.lr_id, "weight_decay": self.weight_decay},
            {"params": plm_params, "lr": self.lr_plm, "weight_decay": self.weight_decay},
            {"params": [self.alpha_logit], "lr": self.lr_alpha if self.lr_alpha is not None else self.lr_id, "weight_decay": 0.0},
        ]
        return torch.optim.Adam(groups)
