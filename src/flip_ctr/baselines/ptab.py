"""PTab (Liu et al., 2022): the PLM on the dataset's text, in two phases.

1. Masked language modeling on the training split's text ("<field> is <value>." sentences, the
   same modality transformation as FLIP): standard token-level BERT masking — ``mask_ratio``
   (15%) of the non-special tokens, of which 80% become [MASK], 10% a random token and 10% stay
   unchanged — and cross-entropy at those positions. The MLM head is BERT's: Linear → GELU →
   LayerNorm, then the decoder tied to the PLM's input word embeddings (+ a bias).
2. Classification finetuning of that PLM: a fresh linear head on the [CLS] state, BCE
   (:class:`~flip_ctr.stages.finetune.FinetunePLMModule`).

``build_ptab`` runs phase 1 itself (:func:`flip_ctr.baselines.common.fit_phase`, in
``<run>/mlm``) and returns the phase-2 module, so ``flip-ctr train baseline=ptab`` does both.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from flip_ctr.data.masking import token_level_text_mask


class TiedMLMHead(nn.Module):
    """BERT's LM head on top of the encoder; the decoder weight is the input embedding matrix."""

    def __init__(self, hidden_size: int, vocab_size: int) -> None:
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.LayerNorm(hidden_size))
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, states: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        """``states`` [N, H] → vocabulary logits [N, V]."""
        return self.transform(states) @ word_embeddings.t() + self.bias


def bert_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_field_ids: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    ratio: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(corrupted input_ids, selected [B, L] bool): BERT's 80/10/10 token-level masking of
    ``ratio`` of the text tokens ([CLS]/[SEP]/padding never chosen)."""
    selected = token_level_text_mask(attention_mask, token_field_ids, ratio, generator)
    dev = generator.device if generator is not None else input_ids.device
    roll = torch.rand(input_ids.shape, generator=generator, device=dev).to(input_ids.device)
    random_ids = torch.randint(0, vocab_size, input_ids.shape, generator=generator, device=dev).to(input_ids.device)
    corrupted = input_ids.clone()
    corrupted[selected & (roll < 0.8)] = int(mask_token_id)
    swap = selected & (roll >= 0.8) & (roll < 0.9)
    corrupted[swap] = random_ids[swap]
    return corrupted, selected


class PTabMLMModule(L.LightningModule):
    """Phase 1: token-level MLM of the PLM on the dataset's text."""

    def __init__(
        self, plm: nn.Module, lr: float = 5e-5, weight_decay: float = 0.01, mask_ratio: float = 0.15, seed: int = 0
    ) -> None:
        super().__init__()
        self.plm = plm
        emb = plm.model.get_input_embeddings()
        if emb.embedding_dim != plm.hidden_size:
            raise ValueError("TiedMLMHead needs word embeddings as wide as the hidden states")
        self.head = TiedMLMHead(plm.hidden_size, emb.num_embeddings)
        self.lr, self.weight_decay, self.mask_ratio, self.seed = lr, weight_decay, mask_ratio, seed
        self.save_hyperparameters(ignore=["plm"])

    def _generator(self, device: torch.device, salt: int) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(hash((self.seed, salt, self.global_rank)) % (2**62))
        return g

    def mlm_loss(self, batch: dict, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean cross-entropy over the masked tokens, top-1 accuracy)."""
        emb = self.plm.model.get_input_embeddings()
        corrupted, selected = bert_mask(
            batch["input_ids"], batch["attention_mask"], batch["token_field_ids"], self.plm.mask_token_id,
            emb.num_embeddings, self.mask_ratio, generator,
        )
        states = self.plm(corrupted, batch["attention_mask"])
        rows, cols = selected.nonzero(as_tuple=True)
        logits = self.head(states[rows, cols], emb.weight)
        targets = batch["input_ids"][rows, cols]
        loss = F.cross_entropy(logits.float(), targets)
        accuracy = (logits.detach().argmax(-1) == targets).float().mean()
        return loss, accuracy

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, acc = self.mlm_loss(batch, self._generator(batch["input_ids"].device, self.global_step))
        self.log_dict({"mlm/loss": loss.detach(), "mlm/acc": acc}, prog_bar=True)
        return loss

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=self.lr
        )


def build_ptab(cfg, stage, datamodule, stage_dir):
    from flip_ctr.baselines.common import fit_phase
    from flip_ctr.stages.finetune import FinetunePLMModule
    from flip_ctr.train import build_plm

    if datamodule.text is None:
        raise ValueError("PTab reads text: its stage needs needs_text: true")
    plm = build_plm(cfg.plm)
    mlm = stage.mlm
    if int(mlm.get("max_epochs", 1)) > 0:
        module = PTabMLMModule(plm, lr=mlm.lr, weight_decay=mlm.weight_decay, mask_ratio=mlm.mask_ratio, seed=cfg.seed)
        fit_phase(cfg, module, datamodule, Path(stage_dir) / "mlm", mlm)
        if mlm.get("save"):
            plm.save_pretrained(Path(stage_dir) / "mlm" / "plm")
    return FinetunePLMModule(plm, lr_plm=stage.lr_plm, weight_decay=stage.weight_decay)
