"""CTR-BERT (Muhamed et al., 2021) as used in the paper's Table II: a two-tower model.

The user-side fields' sentences go through one PLM tower, the item-side fields' sentences
through a second, separate copy of the PLM (same initial weights, trained independently); the
two [CLS] states ``u`` and ``i`` are combined into one click logit:

- ``interaction="mlp"`` (default): ``MLP([u; i; u ⊙ i])`` (one hidden layer);
- ``interaction="dot"``: ``<P_u u, P_i i> + b`` (late interaction, item vectors cacheable).

The towers read the datamodule's ordinary text batch: each keeps only the tokens of its own
fields (``token_field_ids``, split by ``Field.side`` of the dataset schema; context fields go to
``context_side``), re-wrapped as ``[CLS] ... [SEP]``. So a tower's output depends on its own
side's fields only.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from flip_ctr.baselines.common import fields_of_side, select_fields
from flip_ctr.stages.ctr import CTRStage


class CTRBertModule(CTRStage):
    def __init__(
        self,
        user_plm: nn.Module,
        item_plm: nn.Module,
        user_fields: list[int],
        item_fields: list[int],
        num_fields: int,
        cls_id: int,
        sep_id: int,
        pad_id: int = 0,
        interaction: str = "mlp",
        head_hidden_dim: int = 128,
        lr_plm: float = 5e-5,
        lr_head: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        if user_plm is item_plm:
            raise ValueError("CTR-BERT needs two separate PLM towers (pass a copy for the item tower)")
        if interaction not in ("mlp", "dot"):
            raise ValueError(f"interaction must be 'mlp' or 'dot', got {interaction!r}")
        if set(user_fields) & set(item_fields):
            raise ValueError(f"a field is on both towers: user {user_fields}, item {item_fields}")
        self.user_plm, self.item_plm = user_plm, item_plm
        for name, fields in (("user_keep", user_fields), ("item_keep", item_fields)):
            keep = torch.zeros(num_fields, dtype=torch.bool)
            keep[list(fields)] = True
            self.register_buffer(name, keep, persistent=False)
        self.cls_id, self.sep_id, self.pad_id = int(cls_id), int(sep_id), int(pad_id)
        self.interaction = interaction
        du, di = user_plm.hidden_size, item_plm.hidden_size
        if interaction == "mlp":
            if du != di:
                raise ValueError(f"interaction='mlp' needs towers of equal width, got {du} and {di}")
            self.head = nn.Sequential(nn.Linear(3 * du, head_hidden_dim), nn.ReLU(), nn.Linear(head_hidden_dim, 1))
        else:
            self.user_proj = nn.Linear(du, head_hidden_dim)
            self.item_proj = nn.Linear(di, head_hidden_dim)
            self.bias = nn.Parameter(torch.zeros(()))
        self.lr_plm, self.lr_head, self.weight_decay = lr_plm, lr_head, weight_decay
        self.save_hyperparameters(ignore=["user_plm", "item_plm"])

    def side_inputs(self, batch: dict, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        keep = self.user_keep if side == "user" else self.item_keep
        return select_fields(
            batch["input_ids"], batch["attention_mask"], batch["token_field_ids"], keep, self.cls_id, self.sep_id, self.pad_id
        )

    def towers(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, i): the [CLS] states of the user tower and of the item tower, each [B, H]."""
        u = self.user_plm(*self.side_inputs(batch, "user"))[:, 0]
        i = self.item_plm(*self.side_inputs(batch, "item"))[:, 0]
        return u, i

    def forward(self, batch: dict) -> torch.Tensor:
        u, i = self.towers(batch)
        if self.interaction == "mlp":
            return self.head(torch.cat([u, i, u * i], dim=-1)).squeeze(-1)
        return (self.user_proj(u) * self.item_proj(i)).sum(-1) + self.bias

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.bce(self(batch), batch["labels"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        plm = list(self.user_plm.parameters()) + list(self.item_plm.parameters())
        plm_ids = {id(p) for p in plm}
        head = [p for p in self.parameters() if id(p) not in plm_ids]
        return torch.optim.Adam(
            [{"params": plm, "lr": self.lr_plm}, {"params": head, "lr": self.lr_head}], weight_decay=self.weight_decay
        )


def build_ctr_bert(cfg, stage, datamodule, stage_dir) -> CTRBertModule:
    from flip_ctr.train import build_plm

    if datamodule.text is None:
        raise ValueError("CTR-BERT reads text: its stage needs needs_text: true")
    schema = datamodule.space.schema
    context_side = stage.get("context_side", "user")
    user_plm = build_plm(cfg.plm)
    item_plm = copy.deepcopy(user_plm)  # the second tower: same start, its own weights
    text = datamodule.text
    return CTRBertModule(
        user_plm,
        item_plm,
        user_fields=fields_of_side(schema, "user", context_side),
        item_fields=fields_of_side(schema, "item", context_side),
        num_fields=datamodule.num_fields,
        cls_id=text.cls_id,
        sep_id=text.sep_id,
        pad_id=text.pad_id,
        interaction=stage.get("interaction", "mlp"),
        head_hidden_dim=stage.get("head_hidden_dim", 128),
        lr_plm=stage.lr_plm,
        lr_head=stage.lr_head,
        weight_decay=stage.weight_decay,
    )
