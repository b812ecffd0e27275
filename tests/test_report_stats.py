"""report_stats: mean ± std over seeds, the paired t-test and the pairing by seed, each checked
against values worked out by hand (closed forms of the Student t distribution for 1, 2 and 4
degrees of freedom), not against the code's own formulas. Written against the survivors of
`scripts/mutation.py report_stats` (results/mutation.md); tests/test_report.py checks the same
statistics through the tables."""

from __future__ import annotations

import math
import sys

import polars as pl
import pytest

from flip_ctr.report_stats import Group, mean_std, paired_t_test, seed_statistics


def two_sided_p_1dof(t: float) -> float:
    # Cauchy: CDF(t) = 1/2 + atan(t) / pi
    return 1 - 2 * math.atan(abs(t)) / math.pi


def two_sided_p_2dof(t: float) -> float:
    # CDF(t) = 1/2 + t / (2 sqrt(2 + t^2))
    return 1 - abs(t) / math.sqrt(2 + t * t)


def two_sided_p_4dof(t: float) -> float:
    # CDF(t) = 1/2 + (3/8) x (1 - y / 12), x = t / sqrt(1 + t^2/4), y = t^2 / (1 + t^2/4)
    q = 1 + t * t / 4
    return 1 - 0.75 * (abs(t) / math.sqrt(q)) * (1 - t * t / q / 12)


def runs(aucs: dict, logloss: dict | None = None, val: dict | None = None) -> list[dict]:
    return [{"seed": s, "auc": a, "logloss": (logloss or {}).get(s, 0.4), "val_auc": (val or {}).get(s)} for s, a in aucs.items()]


def test_mean_std_is_the_sample_std_and_zero_for_one_value():
    # deviations -1.5, -0.5, 0.5, 1.5: squares sum to 5, over n - 1 = 3
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, math.sqrt(5 / 3)))
    assert mean_std([1.0, 3.0]) == pytest.approx((2.0, math.sqrt(2)))
    assert mean_std([0.7]) == (0.7, 0.0)


@pytest.mark.parametrize(
    "diffs, t, p",
    [
        ([1.0, 3.0], 2.0, two_sided_p_1dof(2.0)),  # mean 2, sd sqrt 2, t = 2 / (sqrt 2 / sqrt 2)
        ([1.0, 2.0, 3.0], 2 * math.sqrt(3), two_sided_p_2dof(2 * math.sqrt(3))),  # mean 2, sd 1
        ([-1.0, -2.0, -3.0], -2 * math.sqrt(3), two_sided_p_2dof(2 * math.sqrt(3))),  # two-sided: same p
        ([1.0, 2.0, 3.0, 4.0, 5.0], 3 * math.sqrt(2), two_sided_p_4dof(3 * math.sqrt(2))),  # mean 3, sd sqrt 2.5
    ],
)
def test_paired_t_test_against_closed_forms(diffs, t, p):
    base = [0.25 * i for i in range(len(diffs))]
    got_t, got_p = paired_t_test([b + d for b, d in zip(base, diffs)], base)
    assert got_t == pytest.approx(t, rel=1e-9)
    assert got_p == pytest.approx(p, rel=1e-9)
    # the order of the arguments is the sign of t, not the p-value
    flipped_t, flipped_p = paired_t_test(base, [b + d for b, d in zip(base, diffs)])
    assert flipped_t == pytest.approx(-t, rel=1e-9) and flipped_p == pytest.approx(p, rel=1e-9)


def test_the_closed_forms_match_the_t_table():
    """The oracles above, checked against printed Student t tables (two-sided 5 % critical values
    12.7062, 4.3027 and 2.7764 for 1, 2 and 4 dof), so that a slip in one cannot carry a test."""
    assert two_sided_p_1dof(12.706205) == pytest.approx(0.05, abs=1e-6)
    assert two_sided_p_2dof(4.302653) == pytest.approx(0.05, abs=1e-6)
    assert two_sided_p_4dof(2.776445) == pytest.approx(0.05, abs=1e-6)


def test_paired_t_test_without_pairs_or_without_scipy(monkeypatch):
    for a, b in (([], []), ([0.5], [0.25])):
        t, p = paired_t_test(a, b)
        assert math.isnan(t) and math.isnan(p)
    monkeypatch.setitem(sys.modules, "scipy", None)  # `from scipy import stats` raises ImportError
    t, p = paired_t_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert t == pytest.approx(2 * math.sqrt(3)) and math.isnan(p)


def test_group_stats():
    group = Group(runs({1: 0.5, 2: 0.75, 3: 0.625}, logloss={1: 0.3, 2: 0.5, 3: 0.7}, val={1: 0.6, 3: 0.7}))
    stats = group.stats()
    assert stats["seeds"] == 3
    assert stats["auc_mean"] == pytest.approx(0.625) and stats["auc_std"] == pytest.approx(0.125)
    assert stats["logloss_mean"] == pytest.approx(0.5) and stats["logloss_std"] == pytest.approx(0.2)
    assert stats["val_auc_mean"] == pytest.approx(0.65)  # seed 2 has none: the mean of the other two
    assert Group(runs({1: 0.5, 2: 0.75})).stats()["val_auc_mean"] is None  # selected on test


def test_compare_pairs_by_seed_not_by_position():
    """Seeds 1, 2, 3 give differences +0.01, +0.01, +0.05 (t = 1.75, p = 2/9 on 2 dof); the
    baseline's runs are listed in another order, which must not matter."""
    mine = Group(runs({1: 0.80, 2: 0.70, 3: 0.81}))
    base = Group(runs({3: 0.76, 1: 0.79, 2: 0.69}))
    cmp = mine.compare(base)
    assert cmp["baseline_seeds"] == 3
    assert cmp["auc_diff_mean"] == pytest.approx(0.07 / 3)
    assert cmp["auc_diff_std"] == pytest.approx(0.04 / math.sqrt(3))  # deviations -1/75, -1/75, 2/75
    assert cmp["p_paired_t"] == pytest.approx(2 / 9, rel=1e-6)
    assert cmp["auc_rel_impr_pct"] == pytest.approx(3.125)  # 100 * (2.31 - 2.24) / 2.24
    # the other way round: the differences change sign, p does not
    back = base.compare(mine)
    assert back["auc_diff_mean"] == pytest.approx(-0.07 / 3) and back["p_paired_t"] == pytest.approx(2 / 9, rel=1e-6)
    assert back["auc_rel_impr_pct"] == pytest.approx(-700 / 231)  # 100 * (2.24 - 2.31) / 2.31


def test_compare_with_two_one_or_no_common_seeds():
    base = Group(runs({1: 0.70, 2: 0.72, 3: 0.59}))
    two = Group(runs({1: 0.71, 2: 0.75, 4: 0.99})).compare(base)  # common: 1, 2; differences 0.01, 0.03
    assert two["baseline_seeds"] == 2
    assert two["auc_diff_mean"] == pytest.approx(0.02) and two["auc_diff_std"] == pytest.approx(0.01 * math.sqrt(2))
    assert two["p_paired_t"] == pytest.approx(two_sided_p_1dof(2.0), rel=1e-6)  # t = 0.02 / (0.01 sqrt 2 / sqrt 2)
    one = Group(runs({2: 0.75, 5: 0.80})).compare(base)
    assert one["baseline_seeds"] == 1 and one["p_paired_t"] is None
    assert one["auc_diff_mean"] == pytest.approx(0.03) and one["auc_diff_std"] == 0.0
    none = Group(runs({7: 0.80, 8: 0.90})).compare(base)
    assert none["baseline_seeds"] == 0 and none["p_paired_t"] is None
    assert none["auc_diff_mean"] is None and none["auc_diff_std"] is None
    # the relative improvement compares the means of all runs, common seeds or not: 0.85 against 0.67
    assert none["auc_rel_impr_pct"] == pytest.approx(100 * 0.18 / 0.67)


def test_compare_with_no_baseline_or_itself_is_empty():
    group = Group(runs({1: 0.80, 2: 0.70}))
    empty = {"auc_rel_impr_pct": None, "p_paired_t": None, "baseline_seeds": None, "auc_diff_mean": None, "auc_diff_std": None}
    assert group.compare(None) == empty
    assert group.compare(group) == empty
    # an equal group that is not the same object is compared: 0 % and no difference
    same = group.compare(Group(runs({1: 0.80, 2: 0.70})))
    assert same["auc_rel_impr_pct"] == 0.0 and same["baseline_seeds"] == 2 and same["auc_diff_std"] == 0.0


def test_compare_pairs_a_run_without_a_seed_with_the_baseline_run_without_one():
    """Older metrics.json files have no seed: None pairs with None, beside the integer seeds."""
    cmp = Group(runs({None: 0.71, 1: 0.75})).compare(Group(runs({None: 0.70, 1: 0.72})))
    assert cmp["baseline_seeds"] == 2
    assert cmp["auc_diff_mean"] == pytest.approx(0.02)
    assert cmp["p_paired_t"] == pytest.approx(two_sided_p_1dof(2.0), rel=1e-6)


def test_seed_statistics_aggregation():
    frame = pl.DataFrame({"model": ["a", "a", "a", "b"], "auc": [0.5, 0.75, 0.625, 0.9], "logloss": [0.3, 0.5, 0.7, 0.2]})
    out = frame.group_by("model").agg(*seed_statistics()).sort("model")
    assert out.columns == ["model", "seeds", "auc_mean", "auc_std", "logloss_mean", "logloss_std"]
    a, b = out.row(0, named=True), out.row(1, named=True)
    assert (a["seeds"], b["seeds"]) == (3, 1)
    assert a["auc_mean"] == pytest.approx(0.625) and a["auc_std"] == pytest.approx(0.125)
    assert a["logloss_mean"] == pytest.approx(0.5) and a["logloss_std"] == pytest.approx(0.2)
    assert (b["auc_mean"], b["auc_std"], b["logloss_mean"], b["logloss_std"]) == (0.9, 0.0, 0.2, 0.0)  # one seed: std 0
