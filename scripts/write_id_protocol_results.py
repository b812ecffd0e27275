"""results/id_protocols_ml1m.md (+ .csv) and the protocol column of results/id_baselines_table.csv,
from the run directories of scripts/id_protocols.sh.

Usage: python scripts/write_id_protocol_results.py [ROOT=outputs/id_protocols]

Per (model, recipe, protocol): mean ± std over seeds of test AUC / Logloss, the epochs each
protocol chose, and paired differences between protocols on the seeds both have (two-sided
paired t-test). Selected-on-test numbers are labelled as such in every row.
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

from flip_ctr.report import HOLDOUT_LABEL, collect
from flip_ctr.report_stats import mean_std as _mean_std, paired_t_test

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/id_protocols")
RESULTS = Path("results")


def _run_facts(run: Path) -> dict:
    """Variant, recipe and chosen epochs of one run. The variant and recipe are read from the run's
    config.yaml, so runs written before metrics.json recorded them (id_variant, id_recipe) count too."""
    import json

    import yaml

    m = json.loads((run / "metrics.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    model = cfg["id_model"]["name"] + ("_mix" if cfg["id_model"].get("cross_type") == "mix" else "")
    recipe = cfg.get("id_recipe_name") or ("reference" if cfg["regularization"]["bce_reduction"] == "sum" else "ours")
    return {"model": model, "recipe": recipe, "selected_epochs": m.get("selected_epochs"), "train_rows": m.get("train_rows")}


def main() -> None:
    frame = collect([ROOT])
    extra = [_run_facts(Path(path)) for path in frame["path"]]
    frame = pl.concat([frame.drop("model", "recipe"), pl.DataFrame(extra)], how="horizontal").sort("model", "recipe", "protocol", "seed")
    lines = ["| model | recipe | protocol | seeds | test AUC | test Logloss | epochs (per seed) | val AUC |", "|---|---|---|---|---|---|---|---|"]
    groups = {}
    for key, part in frame.group_by(["model", "recipe", "protocol"], maintain_order=True):
        groups[key] = {r["seed"]: r["auc"] for r in part.iter_rows(named=True)}
        auc_m, auc_s = _mean_std(part["auc"].to_list())
        ll_m, ll_s = _mean_std(part["logloss"].to_list())
        val = [v for v in part["val_auc"].to_list() if v is not None]
        val_text = f"{_mean_std(val)[0]:.4f}" if val else "- (selected on test)"
        epochs = "/".join(str(e) for e in part["selected_epochs"].to_list())
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {part.height} | {auc_m:.4f} ± {auc_s:.4f} | {ll_m:.4f} ± {ll_s:.4f} | {epochs} | {val_text} |")
    lines += ["", "Paired differences (test AUC, same seeds):", "",
              "| A | B | seeds | mean A − B | per seed | paired t-test p |", "|---|---|---|---|---|---|"]
    keys = list(groups)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            seeds = sorted(set(groups[a]) & set(groups[b]))
            if len(seeds) < 2:
                continue
            diffs = [groups[a][s] - groups[b][s] for s in seeds]
            p = paired_t_test([groups[a][s] for s in seeds], [groups[b][s] for s in seeds])[1]
            name = lambda k: f"{k[0]} {k[1]}, {k[2].split(' (')[0]}"  # noqa: E731
            lines.append(f"| {name(a)} | {name(b)} | {len(seeds)} | {sum(diffs) / len(diffs):+.4f} | "
                         f"{' '.join(f'{d:+.4f}' for d in diffs)} | {p:.3g} |")
    out = RESULTS / "id_protocols_ml1m.md"
    out.write_text("\n".join(lines) + "\n")
    frame.drop("path").write_csv(out.with_suffix(".csv"))
    print("\n".join(lines))

    # one CSV of every ID-baseline run, old and new, each row naming its protocol
    table = RESULTS / "id_baselines_table.csv"
    old = pl.read_csv(table, infer_schema_length=None)
    if "protocol" not in old.columns:
        old = old.with_columns(pl.lit(HOLDOUT_LABEL).alias("protocol"), pl.lit("ours").alias("recipe"))
    old = old.filter(~pl.col("path").str.starts_with(str(ROOT)))
    new = frame.select([c for c in old.columns if c in frame.columns])
    pl.concat([old, new], how="diagonal_relaxed").write_csv(table)


if __name__ == "__main__":
    main()
