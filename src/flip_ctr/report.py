"""`flip-ctr report DIR...`: run directories → a Markdown (and CSV) results table.

Finds every ``metrics.json`` below the given directories (single runs, pipelines, multiruns),
groups the runs by (dataset, model, stage, ablation) and reports mean ± std over seeds.
With ``--baseline LABEL`` each row also gets the relative AUC improvement over that row's
baseline and a paired t-test over the seeds both have in common.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import polars as pl

from flip_ctr.train import STRATEGY_LABELS


def collect(dirs: list[Path]) -> pl.DataFrame:
    rows = []
    for directory in dirs:
        for path in sorted(Path(directory).rglob("metrics.json")):
            m = json.loads(path.read_text())
            if "auc" not in m:
                continue
            stage = m.get("strategy") or m.get("stage")
            rows.append(
                {
                    "dataset": m.get("dataset"),
                    "model": STRATEGY_LABELS.get(stage, stage) if stage not in ("ctr", "scratch") else m.get("id_model"),
                    "id_model": m.get("id_model"),
                    "stage": stage,
                    "ablation": m.get("ablation") if stage not in ("ctr", "scratch") else "-",
                    "seed": m.get("seed"),
                    "auc": m["auc"],
                    "logloss": m["logloss"],
                    "fit_seconds": m.get("fit_seconds"),
                    "path": str(path.parent),
                }
            )
    if not rows:
        raise SystemExit(f"flip-ctr report: no metrics.json under {', '.join(map(str, dirs))}")
    return pl.DataFrame(rows)


def paired_t_test(a: list[float], b: list[float]) -> tuple[float, float]:
    """Two-sided paired t-test; returns (t, p). p from the Student t CDF (scipy if present)."""
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

        p = float(2 * stats.t.sf(abs(t), n - 1))
    except ImportError:  # pragma: no cover - scipy ships with the dev extras
        p = float("nan")
    return t, p


def summarize(frame: pl.DataFrame, baseline: str | None = None) -> pl.DataFrame:
    keys = ["dataset", "model", "ablation"]
    summary = (
        frame.group_by(keys, maintain_order=True)
        .agg(
            pl.len().alias("seeds"),
            pl.col("auc").mean().alias("auc_mean"),
            pl.col("auc").std().fill_null(0.0).alias("auc_std"),
            pl.col("logloss").mean().alias("logloss_mean"),
            pl.col("logloss").std().fill_null(0.0).alias("logloss_std"),
        )
        .sort(keys)
    )
    if baseline is None:
        return summary
    by_seed: dict[tuple, dict] = defaultdict(dict)
    for r in frame.iter_rows(named=True):
        by_seed[(r["dataset"], r["model"], r["ablation"])][r["seed"]] = r["auc"]
    improvements, pvalues = [], []
    for r in summary.iter_rows(named=True):
        base_key = next((k for k in by_seed if k[0] == r["dataset"] and k[1] == baseline), None)
        mine = by_seed[(r["dataset"], r["model"], r["ablation"])]
        if base_key is None or base_key == (r["dataset"], r["model"], r["ablation"]):
            improvements.append(None)
            pvalues.append(None)
            continue
        base = by_seed[base_key]
        seeds = sorted(set(mine) & set(base))
        base_mean = sum(base.values()) / len(base)
        improvements.append(100.0 * (r["auc_mean"] - base_mean) / base_mean)
        pvalues.append(paired_t_test([mine[s] for s in seeds], [base[s] for s in seeds])[1] if len(seeds) >= 2 else None)
    return summary.with_columns(
        pl.Series("auc_rel_impr_pct", improvements, dtype=pl.Float64), pl.Series("p_paired_t", pvalues, dtype=pl.Float64)
    )


def to_markdown(summary: pl.DataFrame) -> str:
    has_test = "p_paired_t" in summary.columns
    header = "| dataset | model | ablation | seeds | AUC | Logloss |" + (" AUC rel. impr. | paired t-test p |" if has_test else "")
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for r in summary.iter_rows(named=True):
        line = (
            f"| {r['dataset']} | {r['model']} | {r['ablation']} | {r['seeds']} "
            f"| {r['auc_mean']:.4f} ± {r['auc_std']:.4f} | {r['logloss_mean']:.4f} ± {r['logloss_std']:.4f} |"
        )
        if has_test:
            impr = "-" if r["auc_rel_impr_pct"] is None else f"{r['auc_rel_impr_pct']:+.2f}%"
            p = "-" if r["p_paired_t"] is None or math.isnan(r["p_paired_t"]) else f"{r['p_paired_t']:.3g}"
            line += f" {impr} | {p} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="flip-ctr report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run / pipeline / multirun directories")
    parser.add_argument("--baseline", help="model label to compare against (e.g. dcnv2 or 'ID model from scratch')")
    parser.add_argument("--out", type=Path, help="write the Markdown table here (and a .csv of all runs beside it)")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    frame = collect(args.dirs)
    table = to_markdown(summarize(frame, args.baseline))
    if args.title:
        table = f"### {args.title}\n\n{table}"
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
        frame.write_csv(args.out.with_suffix(".csv"))
