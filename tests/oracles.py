"""Independent oracles for the tests: metrics written here in plain numpy, differently from the
code under test (torchmetrics' binary AUROC, BCE with logits), so that a test comparing the two
checks something.

- :func:`rank_auc`: the Mann–Whitney U statistic over n_pos * n_neg, with mid-ranks for ties
  (a tie between a positive and a negative counts one half);
- :func:`logloss`: the mean binary cross-entropy of probabilities, in float64;
- :func:`check_test_outputs`: a run directory's metrics.json and predictions.parquet against the
  artifact's test split and these oracles, and not a constant predictor.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def rank_auc(labels, scores) -> float:
    """ROC AUC as the Mann–Whitney statistic: (sum of the positives' mid-ranks - n1 (n1 + 1) / 2) / (n1 n0)."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n1, n0 = int(labels.sum()), int((~labels).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError("AUC needs both classes")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    i = 0
    while i < len(scores):  # mid-rank of each run of equal scores (ranks from 1)
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def pairwise_auc(labels, scores) -> float:
    """The same AUC by counting every (positive, negative) pair: 1 if ordered, 1/2 if tied (small n only)."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    pos, neg = scores[labels][:, None], scores[~labels][None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def logloss(labels, probs, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy -[y log p + (1 - y) log (1 - p)], p clipped to [eps, 1 - eps]."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


def check_test_outputs(run_dir: Path, artifact, *, auc_tol: float = 1e-6, logloss_tol: float = 1e-5) -> dict:
    """metrics.json and predictions.parquet of ``run_dir`` (a stage's trainer.test) checked:

    - one prediction per test row of ``artifact``, in row order, with the artifact's labels;
    - the predictions vary (a constant predictor, AUC 0.5 whatever the data, fails here);
    - metrics.json's auc / logloss equal :func:`rank_auc` / :func:`logloss` of those predictions.
    Returns metrics.json."""
    import polars as pl

    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    preds = pl.read_parquet(run_dir / "predictions.parquet")
    start, stop = artifact.split_ranges["test"]
    assert preds["row_id"].to_list() == list(range(start, stop)), run_dir
    labels = preds["label"].to_numpy()
    np.testing.assert_array_equal(labels, np.asarray(artifact.labels[start:stop]))
    probs = preds["prob"].to_numpy().astype(np.float64)
    assert np.isfinite(probs).all() and ((probs > 0) & (probs < 1)).all(), run_dir
    assert np.unique(probs).size > 1 and probs.std() > 1e-6, f"{run_dir}: constant predictions {probs[:5]}"
    assert metrics["num_test_rows"] == stop - start
    assert abs(metrics["auc"] - rank_auc(labels, probs)) <= auc_tol, (metrics["auc"], rank_auc(labels, probs), run_dir)
    assert abs(metrics["logloss"] - logloss(labels, probs)) <= logloss_tol, (metrics["logloss"], logloss(labels, probs), run_dir)
    return metrics
