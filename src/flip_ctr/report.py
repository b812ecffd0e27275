"""`flip-ctr report DIR...`: run directories → Markdown/CSV results tables and sweep plots.

Finds every ``metrics.json`` below the given directories (single runs, pipelines, Hydra
multiruns; the ``config.yaml`` beside it supplies the hyperparameters) and reports mean ± std
over seeds. Tables (``--table a,b,...``):

- ``summary`` (default): one row per (dataset, model, ablation) — the table `flip-ctr report`
  always printed;
- ``overall``     paper Table II: rows = models, a column group (AUC, Logloss, Rel.Impr, p)
  per dataset;
- ``backbones``   paper Tables III/IV: rows = (ID model, finetuning strategy), N/A = the ID
  model from scratch, compared with that backbone from scratch;
- ``plms``        paper Tables V/VI: the ID model from scratch, then rows = (PLM, strategy),
  compared with the ID model from scratch;
- ``ablations``   paper Table VII: rows = (strategy, variant), a column group per dataset,
  compared with the full model (``ablation=full``) of the same strategy;
- ``mask_ratio`` / ``temperature`` / ``lr``  paper Figs. 6–7 and the finetuning-lr grid: AUC per
  value of r_text / r_tab, τ or the stage's learning rate, compared with the paper's default
  (0.15, 0.7) or, for lr, the value with the best validation AUC; ``--plots DIR`` draws them (PNG with matplotlib, the
  plotted points as CSV always).

Comparisons: "Rel.Impr" is the relative AUC change of the row against its baseline (%), "p" a
two-sided paired t-test over the seeds both have, and ``*`` marks a row better than its
baseline with p < ``--alpha``. ``--baseline LABEL`` replaces the table's default baseline by
the rows whose model, strategy, strategy label or ablation is LABEL (``dcnv2``, ``scratch``,
``"ID model from scratch"``, ``FLIP_ID``, ``full``, ...), preferring one with the same ID model.

Identical results (same dataset, model, settings, seed and metrics — e.g. the scratch stage of
pipelines that differ only in PLM or alignment settings) count once.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections import defaultdict
from pathlib import Path

import polars as pl

# the statistics live in report_stats; paired_t_test is imported from here by scripts/write_flip_ab_results.py
from flip_ctr.report_stats import Group, paired_t_test, seed_statistics  # noqa: F401
from flip_ctr.train import STRATEGY_LABELS

log = logging.getLogger(__name__)

SCRATCH_STAGES = ("ctr", "scratch")
ABLATION_LABELS = {
    "full": "FLIP (all objectives)",
    "no_mlm": "w/o MLM",
    "no_mtm": "w/o MTM",
    "no_icl": "w/o ICL",
    "no_mlm_mtm": "w/o MLM&MTM",
    "no_pretrain": "w/o MLM&MTM&ICL",
    "token_masking": "w/o Field-level Masking",
    "no_joint_reconstruction": "w/o Joint Reconstruction",
}
STRATEGY_ORDER = ["scratch", "ctr", "finetune_id", "finetune_plm", "finetune_joint"]
# hyperparameter studies: column → (title, paper default used as the baseline; None: best value)
SWEEPS = {
    "mask_ratio": {
        "text_mask_ratio": ("r_text (text mask ratio)", 0.15),
        "tab_mask_ratio": ("r_tab (tabular mask ratio)", 0.15),
    },
    "temperature": {"temperature": ("temperature τ", 0.7)},
    "lr": {"lr": ("finetuning learning rate", None)},
}
TABLES = ("summary", "overall", "backbones", "plms", "ablations", *SWEEPS)
HPARAM_COLUMNS = ("text_mask_ratio", "tab_mask_ratio", "temperature", "lr")
HOLDOUT_LABEL = "holdout (fit on train minus validation, selected on validation)"


# ----------------------------------------------------------------------------- collecting runs
def _stage_config(path: Path, stage: str | None, strategy: str | None) -> dict:
    """Hyperparameters of a run from the resolved config.yaml beside its metrics.json."""
    cfg_path = path.parent / "config.yaml"
    if not cfg_path.is_file():
        return {}
    import yaml

    try:
        cfg = yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError:
        return {}
    ablation = cfg.get("ablation") or {}
    stage_cfg = cfg.get("stage") or {}
    stages = cfg.get("stages") or {}
    if strategy in stages:
        stage_cfg = stages[strategy]
    elif stage and not stage_cfg:
        stage_cfg = next((s for s in stages.values() if isinstance(s, dict) and s.get("name") == stage), {})
    lr = next((stage_cfg.get(k) for k in ("lr", "lr_id", "lr_plm") if stage_cfg.get(k) is not None), None)
    return {
        "text_mask_ratio": ablation.get("text_mask_ratio"),
        "tab_mask_ratio": ablation.get("tab_mask_ratio"),
        "temperature": ablation.get("temperature"),
        "lr": None if lr is None else float(lr),
    }


def collect(dirs: list[Path]) -> pl.DataFrame:
    rows = []
    for directory in dirs:
        for path in sorted(Path(directory).rglob("metrics.json")):
            try:
                m = json.loads(path.read_text())
            except json.JSONDecodeError:
                log.warning("skipping unreadable %s", path)
                continue
            if "auc" not in m:
                continue
            stage = m.get("strategy") or m.get("stage")
            strategy = m.get("strategy") or (path.parent.name if path.parent.name in STRATEGY_LABELS else stage)
            scratch = stage in SCRATCH_STAGES
            rows.append(
                {
                    "dataset": m.get("dataset"),
                    "model": (m.get("id_variant") or m.get("id_model")) if scratch else STRATEGY_LABELS.get(stage, stage),
                    # runs from before protocols were recorded all used the holdout protocol
                    "protocol": m.get("protocol") or HOLDOUT_LABEL,
                    "recipe": m.get("id_recipe") or "ours",
                    "id_model": m.get("id_model"),
                    "stage": stage,
                    "ablation": "-" if scratch else m.get("ablation"),
                    "seed": m.get("seed"),
                    "auc": m["auc"],
                    "logloss": m["logloss"],
                    "fit_seconds": m.get("fit_seconds"),
                    "path": str(path.parent),
                    "val_auc": m.get("best_val_auc"),
                    "strategy": "scratch" if scratch else strategy,
                    "plm": None if scratch else m.get("plm"),
                    **{k: None for k in HPARAM_COLUMNS},
                    **{k: v for k, v in _stage_config(path, m.get("stage"), strategy).items() if not scratch or k == "lr"},
                }
            )
    if not rows:
        raise SystemExit(f"flip-ctr report: no metrics.json under {', '.join(map(str, dirs))}")
    schema = {k: pl.Float64 for k in ("auc", "logloss", "fit_seconds", "val_auc", *HPARAM_COLUMNS)}
    frame = pl.DataFrame(rows, schema_overrides=schema, infer_schema_length=None).with_row_index("_row")
    # The same configuration, seed and metrics found twice is one run counted twice: the scratch
    # stage of pipelines that differ only in PLM/alignment settings, or the default point of a
    # mask-ratio grid and of a τ sweep.
    dup_keys = ["dataset", "strategy", "id_model", "plm", "ablation", "protocol", "recipe", "seed", *HPARAM_COLUMNS, "auc", "logloss"]
    return frame.unique(subset=dup_keys, keep="first").sort("_row").drop("_row")


def failed_jobs(dirs: list[Path]) -> list[str]:
    """Lines of the failures.tsv files `flip-ctr` multiruns leave for failed jobs."""
    files = [f for d in dirs for f in sorted(Path(d).rglob("failures.tsv"))]
    return [line for f in files for line in f.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- grouping
def _groups(frame: pl.DataFrame, keys: list[str]) -> dict[tuple, Group]:
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for r in frame.iter_rows(named=True):
        grouped[tuple(r[k] for k in keys)].append(r)
    return {k: Group(v) for k, v in grouped.items()}


def _matches(row: dict, label: str) -> bool:
    strategy = row.get("strategy")
    names = {row.get("model"), strategy, row.get("stage"), STRATEGY_LABELS.get(strategy or ""), row.get("ablation")}
    if strategy == "scratch":
        names |= {"N/A", STRATEGY_LABELS.get("scratch")}
    return label in {str(n) for n in names if n is not None}


def _find_baseline(
    groups: dict[tuple, Group], keys: list[str], row: dict, label: str, same: tuple[str, ...], required: tuple[str, ...] = ()
) -> Group | None:
    """The group whose runs match ``label``, on the row's dataset and with equal ``required``
    fields; prefers equal ``same`` fields."""
    candidates = [
        g for g in groups.values()
        if g.rows[0]["dataset"] == row["dataset"] and _matches(g.rows[0], label)
        and all(g.rows[0].get(f) == row.get(f) for f in required)
    ]
    for field in same:
        narrowed = [g for g in candidates if g.rows[0].get(field) == row.get(field)]
        if narrowed:
            candidates = narrowed
    return candidates[0] if candidates else None


# ----------------------------------------------------------------------------- the default table
def summarize(frame: pl.DataFrame, baseline: str | None = None) -> pl.DataFrame:
    keys = ["dataset", "model", "recipe", "ablation", "protocol"]
    summary = (
        frame.group_by(keys, maintain_order=True)
        .agg(*seed_statistics())
        .sort(keys)
    )
    if baseline is None:
        return summary
    groups = _groups(frame, keys)
    columns: dict[str, list] = defaultdict(list)
    for r in summary.iter_rows(named=True):
        mine = groups[tuple(r[k] for k in keys)]
        # never compare across protocols: a test-selected number is not comparable to an honest one
        base = _find_baseline(groups, keys, mine.rows[0], baseline, ("protocol", "id_model"), required=("protocol",))
        cmp = mine.compare(base)
        for key in ("auc_rel_impr_pct", "p_paired_t", "auc_diff_mean", "auc_diff_std"):
            columns[key].append(cmp[key])
        columns["baseline_seeds"].append(cmp["baseline_seeds"])
    return summary.with_columns(
        *(pl.Series(key, columns[key], dtype=pl.Float64) for key in ("auc_rel_impr_pct", "p_paired_t", "auc_diff_mean", "auc_diff_std")),
        pl.Series("baseline_seeds", columns["baseline_seeds"], dtype=pl.Int64),
    )


def to_markdown(summary: pl.DataFrame) -> str:
    has_test = "p_paired_t" in summary.columns
    header = "| dataset | model | ablation | seeds | AUC | Logloss |"
    header += " AUC rel. impr. | paired ΔAUC (mean ± std, seeds) | paired t-test p |" if has_test else ""
    header += " ID recipe | protocol |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for r in summary.iter_rows(named=True):
        line = (
            f"| {r['dataset']} | {r['model']} | {r['ablation']} | {r['seeds']} "
            f"| {r['auc_mean']:.4f} ± {r['auc_std']:.4f} | {r['logloss_mean']:.4f} ± {r['logloss_std']:.4f} |"
        )
        if has_test:
            impr = "-" if r["auc_rel_impr_pct"] is None else f"{r['auc_rel_impr_pct']:+.2f}%"
            diff = "-" if r["auc_diff_mean"] is None else f"{r['auc_diff_mean']:+.4f} ± {r['auc_diff_std']:.4f} ({r['baseline_seeds']})"
            p = "-" if r["p_paired_t"] is None or math.isnan(r["p_paired_t"]) else f"{r['p_paired_t']:.3g}"
            line += f" {impr} | {diff} | {p} |"
        lines.append(line + f" {r['recipe']} | {r['protocol']} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- paper-shaped tables
def _strategy_label(strategy: str | None) -> str:
    return "N/A" if strategy in SCRATCH_STAGES else STRATEGY_LABELS.get(strategy or "", strategy or "-")


def _strategy_rank(strategy: str | None) -> int:
    return STRATEGY_ORDER.index(strategy) if strategy in STRATEGY_ORDER else len(STRATEGY_ORDER)


def _entry(group: Group, base: Group | None, order: tuple, **labels) -> dict:
    """One table row for one dataset: its labels, statistics and comparison with ``base``."""
    return {"dataset": group.rows[0]["dataset"], **labels, "_order": order, **group.stats(), **group.compare(base)}


def _sort_key(entry: dict) -> tuple:
    return tuple(x if isinstance(x, (int, float)) else str(x) for x in entry["_order"])


def _table_rows(frame: pl.DataFrame, name: str, baseline: str | None) -> tuple[list[str], list[dict]]:
    """(row-label columns, one dict per row and dataset: labels + stats + comparison)."""
    rows: list[dict] = []
    if name == "overall":
        keys, labels = ["dataset", "model", "ablation"], ["model"]
        several_ablations = len(set(frame["ablation"].to_list()) - {"-"}) > 1
        groups = _groups(frame, keys)
        for g in groups.values():
            r0 = g.rows[0]
            model = f"{r0['model']} ({r0['ablation']})" if several_ablations and r0["ablation"] != "-" else r0["model"]
            base = _find_baseline(groups, keys, r0, baseline, ("id_model",)) if baseline else None
            order = (r0["strategy"] != "scratch", _strategy_rank(r0["strategy"]), model)
            rows.append(_entry(g, base, order, model=model))
    elif name == "backbones":
        keys, labels = ["dataset", "id_model", "strategy", "ablation"], ["dataset", "ID model", "finetuning strategy"]
        groups = _groups(frame, keys)
        for g in groups.values():
            r0 = g.rows[0]
            base = _find_baseline(groups, keys, r0, baseline or "scratch", ("id_model",))
            strategy = _strategy_label(r0["strategy"]) + ("" if r0["ablation"] in ("-", "full") else f" ({r0['ablation']})")
            order = (r0["dataset"], r0["id_model"], _strategy_rank(r0["strategy"]), strategy)
            rows.append(_entry(g, base, order, **{"ID model": r0["id_model"], "finetuning strategy": strategy}))
    elif name == "plms":
        keys, labels = ["dataset", "id_model", "plm", "strategy", "ablation"], ["dataset", "PLM", "finetuning strategy"]
        groups = _groups(frame, keys)
        for g in groups.values():
            r0 = g.rows[0]
            base = _find_baseline(groups, keys, r0, baseline or "scratch", ("id_model",))
            scratch = r0["strategy"] == "scratch"
            strategy = "(from scratch)" if scratch else _strategy_label(r0["strategy"])
            order = (r0["dataset"], not scratch, str(r0["plm"]), _strategy_rank(r0["strategy"]))
            plm = r0["id_model"] if scratch else r0["plm"]
            rows.append(_entry(g, base, order, **{"PLM": plm, "finetuning strategy": strategy}))
    elif name == "ablations":
        keys, labels = ["dataset", "strategy", "ablation"], ["strategy", "variant"]
        groups = _groups(frame.filter(pl.col("strategy") != "scratch"), keys)
        known = list(ABLATION_LABELS)
        for g in groups.values():
            r0 = g.rows[0]
            base = _find_baseline(groups, keys, r0, baseline or "full", ("strategy",))
            rank = known.index(r0["ablation"]) if r0["ablation"] in known else len(known)
            order = (_strategy_rank(r0["strategy"]), rank, str(r0["ablation"]))
            variant = ABLATION_LABELS.get(r0["ablation"], r0["ablation"])
            rows.append(_entry(g, base, order, strategy=_strategy_label(r0["strategy"]), variant=variant))
    elif name in SWEEPS:
        labels = ["dataset", "model", "parameter", "value"]
        for index, (param, (_title, default)) in enumerate(SWEEPS[name].items()):
            points = sweep_points(frame, param)
            if points.is_empty():
                continue
            varied = points.select("dataset", "model").unique()
            studied = _sweep_slice(frame, param).join(varied, on=["dataset", "model"], how="semi")
            groups = _groups(studied, ["dataset", "model", param])
            for g in groups.values():
                r0 = g.rows[0]
                same = [h for k, h in groups.items() if k[:2] == (r0["dataset"], r0["model"])]
                if default is not None:  # the paper's default value is the reference
                    base = next((h for h in same if math.isclose(h.rows[0][param], default)), None)
                else:  # the value with the best validation AUC (test AUC without one) is the reference
                    base = max(same, key=_selection_score)
                order = (r0["dataset"], _strategy_rank(r0["strategy"]), r0["model"], index, r0[param])
                rows.append(_entry(g, base, order, model=r0["model"], parameter=param, value=r0[param]))
    else:
        raise ValueError(f"unknown table {name!r}; tables: {', '.join(TABLES)}")
    rows.sort(key=_sort_key)
    return labels, rows


PAPER_DEFAULTS = {"text_mask_ratio": 0.15, "tab_mask_ratio": 0.15, "temperature": 0.7}


def _mode(values: list) -> object:
    """Most common value; ties go to the paper default, then to the smallest."""
    counts: dict = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    top = max(counts.values())
    tied = sorted(v for v, c in counts.items() if c == top)
    return next((v for v in tied if any(v == d for d in PAPER_DEFAULTS.values())), tied[0])


def _selection_score(group: Group) -> float:
    stats = group.stats()
    return stats["val_auc_mean"] if stats["val_auc_mean"] is not None else stats["auc_mean"]


def _sweep_slice(frame: pl.DataFrame, param: str) -> pl.DataFrame:
    """Runs of a one-parameter study of ``param``: per (dataset, model), every other
    hyperparameter at its most common value (a 2-D r_text × r_tab grid gives two 1-D slices; a
    τ sweep next to a mask-ratio sweep does not leak into it). Runs without ``param`` (the ID
    model from scratch has no mask ratio or τ) are left out."""
    sub = frame.filter(pl.col(param).is_not_null())
    parts = []
    for part in sub.partition_by(["dataset", "model"], maintain_order=True) if not sub.is_empty() else []:
        for other in HPARAM_COLUMNS:
            values = part[other].drop_nulls().to_list()
            if other != param and len(set(values)) > 1:
                part = part.filter(pl.col(other) == _mode(values))
        parts.append(part)
    return pl.concat(parts) if parts else sub


def sweep_points(frame: pl.DataFrame, param: str) -> pl.DataFrame:
    """Mean ± std AUC/Logloss per (dataset, model, value of ``param``): the points of a Fig. 6/7
    curve. Empty unless ``param`` takes ≥ 2 values for some (dataset, model)."""
    sub = _sweep_slice(frame, param)
    if sub.is_empty():
        return sub
    points = (
        sub.group_by(["dataset", "model", param])
        .agg(*seed_statistics())
        .sort(["dataset", "model", param])
    )
    varied = points.group_by(["dataset", "model"]).agg(pl.col(param).n_unique().alias("n")).filter(pl.col("n") >= 2)
    return points.join(varied.select("dataset", "model"), on=["dataset", "model"], how="semi")


def build_table(frame: pl.DataFrame, name: str, baseline: str | None = None, alpha: float = 0.05) -> tuple[pl.DataFrame, str]:
    """A paper-shaped table: (long-format frame, one row per row label and dataset; Markdown).
    Each protocol gets its own rows (first column), compared only with baselines of the same protocol."""
    labels, rows = [], []
    for part in frame.partition_by("protocol", maintain_order=True):
        labels, part_rows = _table_rows(part, name, baseline)
        rows += [{**r, "protocol": part["protocol"][0]} for r in part_rows]
    for r in rows:
        r.pop("_order")
        p = r["p_paired_t"]
        r["significant"] = bool(p is not None and not math.isnan(p) and p < alpha and (r["auc_rel_impr_pct"] or 0) > 0)
    long = pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()
    return long, _markdown(labels, rows, wide=name in ("overall", "ablations"), with_val=name in SWEEPS)


def _cells(r: dict, with_val: bool = False) -> list[str]:
    star = "*" if r["significant"] else ""
    impr = "-" if r["auc_rel_impr_pct"] is None else f"{r['auc_rel_impr_pct']:+.2f}%"
    p = r["p_paired_t"]
    p = "-" if p is None or math.isnan(p) else f"{p:.3g}"
    auc = f"{r['auc_mean']:.4f} ± {r['auc_std']:.4f}{star}"
    cells = [auc, f"{r['logloss_mean']:.4f} ± {r['logloss_std']:.4f}", impr, p, str(r["seeds"])]
    if with_val:
        cells.append("-" if r["val_auc_mean"] is None else f"{r['val_auc_mean']:.4f}")
    return cells


def _markdown(labels: list[str], rows: list[dict], wide: bool, with_val: bool = False) -> str:
    if not rows:
        return "(no runs for this table)"
    metrics = ["AUC", "Logloss", "Rel.Impr", "p", "seeds", *(["val AUC"] if with_val else [])]
    if wide:  # a column group per dataset, as in the paper's Tables II and VII
        datasets = list(dict.fromkeys(r["dataset"] for r in rows))
        by_label: dict[tuple, dict[str, dict]] = {}
        for r in rows:
            by_label.setdefault((*(r[c] for c in labels), r["protocol"]), {})[r["dataset"]] = r
        header = [*labels, *[f"{d} {m}" for d in datasets for m in metrics], "protocol"]
        body = [[*map(str, key[:-1]), *[c for d in datasets for c in (_cells(cells[d]) if d in cells else ["-"] * len(metrics))], key[-1]]
                for key, cells in by_label.items()]
    else:
        header = [*labels, *metrics, "protocol"]
        body = [[*(str(r[c]) for c in labels), *_cells(r, with_val), r["protocol"]] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots
def plot_sweeps(frame: pl.DataFrame, out_dir: Path, names: tuple[str, ...] = tuple(SWEEPS)) -> list[Path]:
    """Figs. 6–7: AUC (mean ± std over seeds) against each swept value, one panel per dataset and
    parameter, one line per model. Writes ``<name>.csv`` (the points) and, with matplotlib,
    ``<name>.png``; returns the files written. Studies without ≥ 2 values are skipped."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    for name in names:
        panels = []
        for param, (title, _default) in SWEEPS[name].items():
            points = sweep_points(frame, param)
            if not points.is_empty():
                panels.append((param, title, points))
        if not panels:
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        csv = out_dir / f"{name}.csv"
        pl.concat([p.rename({param: "value"}).with_columns(pl.lit(param).alias("parameter")) for param, _, p in panels],
                  how="diagonal_relaxed").write_csv(csv)
        written.append(csv)
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            log.info("matplotlib not installed: %s written, no plot", csv)
            continue
        cells = [(param, title, dataset, points.filter(pl.col("dataset") == dataset))
                 for param, title, points in panels for dataset in points["dataset"].unique(maintain_order=True)]
        fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 3.4), squeeze=False)
        for ax, (param, title, dataset, points) in zip(axes[0], cells):
            for model in points["model"].unique(maintain_order=True):
                line = points.filter(pl.col("model") == model).sort(param)
                ax.errorbar(line[param].to_list(), line["auc_mean"].to_list(), yerr=line["auc_std"].to_list(),
                            marker="o", capsize=3, label=model)
            if param == "lr":
                ax.set_xscale("log")
            ax.set_xlabel(title)
            ax.set_ylabel("test AUC")
            ax.set_title(dataset)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        png = out_dir / f"{name}.png"
        fig.savefig(png, dpi=120)
        plt.close(fig)
        written.append(png)
    return written


# ----------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="flip-ctr report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run / pipeline / multirun directories")
    parser.add_argument("--baseline", help="model label to compare against (e.g. dcnv2, scratch or 'ID model from scratch')")
    parser.add_argument("--table", default="summary", metavar="T1[,T2...]",
                        help=f"comma-separated tables: {', '.join(TABLES)} or all (default: summary)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the * marks (paper: 0.001)")
    parser.add_argument("--out", type=Path, help="write the Markdown here (and a .csv of all runs beside it, "
                        "plus <out>_<table>.csv per paper-shaped table)")
    parser.add_argument("--plots", type=Path, help="write the mask-ratio / temperature / lr plots (PNG + CSV) here")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    tables = [t.strip() for t in args.table.split(",") if t.strip()]
    unknown = sorted(set(tables) - {*TABLES, "all"})
    if unknown or not tables:
        parser.error(f"unknown table(s) {', '.join(unknown)}; tables: {', '.join(TABLES)}, all")
    tables = list(TABLES) if "all" in tables else list(dict.fromkeys(tables))
    frame = collect(args.dirs)
    sections, csvs = [], {}
    for name in tables:
        if name == "summary":
            sections.append((name, to_markdown(summarize(frame, args.baseline))))
            continue
        long, markdown = build_table(frame, name, args.baseline, args.alpha)
        sections.append((name, markdown))
        csvs[name] = long
    if len(sections) == 1:
        text = sections[0][1]
    else:
        text = "\n\n".join(f"#### {name}\n\n{markdown}" for name, markdown in sections)
    if args.title:
        text = f"### {args.title}\n\n{text}"
    print(text)
    failures = failed_jobs(args.dirs)
    if failures:
        print(f"flip-ctr report: {len(failures)} failed job(s) left no metrics (failures.tsv):", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        frame.write_csv(args.out.with_suffix(".csv"))
        for name, long in csvs.items():
            if not long.is_empty():
                long.write_csv(args.out.with_name(f"{args.out.stem}_{name}.csv"))
    if args.plots:
        studies = tuple(n for n in tables if n in SWEEPS) or tuple(SWEEPS)
        for path in plot_sweeps(frame, args.plots, studies):
            print(f"wrote {path}", file=sys.stderr)
