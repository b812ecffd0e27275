"""Per-field text encoding with a frozen PLM: each field's sentence encoded once, on its own.

The paper encodes a row's whole text ``[CLS] s_1 ... s_F [SEP]`` with the PLM at every step,
so every token attends to every field. With the PLM frozen (``stages.pretrain.freeze_plm``)
that is a fixed function of the row, and with ``stages.pretrain.text_encoding=per_field`` we
trade the cross-field context for compute: each sentence ``s_f = "<name_f> is <value>."`` is
encoded alone as ``[CLS] s_f [SEP]``, once per distinct value (≈17K for ML-1M instead of one
pass per row per step), and a row's token states are the pieces' states laid out exactly like
its token ids (:meth:`flip_ctr.data.text.TextPieces.layout`). A deviation from the paper, so a
named switch with its own A/B (``results/flip_cpu.md``).

Masked text (MLM, field-level masking) needs no PLM pass either: a masked field's sentence is
``"<name_f> is" + [MASK] × n + "."``, which depends only on the field and the value's token
count ``n``, so those states are computed once per (field, n). The masked field's states then
carry nothing about its value: what MLM recovers must come from the tabular side (joint
reconstruction), which is the point of the objective.

The [CLS] and [SEP] positions of a row take the states of ``[CLS] [SEP]`` encoded alone (a
fixed pair: with per-field encoding no row-level token exists). Padding positions are zeros
(every consumer masks them by ``attention_mask``).
"""

from __future__ import annotations

import logging
import time

import torch

from flip_ctr.data.text import TextPieces

log = logging.getLogger(__name__)

__all__ = ["FieldTextStates", "TEXT_ENCODINGS", "per_field_encoding_problem"]

# stages.pretrain.text_encoding: the paper's whole-row encoding, or this module's.
TEXT_ENCODINGS = ("row", "per_field")


def per_field_encoding_problem(
    freeze_plm: bool, use_mlm: bool, field_level_masking: bool, use_icl: bool = False, pooling: str | None = None
) -> str | None:
    """Why ``text_encoding=per_field`` cannot run with these settings (None: it can). The states
    are precomputed once, so the PLM must be frozen, and MLM must mask whole fields (a random
    token mask would need a PLM pass per step). ICL reads the row's sentence embedding: under
    ``cls`` pooling that is the [CLS] position, which per field is one fixed state for every row
    (no row-level token exists), so ICL would align every row to the same text vector."""
    if not freeze_plm:
        return ("stages.pretrain.text_encoding=per_field needs stages.pretrain.freeze_plm=true (the PLM states are computed once); "
                "a trained PLM needs stages.pretrain.text_encoding=row")
    if use_mlm and not field_level_masking:
        return (
            "stages.pretrain.text_encoding=per_field needs field-level text masking (ablation.field_level_masking=true) "
            "or no MLM: a token-level mask would need a PLM pass per step (stages.pretrain.text_encoding=row runs one)"
        )
    if use_icl and pooling == "cls":
        return (
            "stages.pretrain.text_encoding=per_field with plm.pooling=cls: the row's [CLS] state is then the same "
            "fixed vector for every row (each field sentence is encoded alone), so ICL would have no text signal; "
            "use plm.pooling=mean, or stages.pretrain.text_encoding=row"
        )
    return None


class FieldTextStates:
    """Frozen-PLM states of every (field, value) sentence and of every masked (field, length)
    sentence, and batch assembly from them. Not an ``nn.Module``: nothing here is trained or
    saved; it is rebuilt from the PLM and the pieces whenever needed."""

    def __init__(self, pieces: TextPieces, plm: torch.nn.Module, batch_size: int = 512, dtype: torch.dtype = torch.float32):
        self.pieces = pieces
        device = next(plm.parameters()).device
        start = time.perf_counter()
        was_training = plm.training
        plm.eval()
        with torch.no_grad():
            self.value_states = [self._encode(plm, p.tokens, p.lengths, batch_size, device, dtype) for p in pieces.fields]
            self.masked_states = [self._encode_masked(plm, p, batch_size, device, dtype) for p in pieces.fields]
            special = torch.tensor([[pieces.cls_id, pieces.sep_id]], device=device)
            cls_sep = plm(special, torch.ones_like(special))[0].to(dtype)
        plm.train(was_training)
        self.cls_state, self.sep_state = cls_sep[0], cls_sep[1]
        self.hidden_size = self.cls_state.shape[-1]
        num = sum(p.tokens.shape[0] for p in pieces.fields)
        size = sum(s.numel() * s.element_size() for s in self.value_states + self.masked_states)
        log.info("per-field text states: %d sentences encoded in %.1fs (%.0f MiB)", num, time.perf_counter() - start, size / 2**20)

    def _encode(self, plm, tokens, lengths, batch_size, device, dtype) -> torch.Tensor:
        """States of ``[CLS] piece [SEP]`` for each piece row → [num_pieces, width, H] (CLS/SEP dropped)."""
        count, width = tokens.shape
        out = []
        for begin in range(0, count, batch_size):
            piece = tokens[begin : begin + batch_size]
            n = lengths[begin : begin + batch_size]
            rows = piece.shape[0]
            ids = torch.full((rows, width + 2), self.pieces.pad_id, dtype=torch.long)
            ids[:, 0] = self.pieces.cls_id
            ids[:, 1 : width + 1] = piece
            ids[torch.arange(rows), n + 1] = self.pieces.sep_id
            attention = (torch.arange(width + 2)[None, :] <= (n + 1)[:, None]).long()
            states = plm(ids.to(device), attention.to(device))[:, 1 : width + 1]
            out.append(states.masked_fill(~(torch.arange(width, device=device)[None, :, None] < n.to(device)[:, None, None]), 0.0).to(dtype))
        return torch.cat(out) if out else torch.zeros(0, width, plm.hidden_size, dtype=dtype)

    def _encode_masked(self, plm, pieces, batch_size, device, dtype) -> torch.Tensor:
        """States of ``"<name> is" + [MASK] × n + "."`` for n = 0 .. max value length → [n_max + 1, width, H]."""
        width = pieces.tokens.shape[1]
        prefix = pieces.tokens[0, : pieces.prefix_length]
        suffix_start = pieces.prefix_length + int(pieces.value_lengths[0])
        suffix = pieces.tokens[0, suffix_start : int(pieces.lengths[0])]
        n_max = int(pieces.value_lengths.max()) if len(pieces.value_lengths) else 0
        mask_id = getattr(plm, "mask_token_id")
        tokens = torch.full((n_max + 1, width), self.pieces.pad_id, dtype=torch.long)
        for n in range(n_max + 1):
            sentence = torch.cat([prefix, torch.full((n,), mask_id, dtype=torch.long), suffix])
            tokens[n, : len(sentence)] = sentence
        lengths = torch.arange(n_max + 1) + pieces.prefix_length + len(suffix)
        return self._encode(plm, tokens, lengths, batch_size, device, dtype)

    def assemble(self, value_ids: torch.Tensor, masked_fields: torch.Tensor | None = None) -> torch.Tensor:
        """Token states [B, L, H] of the rows ``value_ids`` [B, F] (text-side local indices), laid
        out like :meth:`TextPieces.assemble`'s ``input_ids``. ``masked_fields`` [B, F] bool: those
        fields take their masked sentence's states (field-level MLM masking)."""
        value_ids = value_ids.long().cpu()
        parts = []
        for f, (states, masked) in enumerate(zip(self.value_states, self.masked_states)):
            local = value_ids[:, f].to(states.device)
            piece = states[local]
            if masked_fields is not None:
                chosen = masked_fields[:, f].to(states.device)
                lengths = self.pieces.fields[f].value_lengths.to(states.device)[local]
                piece = torch.where(chosen[:, None, None], masked[lengths], piece)
            parts.append(piece)
        layout = self.pieces.layout(value_ids)
        pieces = torch.cat(parts, 1)
        batch_size = value_ids.shape[0]
        out = torch.zeros(batch_size, layout.length, self.hidden_size, dtype=pieces.dtype, device=pieces.device)
        layout.place(out, pieces)
        out[:, 0] = self.cls_state
        out[torch.arange(batch_size, device=out.device), layout.sep_positions.to(out.device)] = self.sep_state
        return out
