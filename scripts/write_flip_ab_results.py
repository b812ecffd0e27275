#!/usr/bin/env python
"""The alignment A/B (scripts/flip_ab.sh runs) → one CSV row per run and a Markdown table.

    python scripts/write_flip_ab_results.py ROOT [ROOT ...] --csv results/flip_cpu_ml1m_table.csv --md OUT.md
    python scripts/write_flip_ab_results.py NEW_ROOT --csv results/flip_cpu_ml1m_table.csv --keep   # add runs

``--keep``: the rows already in ``--csv`` that the roots do not hold again (same dataset, variant,
strategy and seed) stay, so runs whose directories are gone keep their published numbers.
Strategies other than FLIP_ID (``finetune_id``) and ``scratch`` are table rows of their own
(``variant [strategy]``), and each is also compared with the same run's FLIP_ID.

Per run (``<ROOT>/<dataset>_<variant>_s<seed>/``): the strategy's test AUC/Logloss and its
validation AUC (refit: the selection fit's), the switch values read from the run's own config,
and the end of its pretraining curves (mean of the last 5 logged steps of ICL loss, MLM and MTM
accuracy) with the pretraining samples/s. The table compares each variant with ``defaults`` on
validation AUC (the decision; paired over seeds) and with ``scratch`` on validation and test.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
from pathlib import Path

import yaml

from flip_ctr.report import paired_t_test

SWITCHES = ("icl_projection", "noise_scope", "nce", "mtm_input", "mlm_vocabulary")
RUN = re.compile(r"^(?P<dataset>[a-z0-9]+)_(?P<variant>.+)_s(?P<seed>\d+)$")


def pretrain_log(run: Path) -> list[dict] | None:
    """The run's logged pretraining steps (rows of its CSV log with a loss); None without a log."""
    path = run / "pretrain" / "csv" / "metrics.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if r.get("pretrain/loss")]


def pretrain_curve_end(run: Path, last: int = 5) -> dict:
    rows = pretrain_log(run)
    if rows is None:
        return {}
    out = {"pretrain_last_logged_step": int(rows[-1]["step"]) if rows else None}
    for key, name in (("pretrain/icl", "icl_end"), ("pretrain/mlm_acc", "mlm_acc_end"), ("pretrain/mtm_acc", "mtm_acc_end")):
        values = [float(r[key]) for r in rows[-last:] if r.get(key)]
        out[name] = statistics.mean(values) if values else None
    speed = run / "pretrain" / "speed.json"
    if speed.is_file():
        out["pretrain_samples_per_s"] = json.loads(speed.read_text())["samples_per_second"]
    return out


def curve_rows(root: Path) -> list[dict]:
    """Every logged pretraining step of every run: ICL loss, MLM and MTM accuracy."""
    out = []
    for run in sorted(p for p in root.iterdir() if p.is_dir()):
        match = RUN.match(run.name)
        for r in (pretrain_log(run) or []) if match else []:
            out.append({"dataset": match["dataset"], "variant": match["variant"], "seed": int(match["seed"]),
                        "step": int(r["step"]), "loss": r["pretrain/loss"], "icl": r.get("pretrain/icl"),
                        "mlm_acc": r.get("pretrain/mlm_acc"), "mtm_acc": r.get("pretrain/mtm_acc")})
    return out


def run_rows(root: Path) -> list[dict]:
    rows = []
    for run in sorted(p for p in root.iterdir() if p.is_dir() and (p / "summary.json").is_file()):
        match = RUN.match(run.name)
        if not match:
            continue
        summary = json.loads((run / "summary.json").read_text())
        for metrics in summary:
            strategy = metrics["strategy"]
            cfg = yaml.safe_load((run / strategy / "config.yaml").read_text())
            pretraining = strategy != "scratch"
            row = {
                "dataset": match["dataset"],
                "variant": match["variant"],
                "strategy": strategy,
                "seed": int(match["seed"]),
                "auc": metrics["auc"],
                "val_auc": metrics.get("best_val_auc"),
                "logloss": metrics["logloss"],
                "protocol": metrics.get("protocol_name"),
                "id_model": metrics.get("id_model"),
                "id_recipe": metrics.get("id_recipe"),
            }
            pretrain_cfg = cfg["stages"]["pretrain"]
            for key in SWITCHES:
                row[key] = cfg["ablation"].get(key) if pretraining else None
            row["text_encoding"] = pretrain_cfg.get("text_encoding", "row") if pretraining else None
            row["pretrain_limit_train_batches"] = pretrain_cfg.get("limit_train_batches") if pretraining else None
            row["pretrain_train_split"] = pretrain_cfg.get("train_split") if pretraining else None
            row.update(pretrain_curve_end(run) if pretraining else {})
            rows.append(row)
    return rows


def label(row: dict) -> str:
    """The table row a run belongs to: its variant, with the strategy named unless FLIP_ID/scratch."""
    return row["variant"] if row["strategy"] in ("finetune_id", "scratch") else f"{row['variant']} [{row['strategy']}]"


def kept_rows(path: Path, new: list[dict]) -> list[dict]:
    """Rows of an existing CSV that ``new`` does not replace, with numbers parsed back."""
    if not path.is_file():
        return []
    fresh = {(r["dataset"], r["variant"], r["strategy"], int(r["seed"])) for r in new}
    out = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            if (r["dataset"], r["variant"], r["strategy"], int(r["seed"])) in fresh:
                continue
            out.append({k: _parse(v) for k, v in r.items()})
    return out


def _parse(value: str):
    if value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number


def paired(rows: list[dict], other: list[dict], key: str) -> tuple[float | None, float | None, int]:
    """Mean same-seed difference of ``key`` (rows − other) and its paired t-test p."""
    a = {r["seed"]: r[key] for r in rows if r.get(key) is not None}
    b = {r["seed"]: r[key] for r in other if r.get(key) is not None}
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None, None, 0
    diff = statistics.mean(a[s] - b[s] for s in seeds)
    p = paired_t_test([a[s] for s in seeds], [b[s] for s in seeds])[1] if len(seeds) >= 2 else None
    return diff, p, len(seeds)


def fmt(value, digits=4, signed=False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def markdown(rows: list[dict]) -> str:
    lines = []
    for dataset in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == dataset]
        by = {}
        for r in mine:
            by.setdefault(label(r), []).append(r)
        base = by.get("defaults") or by.get("defaults_quarter_epoch") or []
        scratch = by.get("scratch", [])
        lines += [
            f"### {dataset}",
            "",
            "| variant | seeds | val AUC | test AUC | Δval vs defaults (p) | Δval vs scratch (p) | Δtest vs scratch (p) "
            "| Δtest vs its FLIP_ID (p) | ICL end | MLM acc | MTM acc | pretrain samples/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for variant, group in by.items():
            dv, pv, _ = paired(group, base, "val_auc") if group is not base and base else (None, None, 0)
            sv, ps, _ = paired(group, scratch, "val_auc") if group is not scratch else (None, None, 0)
            st, pt, _ = paired(group, scratch, "auc") if group is not scratch else (None, None, 0)
            own_id = by.get(group[0]["variant"], []) if group[0]["strategy"] not in ("finetune_id", "scratch") else []
            si, pi, _ = paired(group, own_id, "auc") if own_id else (None, None, 0)

            def cell(diff, p):
                return "-" if diff is None else f"{diff:+.4f} ({fmt(p, 3)})"

            def curve(key, digits=2):
                values = [r.get(key) for r in group if r.get(key) is not None]
                return fmt(statistics.mean(values), digits) if values else "-"

            lines.append(
                f"| {variant} | {len(group)} | {mean_std([r['val_auc'] for r in group])} | {mean_std([r['auc'] for r in group])} "
                f"| {cell(dv, pv)} | {cell(sv, ps)} | {cell(st, pt)} | {cell(si, pi)} | {curve('icl_end')} | {curve('mlm_acc_end', 3)} "
                f"| {curve('mtm_acc_end', 3)} | {curve('pretrain_samples_per_s', 0)} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path)
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--md", type=Path)
    parser.add_argument("--curves", type=Path, help="also write every run's pretraining curve here (CSV)")
    parser.add_argument("--keep", action="store_true", help="keep the rows of --csv that the roots do not hold again")
    args = parser.parse_args()
    rows = [r for root in args.roots for r in run_rows(root)]
    if not rows:
        raise SystemExit(f"no finished runs under {', '.join(map(str, args.roots))}")
    if args.keep:
        rows = kept_rows(args.csv, rows) + rows
    columns = list(dict.fromkeys(k for r in rows for k in r))
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    if args.curves:
        curves = [r for root in args.roots for r in curve_rows(root)]
        with open(args.curves, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(curves[0]))
            writer.writeheader()
            writer.writerows(curves)
    text = markdown(rows)
    if args.md:
        args.md.write_text(text)
    print(text)
    print(f"wrote {args.csv} ({len(rows)} runs)")


if __name__ == "__main__":
    main()
