"""The statistics behind `flip-ctr report`'s tables: mean ± std over seeds, and the comparison of
two groups of runs paired by seed (relative AUC improvement, mean ± std of the same-seed
differences, two-sided paired t-test).

Kept apart from the table formatting in ``report.py`` so that mutation testing
(``scripts/mutation.py report_stats``) can go through every statistical line in minutes; the
Markdown code has ten times as many mutants and no statistics.
"""

from __future__ import annotations

import math

import polars as pl


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def paired_t_test(a: list[float], b: list[float]) -> tuple[float, float]:
    """Two-sided paired t-test of ``a[i]`` against ``b[i]``; returns (t, p). p from the Student t
    distribution (scipy; nan without it). Fewer than two pairs: (nan, nan). Equal differences
    (sd 0): t = ±inf and p = 0, or (nan, nan) when they are all zero."""
    diffs = [x - y for x, y in zip(a, b)]
    n = len(diffs)
    if n < 2:
        return float("nan"), float("nan")
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    if sd == 0:
        return (math.inf if mean > 0 else -math.inf if mean < 0 else float("nan")), 0.0 if mean else float("nan")
    t = mean / (sd / math.sqrt(n))
    try:
        from scipy import stats
    except ImportError:  # scipy ships with the dev and experiments extras, not with the package
        return t, float("nan")
    return t, float(2 * stats.t.sf(abs(t), n - 1))


class Group:
    """The runs of one table cell group (dicts with seed, auc, logloss, optionally val_auc):
    their statistics, and their comparison with a baseline group paired by seed."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.auc = {r["seed"]: r["auc"] for r in rows}

    def stats(self) -> dict:
        auc_mean, auc_std = mean_std([r["auc"] for r in self.rows])
        ll_mean, ll_std = mean_std([r["logloss"] for r in self.rows])
        # runs selected on test have no validation AUC; the mean is over the runs that have one
        val = [r["val_auc"] for r in self.rows if r.get("val_auc") is not None]
        return {
            "seeds": len(self.rows),
            "auc_mean": auc_mean,
            "auc_std": auc_std,
            "logloss_mean": ll_mean,
            "logloss_std": ll_std,
            "val_auc_mean": mean_std(val)[0] if val else None,
        }

    def compare(self, base: "Group | None") -> dict:
        """Relative AUC improvement over ``base`` (means of all runs of each), and over the seeds
        both have: the paired t-test's p (None under two common seeds) and the mean ± std of the
        same-seed differences (None without a common seed). No baseline, or itself: all None."""
        if base is None or base is self:
            return {"auc_rel_impr_pct": None, "p_paired_t": None, "baseline_seeds": None, "auc_diff_mean": None, "auc_diff_std": None}
        mine, theirs = self.stats()["auc_mean"], base.stats()["auc_mean"]
        # key=str: a run without a recorded seed (None) sorts beside integer seeds
        seeds = sorted(set(self.auc) & set(base.auc), key=str)
        p = paired_t_test([self.auc[s] for s in seeds], [base.auc[s] for s in seeds])[1] if len(seeds) >= 2 else None
        # the paired differences themselves (same seed, this group minus the baseline)
        diff_mean, diff_std = mean_std([self.auc[s] - base.auc[s] for s in seeds]) if seeds else (None, None)
        return {
            "auc_rel_impr_pct": 100.0 * (mine - theirs) / theirs,
            "p_paired_t": p,
            "baseline_seeds": len(seeds),
            "auc_diff_mean": diff_mean,
            "auc_diff_std": diff_std,
        }


def seed_statistics() -> list[pl.Expr]:
    """Per group of runs (a polars aggregation): how many seeds, and mean ± std (sample std; 0 for
    one seed) of AUC and Logloss."""
    return [
        pl.len().alias("seeds"),
        pl.col("auc").mean().alias("auc_mean"),
        pl.col("auc").std().fill_null(0.0).alias("auc_std"),
        pl.col("logloss").mean().alias("logloss_mean"),
        pl.col("logloss").std().fill_null(0.0).alias("logloss_std"),
    ]
