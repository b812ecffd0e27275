"""Field-level data masking for FLIP's modality alignment pretraining (paper §IV-C1).

All functions are pure: they read the batch tensors, a ratio and a ``torch.Generator`` and
return new tensors. Randomness comes only from the generator, so a caller that keeps one
generator per dataloader/trainer gets a fresh mask every step, while a test can reseed it
and get the same mask back.

Rounding rule (used by field- and token-level masking alike): a ratio ``r`` of ``n`` items
masks ``max(1, floor(r * n + 0.5))`` items (round half *up*, never zero, never more than
``n``). The paper masks "a certain ratio" of the fields; with ML-1M's 8 fields this gives
1 field for r = 0.15, 2 for 0.3 and 5 for 0.6. Python's ``round`` (banker's rounding) is
deliberately not used: it would map 0.5 → 0 and 2.5 → 2.

Sampling uses independent uniform scores per (sample, item) and keeps the ``k`` smallest:
that is a uniformly random ``k``-subset, i.e. sampling without replacement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "num_masked",
    "choose_masked_fields",
    "field_level_text_mask",
    "mask_text",
    "token_level_text_mask",
    "mask_tabular",
    "MaskedBatch",
    "mask_batch",
]


def _check_ratio(ratio: float) -> float:
    ratio = float(ratio)
    if not (0.0 < ratio <= 1.0) or math.isnan(ratio):
        raise ValueError(f"mask ratio must be in (0, 1], got {ratio}")
    return ratio


def num_masked(num_items: int, ratio: float) -> int:
    """Number of items masked out of ``num_items`` at ``ratio``: ``max(1, floor(ratio*n + 0.5))``.

    Returns 0 only when ``num_items`` is 0.
    """
    ratio = _check_ratio(ratio)
    if num_items <= 0:
        return 0
    return min(num_items, max(1, int(math.floor(ratio * num_items + 0.5))))


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | None) -> torch.Tensor:
    """Uniform [0, 1) scores drawn on the generator's device, then moved to ``device``."""
    gen_device = generator.device if generator is not None else (device or torch.device("cpu"))
    scores = torch.rand(shape, generator=generator, device=gen_device)
    return scores if device is None else scores.to(device)


def choose_masked_fields(
    batch_size: int,
    num_fields: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Pick the fields to mask, independently per sample.

    Returns a BoolTensor ``[batch_size, num_fields]`` with exactly ``num_masked(num_fields,
    ratio)`` True entries per row, the subset chosen uniformly without replacement. The
    tensor lives on ``device`` (default: the generator's device).
    """
    if num_fields <= 0:
        raise ValueError(f"num_fields must be positive, got {num_fields}")
    k = num_masked(num_fields, ratio)
    device = torch.device(device) if device is not None else None
    scores = _uniform((batch_size, num_fields), generator, device)
    chosen = scores.topk(k, dim=1, largest=False).indices
    mask = torch.zeros(batch_size, num_fields, dtype=torch.bool, device=scores.device)
    return mask.scatter_(1, chosen, True)


def field_level_text_mask(
    token_field_ids: torch.Tensor, value_token_mask: torch.Tensor, masked_fields: torch.Tensor
) -> torch.Tensor:
    """Tokens to replace by [MASK]: exactly the VALUE tokens of the chosen fields.

    ``token_field_ids`` [B, L] (field index per token, -1 for [CLS]/[SEP]/padding),
    ``value_token_mask`` [B, L] bool (True on value-span tokens), ``masked_fields`` [B, F]
    bool. Template words ("<field name> is", "."), special tokens and padding are never
    selected. A chosen field whose value tokenizes to nothing contributes no token.
    """
    if token_field_ids.shape != value_token_mask.shape:
        raise ValueError(f"token_field_ids {tuple(token_field_ids.shape)} and value_token_mask {tuple(value_token_mask.shape)} differ")
    if masked_fields.shape[0] != token_field_ids.shape[0]:
        raise ValueError("masked_fields and token_field_ids have different batch sizes")
    in_field = token_field_ids >= 0
    chosen = masked_fields.to(torch.bool).gather(1, token_field_ids.clamp(min=0))
    return chosen & in_field & value_token_mask.to(torch.bool)


def mask_text(input_ids: torch.Tensor, text_mask: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    """Every selected token becomes [MASK] (no BERT 80/10/10 replacement: FLIP masks whole spans)."""
    return input_ids.masked_fill(text_mask.to(torch.bool), int(mask_token_id))


def token_level_text_mask(
    attention_mask: torch.Tensor,
    special_tokens_mask_or_token_field_ids: torch.Tensor,
    ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Ablation "w/o field-level masking": a random ratio of the non-special tokens, ignoring fields.

    The second argument is either a bool special-tokens mask (True = [CLS]/[SEP]/padding…) or
    the integer ``token_field_ids`` (where -1 marks special tokens and padding). Positions
    with ``attention_mask == 0`` are never chosen. Each sample masks exactly
    ``num_masked(n_i, ratio)`` of its ``n_i`` candidate tokens (the same rounding rule as for
    fields), chosen uniformly without replacement; template words are candidates too.
    """
    other = special_tokens_mask_or_token_field_ids
    if other.shape != attention_mask.shape:
        raise ValueError(f"shape mismatch: attention_mask {tuple(attention_mask.shape)} vs {tuple(other.shape)}")
    special = other.to(torch.bool) if other.dtype == torch.bool else other < 0
    candidates = attention_mask.to(torch.bool) & ~special
    _check_ratio(ratio)
    counts = candidates.sum(dim=1)
    k = torch.floor(counts.to(torch.float64) * float(ratio) + 0.5).to(torch.long).clamp(min=1)
    k = torch.minimum(k, counts)
    scores = _uniform(tuple(attention_mask.shape), generator, attention_mask.device)
    scores = scores.masked_fill(~candidates, 2.0)  # non-candidates rank last
    order = scores.argsort(dim=1)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return (ranks < k.unsqueeze(1)) & candidates


def mask_tabular(feature_ids: torch.Tensor, masked_fields: torch.Tensor, mask_feature_id: int) -> torch.Tensor:
    """Replace the chosen fields' features by the single shared ``<MASK>`` feature id."""
    if feature_ids.shape != masked_fields.shape:
        raise ValueError(f"feature_ids {tuple(feature_ids.shape)} and masked_fields {tuple(masked_fields.shape)} differ")
    return feature_ids.masked_fill(masked_fields.to(torch.bool), int(mask_feature_id))


@dataclass
class MaskedBatch:
    """Both corrupted views of a batch plus the index sets the losses need."""

    masked_input_ids: torch.Tensor  # [B, L]
    text_mask: torch.Tensor  # [B, L] bool: positions replaced by [MASK] (I^text)
    text_masked_fields: torch.Tensor | None  # [B, F] bool, None for token-level masking
    masked_feature_ids: torch.Tensor  # [B, F]
    tab_masked_fields: torch.Tensor  # [B, F] bool (I^tab)


def mask_batch(
    batch: dict[str, torch.Tensor],
    *,
    text_ratio: float,
    tab_ratio: float,
    mask_token_id: int,
    mask_feature_id: int,
    generator: torch.Generator | None = None,
    token_level: bool = False,
) -> MaskedBatch:
    """Mask both modalities of a collated batch independently (paper: the masked fields need
    not coincide across modalities). ``token_level=True`` is the "w/o field-level masking"
    ablation for the text side; the tabular side is always field-level."""
    feature_ids = batch["feature_ids"]
    bsz, num_fields = feature_ids.shape
    if token_level:
        text_fields = None
        text_mask = token_level_text_mask(batch["attention_mask"], batch["token_field_ids"], text_ratio, generator)
    else:
        text_fields = choose_masked_fields(bsz, num_fields, text_ratio, generator, device=feature_ids.device)
        text_mask = field_level_text_mask(batch["token_field_ids"], batch["value_token_mask"], text_fields)
    tab_fields = choose_masked_fields(bsz, num_fields, tab_ratio, generator, device=feature_ids.device)
    return MaskedBatch(
        masked_input_ids=mask_text(batch["input_ids"], text_mask, mask_token_id),
        text_mask=text_mask,
        text_masked_fields=text_fields,
        masked_feature_ids=mask_tabular(feature_ids, tab_fields, mask_feature_id),
        tab_masked_fields=tab_fields,
    )
