"""The oracles themselves (tests/oracles.py), on values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from oracles import logloss, pairwise_auc, rank_auc


def test_rank_auc_by_hand():
    # positives 0.9, 0.4; negatives 0.5, 0.1: pairs (0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1) → 3/4
    assert rank_auc([1, 0, 1, 0], [0.9, 0.5, 0.4, 0.1]) == 0.75
    assert rank_auc([1, 0], [0.3, 0.3]) == 0.5  # a tie counts one half
    assert rank_auc([1, 1, 0, 0], [0.2, 0.2, 0.2, 0.2]) == 0.5  # a constant predictor
    assert rank_auc([0, 1], [0.1, 0.2]) == 1.0 and rank_auc([1, 0], [0.1, 0.2]) == 0.0
    with pytest.raises(ValueError):
        rank_auc([1, 1], [0.1, 0.2])


def test_rank_auc_equals_pair_counting_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.integers(0, 2, 200)
        scores = rng.integers(0, 15, 200) / 15  # many ties
        assert rank_auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)


def test_logloss_by_hand():
    assert logloss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
    assert logloss([1, 0], [0.8, 0.1]) == pytest.approx(-(math.log(0.8) + math.log(0.9)) / 2)
    assert logloss([1], [0.0]) == pytest.approx(-math.log(1e-7))  # clipped, finite
