"""Streamed exact AUC and Logloss: the same values as the in-memory computation, from counts.

The AUC of scores against 0/1 labels is the Mann–Whitney statistic: over all (positive, negative)
pairs, 1 when the positive scores higher, 1/2 on a tie. It depends on the scores only through
their order, so for every *distinct* score value ``v`` the number of positives ``P_v`` and
negatives ``N_v`` scoring exactly ``v`` is all it needs::

    2·U = Σ_v P_v · (2·N_{<v} + N_v)        AUC = 2·U / (2·P·N)

with ``N_{<v}`` the negatives scoring strictly below ``v``. Scores are float32 click
probabilities, so "the same value" is bit equality and ties are counted, never approximated (no
thresholds, no bins). The numerator is an integer, computed in int64: the AUC is the exact
rational rounded once to float64.

:class:`StreamedBinaryMetrics` accumulates those counts batch by batch. Each batch is reduced to
its sorted distinct scores with their counts, and the accumulated runs are merged into one
whenever ``compact_every`` of them are pending, so the state holds one entry per distinct score
seen (plus the pending runs) instead of one per row: repeated scores cost nothing, and the state
never exceeds the number of float32 values in [0, 1] (about 1.07e9) whatever the split size.
Logloss is a float64 sum of per-row BCE and a row count.

Across DDP ranks the states sync as torchmetrics states do (the runs are concatenated, the sums
added), and :meth:`compute` merges them, so every rank gets the AUC of all ranks' rows.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import Metric

# float32 bits of a probability in [0, 1] as an int32: for non-negative floats the bit pattern
# orders exactly as the value does, so sorting keys sorts scores.
_FLOAT32_ONE = 0x3F800000


def score_keys(probs: torch.Tensor) -> torch.Tensor:
    """int32 sort keys of float32 probabilities (``-0.0`` → ``0.0``; NaN or outside [0, 1] raises)."""
    probs = probs.detach().reshape(-1).to(torch.float32)
    if probs.numel() and not bool(((probs >= 0) & (probs <= 1)).all()):
        raise ValueError("streamed AUC needs probabilities in [0, 1] (got NaN or a value outside)")
    probs = probs + 0.0  # -0.0 + 0.0 == +0.0: one key for zero
    return probs.view(torch.int32)


def count_by_score(keys: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorted distinct ``keys`` with the number of positive and negative labels at each."""
    keys = keys.reshape(-1)
    labels = labels.reshape(-1).long()
    unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    pos = torch.zeros(unique.numel(), dtype=torch.long, device=keys.device)
    total = torch.zeros_like(pos)
    pos.index_add_(0, inverse, labels)
    total.index_add_(0, inverse, torch.ones_like(labels))
    return unique, pos, total - pos


def merge_counts(keys: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merges concatenated runs of (key, positives, negatives): one entry per distinct key, sorted."""
    unique, inverse = torch.unique(keys.reshape(-1), sorted=True, return_inverse=True)
    merged_pos = torch.zeros(unique.numel(), dtype=torch.long, device=keys.device).index_add_(0, inverse, pos.long())
    merged_neg = torch.zeros(unique.numel(), dtype=torch.long, device=keys.device).index_add_(0, inverse, neg.long())
    return unique, merged_pos, merged_neg


def auc_from_counts(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Exact AUC from per-score positive/negative counts, ordered by ascending score.

    Undefined when the rows hold one class only: 0.0 then, as torchmetrics' AUROC returns."""
    pos = pos.detach().cpu().numpy().astype(np.int64)
    neg = neg.detach().cpu().numpy().astype(np.int64)
    num_pos, num_neg = int(pos.sum()), int(neg.sum())
    if num_pos == 0 or num_neg == 0:
        return 0.0
    below = np.cumsum(neg) - neg  # negatives strictly below each score
    twice_u = int(np.dot(pos, 2 * below + neg))  # int64: exact up to ~9.2e18 (P·N of 6e9 rows)
    return twice_u / (2 * num_pos * num_neg)


def streamed_auc(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact AUC of probabilities against 0/1 labels, computed as the streamed metric does."""
    _, pos, neg = count_by_score(score_keys(probs), labels)
    return auc_from_counts(pos, neg)


class StreamedBinaryMetrics(Metric):
    """Exact AUC and Logloss over a whole split, from per-score counts (see the module docstring).

    ``update(logits, labels)``: raw logits (the AUC is over ``sigmoid(logit)`` rounded to float32,
    the probability written to ``predictions.parquet``; the Logloss is BCE-with-logits in float64).
    ``compute()`` → ``{"auc": float, "logloss": float}``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, compact_every: int = 64, **kwargs) -> None:
        super().__init__(**kwargs)
        if compact_every < 1:
            raise ValueError(f"compact_every must be >= 1, got {compact_every}")
        self.compact_every = compact_every
        self.add_state("keys", default=[], dist_reduce_fx="cat")
        self.add_state("pos", default=[], dist_reduce_fx="cat")
        self.add_state("neg", default=[], dist_reduce_fx="cat")
        self.add_state("loss_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        # A rank without rows syncs an empty placeholder of the metric's dtype; float64 keeps
        # the int32 keys and int64 counts it is concatenated with exact (compute casts back).
        self._dtype = torch.float64

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = logits.detach().reshape(-1)
        labels = labels.detach().reshape(-1)
        keys, pos, neg = count_by_score(score_keys(torch.sigmoid(logits.float())), labels)
        self.keys.append(keys)
        self.pos.append(pos)
        self.neg.append(neg)
        if len(self.keys) >= self.compact_every:
            self._compact()
        loss = F.binary_cross_entropy_with_logits(logits.double(), labels.double(), reduction="sum")
        self.loss_sum += loss
        self.count += labels.numel()

    def _compact(self) -> None:
        keys, pos, neg = merge_counts(torch.cat(self.keys), torch.cat(self.pos), torch.cat(self.neg))
        self.keys, self.pos, self.neg = [keys], [pos], [neg]

    @property
    def num_entries(self) -> int:
        """Entries held in the state now (distinct scores plus pending runs)."""
        return sum(k.numel() for k in self.keys)

    def compute(self) -> dict[str, float]:
        if isinstance(self.keys, list):  # not synced: still the list of runs
            keys = torch.cat(self.keys) if self.keys else torch.zeros(0, dtype=torch.int32)
            pos = torch.cat(self.pos) if self.pos else torch.zeros(0, dtype=torch.long)
            neg = torch.cat(self.neg) if self.neg else torch.zeros(0, dtype=torch.long)
        else:  # synced across ranks: one concatenated tensor per state
            keys, pos, neg = self.keys, self.pos, self.neg
        _, pos, neg = merge_counts(keys.long(), pos.long(), neg.long())
        count = int(self.count)
        logloss = float(self.loss_sum) / count if count else float("nan")
        return {"auc": auc_from_counts(pos, neg), "logloss": logloss}
