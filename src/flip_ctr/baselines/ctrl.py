"""CTRL (Li et al., 2023): instance-level contrastive alignment, then the ID model alone.

1. Alignment (``<run>/align``): the ID model's representation ``v`` of the tabular row and the
   PLM's [CLS] state ``w_1`` of the same row's text are projected and aligned with the
   symmetric InfoNCE of :class:`~flip_ctr.models.alignment.ICLHead` (in-batch negatives,
   temperature τ). Both models are trained (``freeze_plm: true`` keeps the PLM fixed).
2. The aligned ID model alone is finetuned on clicks (BCE on its own logit) and served: the
   PLM is dropped after phase 1, the Lightning checkpoints of phase 2 hold only the ID model,
   and ``<run>/served/id_model.pt`` is the served artifact in the
   :mod:`flip_ctr.stages.checkpoints` format (``{"spec", "state_dict"}``, loadable with
   :func:`~flip_ctr.stages.checkpoints.load_id_model` without importing transformers).

This is the "w/o MLM & MTM" corner of FLIP's pretraining (ICL only), with CTRL's protocol:
no masking, and only the ID model is kept.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import nn

from flip_ctr.stages.checkpoints import save_id_model
from flip_ctr.stages.ctr import CTRModule

SERVED_DIR = "served"


class CTRLAlignModule(L.LightningModule):
    """Phase 1: InfoNCE between ``v = ID(x_tab)`` and ``w_1 = PLM(x_text)[CLS]``."""

    def __init__(
        self,
        id_model: nn.Module,
        plm: nn.Module,
        proj_dim: int = 128,
        temperature: float = 0.7,
        lr_plm: float = 5e-5,
        lr_id: float = 1e-3,
        weight_decay: float = 0.01,
        freeze_plm: bool = False,
    ) -> None:
        super().__init__()
        from flip_ctr.models.alignment import ICLHead

        self.id_model = id_model
        self.plm = plm
        self.icl = ICLHead(text_dim=plm.hidden_size, id_dim=id_model.representation_dim, proj_dim=proj_dim, temperature=temperature)
        self.lr_plm, self.lr_id, self.weight_decay, self.freeze_plm = lr_plm, lr_id, weight_decay, freeze_plm
        if freeze_plm:
            plm.requires_grad_(False)
        self.save_hyperparameters(ignore=["id_model", "plm"])

    def contrastive_loss(self, batch: dict) -> torch.Tensor:
        v = self.id_model(batch["feature_ids"])[0]
        if self.freeze_plm:
            with torch.no_grad():
                w1 = self.plm(batch["input_ids"], batch["attention_mask"])[:, 0]
        else:
            w1 = self.plm(batch["input_ids"], batch["attention_mask"])[:, 0]
        return self.icl(w1, v)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.contrastive_loss(batch)
        self.log("ctrl/icl", loss.detach(), prog_bar=True)
        return loss

    def configure_optimizers(self):
        groups = [{"params": list(self.id_model.parameters()) + list(self.icl.parameters()), "lr": self.lr_id}]
        if not self.freeze_plm:
            groups.append({"params": list(self.plm.parameters()), "lr": self.lr_plm})
        return torch.optim.AdamW(groups, weight_decay=self.weight_decay)


class CTRLServedModule(CTRModule):
    """Phase 2: the aligned ID model finetuned alone; writes ``<run>/served/id_model.pt``."""

    def __init__(self, model: nn.Module, id_model_spec: dict, lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        super().__init__(model, lr=lr, weight_decay=weight_decay)
        self.id_model_spec = dict(id_model_spec)

    def save_served(self, directory: Path | None = None) -> Path:
        directory = Path(directory) if directory is not None else Path(self.trainer.default_root_dir) / SERVED_DIR
        path = directory / "id_model.pt"
        save_id_model(path, self.model, self.id_model_spec)
        return path

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:
            self.save_served()

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self.trainer.is_global_zero:  # the evaluated (best) weights are the served ones
            self.save_served()


def build_ctrl(cfg, stage, datamodule, stage_dir) -> CTRLServedModule:
    from flip_ctr.baselines.common import fit_phase
    from flip_ctr.train import _id_model_spec, build_id_model, build_plm

    if datamodule.text is None:
        raise ValueError("CTRL aligns with the PLM: its stage needs needs_text: true")
    id_model = build_id_model(cfg, datamodule)
    align = stage.align
    if int(align.get("max_epochs", 1)) > 0:
        module = CTRLAlignModule(
            id_model,
            build_plm(cfg.plm),
            proj_dim=align.proj_dim,
            temperature=align.temperature,
            lr_plm=align.lr_plm,
            lr_id=align.lr_id,
            weight_decay=align.weight_decay,
            freeze_plm=align.get("freeze_plm", False),
        )
        fit_phase(cfg, module, datamodule, Path(stage_dir) / "align", align)
        del module  # the PLM and the projection heads go; only the aligned ID model is kept
    return CTRLServedModule(id_model.cpu(), _id_model_spec(cfg, datamodule), lr=stage.lr, weight_decay=stage.weight_decay)
