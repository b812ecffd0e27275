"""FLIP_ID (paper Eq. 15, 18): finetune the aligned ID model alone.

This file must not import the PLM stack (transformers): FLIP_ID trains, evaluates and serves
at the cost of the plain ID model. ``ŷ_ID = σ(Linear_ID(v))`` where Linear_ID is the ID model's
own output layer: pretraining never updates it (no loss reaches it), so it is exactly the
paper's freshly initialised linear layer on ``v`` — and the architecture is identical to the
same ID model trained from scratch, which keeps the FLIP_ID vs scratch comparison fair.
"""

from __future__ import annotations

from pathlib import Path

from flip_ctr.stages.checkpoints import load_id_model
from flip_ctr.stages.ctr import CTRModule


class FinetuneIDModule(CTRModule):
    @classmethod
    def from_pretrained(cls, pretrained_dir: str | Path, **kwargs) -> "FinetuneIDModule":
        model, _ = load_id_model(Path(pretrained_dir))
        return cls(model=model, **kwargs)
