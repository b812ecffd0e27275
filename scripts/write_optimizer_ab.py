#!/usr/bin/env python
"""stage.optimizer A/B (dense vs lazy rows): run directories → a paired Markdown table.

    python scripts/write_optimizer_ab.py outputs/lazy_adam_ab --out results/optimizer_ab_ml1m.md
    python scripts/write_optimizer_ab.py outputs/lazy_adamw_ab --arms adamw lazy_adamw --stage finetune_id \
        --out results/pretrain_optimizer_ab.md

Run directories are ``<setting>_<optimizer>_s<seed>`` (as ``scripts/optimizer_ab.sh`` and
``scripts/pretrain_optimizer_ab.sh`` name them); each holds the ``metrics.json`` of one
``flip-ctr train`` run, or with ``--stage S`` of the pipeline stage ``S`` (``<run>/S/metrics.json``).
Pairs are matched by seed; the paired t-test is ``flip_ctr.report.paired_t_test``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

from flip_ctr.report import paired_t_test

METRICS = (("auc", "test AUC"), ("logloss", "test Logloss"), ("best_val_auc", "val AUC (selection)"))


def collect(root: Path, arms: tuple[str, str], stage: str | None = None) -> dict:
    name = re.compile(rf"^(?P<setting>.+?)_(?P<optimizer>{'|'.join(map(re.escape, arms))})_s(?P<seed>\d+)$")
    runs: dict = {}
    for metrics in sorted(root.glob(f"*/{stage}/metrics.json" if stage else "*/metrics.json")):
        run = metrics.parent.parent if stage else metrics.parent
        m = name.match(run.name)
        if m:
            runs.setdefault(m["setting"], {}).setdefault(m["optimizer"], {})[int(m["seed"])] = json.loads(metrics.read_text())
    return runs


def table(setting: str, by_optimizer: dict, arms: tuple[str, str] = ("adam", "lazy_adam")) -> list[str]:
    dense_arm, lazy_arm = arms
    dense, lazy = by_optimizer.get(dense_arm, {}), by_optimizer.get(lazy_arm, {})
    seeds = sorted(set(dense) & set(lazy))
    lines = [f"### {setting} ({len(seeds)} paired seeds: {', '.join(map(str, seeds))})", ""]
    lines += ["| seed | " + " | ".join(f"{label} {dense_arm} | {label} {lazy_arm}" for _, label in METRICS)
              + f" | epochs {dense_arm} / {lazy_arm} | fit s {dense_arm} / {lazy_arm} |",
              "|---|" + "---|" * (2 * len(METRICS) + 2)]
    for s in seeds:
        cells = [f"{dense[s][k]:.4f} | {lazy[s][k]:.4f}" for k, _ in METRICS]
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {dense[s]['selected_epochs']} / {lazy[s]['selected_epochs']} | "
                     f"{dense[s]['fit_seconds']:.0f} / {lazy[s]['fit_seconds']:.0f} |")
    lines += ["", f"| metric | {dense_arm} mean ± std | {lazy_arm} mean ± std | {lazy_arm} − {dense_arm} (mean) | {lazy_arm} better in | paired t | p |",
              "|---|---|---|---|---|---|---|"]
    for key, label in METRICS:
        a, b = [dense[s][key] for s in seeds], [lazy[s][key] for s in seeds]
        t, p = paired_t_test(b, a)
        better = sum((y > x) if key != "logloss" else (y < x) for x, y in zip(a, b))
        lines.append(f"| {label} | {statistics.mean(a):.4f} ± {statistics.stdev(a):.4f} | {statistics.mean(b):.4f} ± {statistics.stdev(b):.4f} | "
                     f"{statistics.mean(b) - statistics.mean(a):+.4f} | {better}/{len(seeds)} | {t:.2f} | {p:.3f} |")
    return lines + [""]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--arms", nargs=2, default=["adam", "lazy_adam"], metavar=("DENSE", "LAZY"))
    p.add_argument("--stage", default=None, help="the pipeline stage whose metrics.json to read")
    args = p.parse_args(argv)
    arms = tuple(args.arms)
    runs = collect(args.root, arms, args.stage)
    if not runs:
        where = f"{args.stage}/metrics.json" if args.stage else "metrics.json"
        raise SystemExit(f"{args.root}: no <setting>_<{'|'.join(arms)}>_s<seed>/{where} found")
    lines = [f"<!-- written by scripts/write_optimizer_ab.py {' '.join(sys.argv[1:] if argv is None else argv)} -->", ""]
    for setting, by_optimizer in sorted(runs.items()):
        lines += table(setting, by_optimizer, arms)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
