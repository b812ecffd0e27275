"""Streamed AUC/Logloss (flip_ctr.stages.metrics) equal the exact in-memory values.

Oracles written independently of the code under test: a Mann–Whitney rank-sum AUC with average
ranks for ties, in exact integer arithmetic (so equality is ``==``), and torchmetrics'
``binary_auroc`` (the function the CTR stage used before); Logloss against the mean of
per-row BCE over all rows at once.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flip_ctr.stages import metrics as M


def mann_whitney_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUC = U / (P·N), U from average ranks (tie-corrected), all in integers (ranks doubled)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    twice_rank = np.empty(len(scores), dtype=np.int64)
    i = 0
    while i < len(scores):  # a run of equal scores shares the average of ranks i+1 .. j
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        twice_rank[order[i : j + 1]] = (i + 1) + (j + 1)
        i = j + 1
    num_pos, num_neg = int(labels.sum()), int((~labels).sum())
    twice_u = int(twice_rank[labels].sum()) - num_pos * (num_pos + 1)
    return twice_u / (2 * num_pos * num_neg)


def tied_logits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits with heavy ties: few distinct values, saturated ones (sigmoid → exactly 0.0 / 1.0
    in float32), -0.0 against 0.0 probabilities, and labels correlated with the score."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.tensor([-200.0, -120.0, -3.0, -1.5, -0.25, 0.0, 0.25, 1.5, 3.0, 40.0, 120.0])
    logits = grid[torch.randint(len(grid), (n,), generator=g)]
    free = torch.rand(n, generator=g) < 0.3  # a share of distinct values too
    logits[free] = torch.randn(int(free.sum()), generator=g) * 2
    labels = (torch.rand(n, generator=g) < torch.sigmoid(logits / 2)).long()
    return logits, labels


def stream(logits: torch.Tensor, labels: torch.Tensor, cuts: list[int], compact_every: int = 3) -> dict:
    metric = M.StreamedBinaryMetrics(compact_every=compact_every)
    bounds = [0, *cuts, len(logits)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        metric.update(logits[a:b], labels[a:b])
    return metric.compute()


def random_cuts(n: int, k: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return sorted(int(c) for c in rng.choice(np.arange(1, n), size=k, replace=False))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streamed_auc_equals_mann_whitney_and_torchmetrics_on_ties(seed):
    from torchmetrics.functional.classification import binary_auroc

    logits, labels = tied_logits(5000, seed)
    probs = torch.sigmoid(logits)  # float32, as predictions.parquet holds them
    assert len(torch.unique(probs)) < 0.75 * len(probs)  # ties really are there
    out = stream(logits, labels, random_cuts(len(logits), 40, seed))
    assert out["auc"] == mann_whitney_auc(probs.numpy(), labels.numpy())
    # torchmetrics returns its AUC as float32 whatever the input dtype: equal to within that rounding (6e-8)
    assert out["auc"] == pytest.approx(float(binary_auroc(probs.double(), labels)), abs=1e-7)
    exact_logloss = float(F.binary_cross_entropy_with_logits(logits.double(), labels.double()))
    assert out["logloss"] == pytest.approx(exact_logloss, rel=1e-12)


def test_any_batch_split_and_compaction_gives_the_same_metrics():
    logits, labels = tied_logits(3000, 7)
    reference = stream(logits, labels, [], compact_every=1)
    for seed, (k, compact_every) in enumerate([(1, 1), (10, 2), (200, 5), (2999, 64)]):
        out = stream(logits, labels, random_cuts(len(logits), k, seed), compact_every)
        assert out["auc"] == reference["auc"]
        assert out["logloss"] == pytest.approx(reference["logloss"], rel=1e-12)
    # and row order does not matter either
    perm = torch.randperm(len(logits), generator=torch.Generator().manual_seed(3))
    assert stream(logits[perm], labels[perm], random_cuts(len(logits), 17, 9))["auc"] == reference["auc"]


def test_ties_across_batches_count_half():
    # two positives and two negatives, all at one score, in different batches: AUC exactly 0.5
    metric = M.StreamedBinaryMetrics(compact_every=2)
    for logit, label in [(0.0, 1), (0.0, 0), (0.0, 1), (0.0, 0)]:
        metric.update(torch.tensor([logit]), torch.tensor([label]))
    assert metric.compute()["auc"] == 0.5
    metric.update(torch.tensor([-1.0]), torch.tensor([0]))
    # pairs: 2 positives × 3 negatives = 6; below: 2 × 1 = 2 ordered; tied: 2 × 2 × 1/2 = 2
    assert metric.compute()["auc"] == 4 / 6


def test_negative_zero_ties_with_zero_and_nan_raises():
    keys = M.score_keys(torch.tensor([-0.0, 0.0, 1.0]))
    assert keys[0] == keys[1] != keys[2]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.score_keys(torch.tensor([0.5, float("nan")]))


def test_state_holds_distinct_scores_not_rows():
    metric = M.StreamedBinaryMetrics(compact_every=4)
    g = torch.Generator().manual_seed(0)
    grid = torch.linspace(-5, 5, 50)
    rows = 0
    for _ in range(400):
        logits = grid[torch.randint(50, (256,), generator=g)]
        metric.update(logits, torch.randint(2, (256,), generator=g))
        rows += 256
        assert metric.num_entries <= 4 * 50  # one run per pending batch, each ≤ 50 distinct
    assert rows == 102_400
    assert int(metric.count) == rows


def test_ranks_sync_like_one_process_including_a_rank_without_rows():
    """Emulates torchmetrics' DDP sync (all-gather of every state) over three ranks."""
    logits, labels = tied_logits(2000, 11)
    parts = [(logits[:1200], labels[:1200]), (logits[1200:], labels[1200:]), (logits[:0], labels[:0])]
    calls = iter(range(10**6))
    contributions = []

    def fake_gather(tensor, group=None):  # rank 0's all-gather: its tensor, then the others'
        k = next(calls)
        return [tensor, *(c[k] for c in contributions)]

    ranks = [M.StreamedBinaryMetrics(compact_every=2, dist_sync_fn=fake_gather, distributed_available_fn=lambda: True)]
    ranks += [M.StreamedBinaryMetrics(compact_every=2) for _ in parts[1:]]
    for metric, (lo, la) in zip(ranks, parts):
        for a in range(0, len(lo), 97):
            metric.update(lo[a : a + 97], la[a : a + 97])

    def local_states(metric):
        """What a rank contributes to the gather, prepared as torchmetrics prepares it."""
        out = []
        for attr in metric._reductions:
            value = getattr(metric, attr)
            if isinstance(value, list):
                value = torch.cat(value) if value else torch.tensor([], dtype=metric.dtype)
            out.append(value)
        return out

    contributions.extend(local_states(m) for m in ranks[1:])
    synced = ranks[0]
    out = synced.compute()
    probs = torch.sigmoid(logits)
    assert out["auc"] == mann_whitney_auc(probs.numpy(), labels.numpy())
    assert out["logloss"] == pytest.approx(float(F.binary_cross_entropy_with_logits(logits.double(), labels.double())), rel=1e-12)


def test_ctr_stage_reports_the_exact_metrics_of_its_predictions(tmp_path):
    """The CTR stage's test metrics and predictions.parquet agree with the oracles."""
    import lightning as L
    import polars as pl
    from torch.utils.data import DataLoader

    from flip_ctr.stages.ctr import CTRStage

    logits, labels = tied_logits(700, 5)

    class Fixed(CTRStage):
        def forward(self, batch):
            return batch["logit"] + 0 * self.w

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

    rows = [{"logit": logits[i], "labels": labels[i], "row_ids": torch.tensor(i)} for i in range(len(logits))]
    loader = DataLoader(rows, batch_size=64)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path, enable_progress_bar=False)
    trainer.test(Fixed(), dataloaders=loader, verbose=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    predictions = pl.read_parquet(tmp_path / "predictions.parquet")
    assert metrics["num_test_rows"] == 700
    assert metrics["auc"] == mann_whitney_auc(predictions["prob"].to_numpy(), predictions["label"].to_numpy())
    assert metrics["logloss"] == pytest.approx(
        float(F.binary_cross_entropy_with_logits(logits.double(), labels.double())), rel=1e-12
    )
