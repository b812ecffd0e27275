#!/usr/bin/env python
"""stage.optimizer A/B (adam vs lazy_adam): run directories → a paired Markdown table.

    python scripts/write_optimizer_ab.py outputs/lazy_adam_ab --out results/optimizer_ab_ml1m.md

Run directories are ``<dataset>_<model>_<recipe>_<optimizer>_s<seed>`` (as ``scripts/optimizer_ab.sh``
names them); each holds the ``metrics.json`` of one ``flip-ctr train`` run. Pairs are matched by
seed; the paired t-test is ``flip_ctr.report.paired_t_test``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from flip_ctr.report import paired_t_test

NAME = re.compile(r"^(?P<setting>.+?)_(?P<optimizer>adam|lazy_adam)_s(?P<seed>\d+)$")
METRICS = (("auc", "test AUC"), ("logloss", "test Logloss"), ("best_val_auc", "val AUC (selection)"))


def collect(root: Path) -> dict:
    runs: dict = {}
    for metrics in sorted(root.glob("*/metrics.json")):
        m = NAME.match(metrics.parent.name)
        if m:
            runs.setdefault(m["setting"], {}).setdefault(m["optimizer"], {})[int(m["seed"])] = json.loads(metrics.read_text())
    return runs


def table(setting: str, by_optimizer: dict) -> list[str]:
    adam, lazy = by_optimizer.get("adam", {}), by_optimizer.get("lazy_adam", {})
    seeds = sorted(set(adam) & set(lazy))
    lines = [f"### {setting} ({len(seeds)} paired seeds: {', '.join(map(str, seeds))})", ""]
    lines += ["| seed | " + " | ".join(f"{label} adam | {label} lazy_adam" for _, label in METRICS) + " | epochs adam / lazy | fit s adam / lazy |",
              "|---|" + "---|" * (2 * len(METRICS) + 2)]
    for s in seeds:
        cells = [f"{adam[s][k]:.4f} | {lazy[s][k]:.4f}" for k, _ in METRICS]
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {adam[s]['selected_epochs']} / {lazy[s]['selected_epochs']} | "
                     f"{adam[s]['fit_seconds']:.0f} / {lazy[s]['fit_seconds']:.0f} |")
    lines += ["", "| metric | adam mean ± std | lazy_adam mean ± std | lazy − adam (mean) | lazy better in | paired t | p |", "|---|---|---|---|---|---|---|"]
    for key, label in METRICS:
        a, b = [adam[s][key] for s in seeds], [lazy[s][key] for s in seeds]
        t, p = paired_t_test(b, a)
        better = sum((y > x) if key != "logloss" else (y < x) for x, y in zip(a, b))
        lines.append(f"| {label} | {statistics.mean(a):.4f} ± {statistics.stdev(a):.4f} | {statistics.mean(b):.4f} ± {statistics.stdev(b):.4f} | "
                     f"{statistics.mean(b) - statistics.mean(a):+.4f} | {better}/{len(seeds)} | {t:.2f} | {p:.3f} |")
    return lines + [""]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    runs = collect(args.root)
    if not runs:
        raise SystemExit(f"{args.root}: no <setting>_<adam|lazy_adam>_s<seed>/metrics.json found")
    lines = [f"<!-- written by scripts/write_optimizer_ab.py {args.root} -->", ""]
    for setting, by_optimizer in sorted(runs.items()):
        lines += table(setting, by_optimizer)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
