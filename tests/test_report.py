"""`flip-ctr report`: run directories → paper-shaped tables (II, III, V, VII), sweep plots.

Synthetic run directories in the layouts `flip-ctr` writes (pipeline: <run>/<strategy>/
{metrics.json,config.yaml}; train multirun: <sweep>/<n>_.../{metrics.json,config.yaml}) with
chosen metrics, so every mean, std, relative improvement and p-value can be checked against an
independent computation (statistics / scipy.stats.ttest_rel).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import polars as pl
import pytest
import yaml

from flip_ctr import report

STAGE_NAMES = {"scratch": "ctr", "finetune_id": "finetune_id", "finetune_plm": "finetune_plm",
               "finetune_joint": "finetune_joint"}


def write_pipeline_stage(root: Path, run: str, strategy: str, *, seed: int, auc: float, logloss: float = 0.4,
                         dataset: str = "ml1m", id_model: str = "dcnv2", plm: str = "tinybert",
                         ablation: str = "full", protocol: str | None = None,
                         text: float = 0.15, tab: float = 0.15, tau: float = 0.7, lr: float = 1e-3) -> Path:
    stage_dir = root / run / strategy
    stage_dir.mkdir(parents=True)
    stage = STAGE_NAMES[strategy]
    (stage_dir / "metrics.json").write_text(json.dumps({
        "auc": auc, "logloss": logloss, "num_test_rows": 100, "dataset": dataset, "id_model": id_model, "plm": plm,
        "stage": stage, "ablation": ablation, "seed": seed, "fit_seconds": 1.0,
        **({"protocol": protocol} if protocol else {})}))
    lr_key = "lr_plm" if strategy == "finetune_plm" else "lr_id" if strategy == "finetune_joint" else "lr"
    cfg = {"seed": seed, "ablation": {"name": ablation, "text_mask_ratio": text, "tab_mask_ratio": tab, "temperature": tau},
           "stages": {s: {"name": n, ("lr_plm" if s == "finetune_plm" else "lr_id" if s == "finetune_joint" else "lr"): 9.0}
                      for s, n in STAGE_NAMES.items()}}
    cfg["stages"][strategy][lr_key] = lr
    (stage_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    return stage_dir


def write_train_job(root: Path, num: int, *, seed: int, auc: float, logloss: float = 0.4, dataset: str = "ml1m",
                    id_model: str = "dcnv2", stage: str = "ctr", lr: float = 1e-3, val_auc: float | None = None) -> Path:
    job = root / f"{num}_{dataset}_{id_model}_full_s{seed}"
    job.mkdir(parents=True)
    (job / "metrics.json").write_text(json.dumps({"auc": auc, "logloss": logloss, "dataset": dataset, "id_model": id_model,
                                                  "plm": "minilm_l6", "stage": stage, "ablation": "full", "seed": seed,
                                                  "best_val_auc": val_auc}))
    (job / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "stage": {"name": stage, "lr": lr},
                                                     "ablation": {"name": "full", "text_mask_ratio": 0.15}}))
    return job


def rows_of(markdown: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in markdown.splitlines()[2:]]


def ttest_p(a, b) -> float:
    from scipy import stats

    return float(stats.ttest_rel(a, b).pvalue)


# seeds 1, 2, 3. Paired by seed the differences are +0.008, +0.005, +0.008 (t = 7 on 2 degrees of
# freedom, p = 1 - 7/sqrt(51) = 0.0198); paired by sorted value they would be +0.007 each (sd 0).
SCRATCH = [0.800, 0.802, 0.801]
FLIP_ID = [0.808, 0.807, 0.809]
P_BY_SEED = 1 - 7 / 51**0.5  # two-sided, Student t with 2 dof: CDF(t) = 1/2 + t / (2 sqrt(2 + t^2))


@pytest.fixture
def pipelines(tmp_path) -> Path:
    """Three seeds of a pipeline (scratch, FLIP_ID) with two PLMs: the scratch stage repeats."""
    for plm in ("tinybert", "roberta_base"):
        for seed, (s, f) in enumerate(zip(SCRATCH, FLIP_ID), start=1):
            run = f"{plm}_s{seed}"
            write_pipeline_stage(tmp_path, run, "scratch", seed=seed, auc=s, plm=plm)
            flip = f + (0.001 if plm == "roberta_base" else 0)
            write_pipeline_stage(tmp_path, run, "finetune_id", seed=seed, auc=flip, plm=plm)
    return tmp_path


def test_default_summary_table_and_identical_scratch_runs_count_once(pipelines, capsys):
    report.main([str(pipelines)])
    out = capsys.readouterr().out
    rows = {r[1]: r for r in rows_of(out)}
    # scratch appears in both PLM pipelines with identical results: 3 seeds, not 6
    assert rows["dcnv2"][3] == "3"
    assert rows["dcnv2"][4] == f"{statistics.mean(SCRATCH):.4f} ± {statistics.stdev(SCRATCH):.4f}"
    both = FLIP_ID + [a + 0.001 for a in FLIP_ID]  # FLIP_ID differs between the PLMs: 6 runs
    assert rows["FLIP_ID"][3] == "6" and rows["FLIP_ID"][4].startswith(f"{statistics.mean(both):.4f} ±")


def test_baseline_by_strategy_label_relative_improvement_and_paired_test(pipelines):
    frame = report.collect([pipelines]).filter((pl.col("plm") == "tinybert") | (pl.col("strategy") == "scratch"))
    for label in ("ID model from scratch", "scratch", "dcnv2"):
        summary = report.summarize(frame, label).filter(pl.col("model") == "FLIP_ID").row(0, named=True)
        impr = 100 * (statistics.mean(FLIP_ID) - statistics.mean(SCRATCH)) / statistics.mean(SCRATCH)
        assert summary["auc_rel_impr_pct"] == pytest.approx(impr)
        assert summary["p_paired_t"] == pytest.approx(ttest_p(FLIP_ID, SCRATCH))
        assert summary["p_paired_t"] == pytest.approx(P_BY_SEED, rel=1e-6)  # by hand, not by scipy
        assert summary["baseline_seeds"] == 3
        assert summary["auc_diff_mean"] == pytest.approx(0.007)
        assert summary["auc_diff_std"] == pytest.approx(statistics.stdev([0.008, 0.005, 0.008]))


def test_overall_table_has_a_column_group_per_dataset(tmp_path):
    for seed, (s, f) in enumerate(zip(SCRATCH, FLIP_ID), start=1):
        for dataset, shift in (("ml1m", 0.0), ("bookcrossing", -0.05)):
            write_pipeline_stage(tmp_path, f"{dataset}_s{seed}", "scratch", seed=seed, auc=s + shift, dataset=dataset)
            write_pipeline_stage(tmp_path, f"{dataset}_s{seed}", "finetune_id", seed=seed, auc=f + shift, dataset=dataset)
    frame = report.collect([tmp_path])
    long, markdown = report.build_table(frame, "overall", baseline="dcnv2", alpha=0.05)
    header = markdown.splitlines()[0]
    assert "ml1m AUC" in header and "bookcrossing Rel.Impr" in header
    rows = {r[0]: r for r in rows_of(markdown)}
    assert list(rows) == ["dcnv2", "FLIP_ID"]  # ID models first, then the FLIP variants
    p = ttest_p(FLIP_ID, SCRATCH)
    assert p == pytest.approx(P_BY_SEED, rel=1e-6) and p < 0.05
    flip = long.filter((pl.col("model") == "FLIP_ID") & (pl.col("dataset") == "bookcrossing")).row(0, named=True)
    base_mean = statistics.mean(SCRATCH) - 0.05
    assert flip["auc_rel_impr_pct"] == pytest.approx(100 * (statistics.mean(FLIP_ID) - 0.05 - base_mean) / base_mean)
    assert flip["p_paired_t"] == pytest.approx(p, rel=1e-6) and flip["significant"]
    assert rows["FLIP_ID"][1].endswith("*") and not rows["dcnv2"][1].endswith("*")
    # at the paper's level (p < 0.001) three seeds are not enough
    _, strict = report.build_table(frame, "overall", baseline="dcnv2", alpha=0.001)
    assert not any(r[1].endswith("*") for r in rows_of(strict))


def test_backbones_table_compares_each_strategy_with_its_own_backbone(tmp_path):
    aucs = {("deepfm", "scratch"): 0.70, ("deepfm", "finetune_id"): 0.72, ("dcnv2", "scratch"): 0.80,
            ("dcnv2", "finetune_id"): 0.81, ("dcnv2", "finetune_joint"): 0.83}
    for (model, strategy), auc in aucs.items():
        for seed in (1, 2):
            write_pipeline_stage(tmp_path, f"{model}_s{seed}", strategy, seed=seed, auc=auc + 0.001 * seed, id_model=model)
    _, markdown = report.build_table(report.collect([tmp_path]), "backbones")
    rows = [(r[1], r[2], r[5]) for r in rows_of(markdown)]
    assert rows == [
        ("dcnv2", "N/A", "-"),
        ("dcnv2", "FLIP_ID", f"{100 * (0.81 - 0.80) / 0.8015:+.2f}%"),
        ("dcnv2", "FLIP", f"{100 * (0.83 - 0.80) / 0.8015:+.2f}%"),
        ("deepfm", "N/A", "-"),
        ("deepfm", "FLIP_ID", f"{100 * (0.72 - 0.70) / 0.7015:+.2f}%"),
    ]


def test_plms_table_puts_the_scratch_baseline_first(pipelines):
    _, markdown = report.build_table(report.collect([pipelines]), "plms")
    rows = rows_of(markdown)
    assert [(r[1], r[2]) for r in rows] == [("dcnv2", "(from scratch)"), ("roberta_base", "FLIP_ID"), ("tinybert", "FLIP_ID")]
    assert rows[0][-2] == "3"  # deduplicated scratch runs
    expected = 100 * (statistics.mean(FLIP_ID) + 0.001 - statistics.mean(SCRATCH)) / statistics.mean(SCRATCH)
    assert rows[1][5] == f"{expected:+.2f}%"


def test_ablations_table_in_the_papers_order_against_the_full_model(tmp_path):
    variants = {"no_icl": 0.795, "full": 0.81, "no_pretrain": 0.79, "no_mlm": 0.80}
    for ablation, auc in variants.items():
        for seed in (1, 2, 3):
            run = f"{ablation}_s{seed}"
            write_pipeline_stage(tmp_path, run, "finetune_id", seed=seed, auc=auc + 0.0005 * seed**2, ablation=ablation)
            write_pipeline_stage(tmp_path, f"{ablation}_s{seed}", "scratch", seed=seed, auc=0.78 + 0.001 * seed)
    _, markdown = report.build_table(report.collect([tmp_path]), "ablations")
    rows = rows_of(markdown)
    assert [r[1] for r in rows] == ["FLIP (all objectives)", "w/o MLM", "w/o ICL", "w/o MLM&MTM&ICL"]
    assert all(r[0] == "FLIP_ID" for r in rows)
    assert rows[0][4] == "-" and rows[1][4] == f"{100 * (0.80 - 0.81) / (0.81 + 0.0005 * 14 / 3):+.2f}%"


@pytest.fixture
def sweeps(tmp_path) -> Path:
    """A 3 x 3 r_text x r_tab grid and a τ sweep (2 seeds each), as pipeline multiruns; their common
    point (0.15, 0.15, τ 0.7) is the same run twice."""
    curve = {0.15: 0.810, 0.3: 0.805, 0.6: 0.790}
    num = 0
    for text in curve:
        for tab in curve:
            for seed in (1, 2):
                auc = curve[text] + (curve[tab] - 0.81) / 2 + 0.001 * seed
                write_pipeline_stage(tmp_path / "mask", f"{num}_s{seed}", "finetune_id", seed=seed, auc=auc, text=text, tab=tab)
                write_pipeline_stage(tmp_path / "mask", f"{num}_s{seed}", "scratch", seed=seed, auc=0.78)
                num += 1
    for tau, auc in {0.05: 0.80, 0.1: 0.805, 0.7: 0.81, 1.0: 0.808}.items():
        for seed in (1, 2):
            write_pipeline_stage(tmp_path / "tau", f"{num}_s{seed}", "finetune_id", seed=seed, auc=auc + 0.001 * seed, tau=tau)
            num += 1
    return tmp_path


def test_mask_ratio_and_temperature_studies(sweeps):
    frame = report.collect([sweeps])
    text = report.sweep_points(frame, "text_mask_ratio")
    # r_text varies with r_tab at 0.15 (the grid's tie → the paper default); τ runs (r = 0.15, τ ≠ 0.7) stay out
    assert text["text_mask_ratio"].to_list() == [0.15, 0.3, 0.6]
    assert text["seeds"].to_list() == [2, 2, 2]
    assert text["auc_mean"].to_list() == pytest.approx([0.8115, 0.8065, 0.7915])
    tab = report.sweep_points(frame, "tab_mask_ratio")
    assert tab["auc_mean"].to_list() == pytest.approx([0.8115, 0.8090, 0.8015])
    tau = report.sweep_points(frame, "temperature")
    assert tau["temperature"].to_list() == [0.05, 0.1, 0.7, 1.0]
    assert tau["auc_mean"].to_list() == pytest.approx([0.8015, 0.8065, 0.8115, 0.8095])
    assert tau["seeds"].to_list() == [2, 2, 2, 2]
    long, markdown = report.build_table(frame, "temperature")
    at = {r["value"]: r for r in long.iter_rows(named=True)}
    assert at[0.7]["auc_rel_impr_pct"] is None  # the paper default is the reference
    assert at[0.05]["auc_rel_impr_pct"] == pytest.approx(100 * (0.8015 - 0.8115) / 0.8115)
    assert report.sweep_points(frame, "lr").is_empty()  # nothing swept there


def test_report_cli_writes_tables_csvs_and_plots(sweeps, tmp_path, capsys):
    for num, lr in enumerate([1e-4, 1e-3, 1e-2]):
        for seed in (1, 2):
            # test AUC peaks at 1e-3, validation AUC at 1e-2
            write_train_job(sweeps / "lr", 2 * num + seed, seed=seed, auc=0.80 - abs(num - 1) * 0.01 + 0.001 * seed, lr=lr,
                            id_model="deepfm", val_auc=0.70 + 0.01 * num)
    (sweeps / "lr" / "failures.tsv").write_text("7\t/x/7_job\tstage.lr=5e-3\tValueError: boom\n")
    out = tmp_path / "results" / "study.md"
    plots = tmp_path / "plots"
    report.main([str(sweeps), "--table", "summary,mask_ratio,temperature,lr", "--out", str(out), "--plots", str(plots)])
    captured = capsys.readouterr()
    text = out.read_text()
    assert "#### summary" in text and "#### mask_ratio" in text and "#### lr" in text
    assert "1 failed job" in captured.err and "boom" in captured.err
    runs = pl.read_csv(out.with_suffix(".csv"))
    assert runs.height == 9 * 2 + 6 + 6 + 2  # the grid's scratch runs and its τ = 0.7 point count once
    lr_rows = pl.read_csv(tmp_path / "results" / "study_lr.csv").sort("value")
    assert lr_rows["auc_mean"].to_list() == pytest.approx([0.7915, 0.8015, 0.7915])
    assert lr_rows["val_auc_mean"].to_list() == pytest.approx([0.70, 0.71, 0.72])
    # lr: the value chosen on validation (1e-2) is the reference, not the best on test (1e-3)
    assert lr_rows["auc_rel_impr_pct"].to_list()[2] is None
    assert lr_rows["auc_rel_impr_pct"].to_list()[1] == pytest.approx(100 * (0.8015 - 0.7915) / 0.7915)
    assert "| val AUC |" in text.split("#### lr")[1].splitlines()[2]
    points = pl.read_csv(plots / "mask_ratio.csv")
    assert set(points["parameter"]) == {"text_mask_ratio", "tab_mask_ratio"}
    assert (plots / "lr.csv").is_file() and (plots / "temperature.csv").is_file()
    pytest.importorskip("matplotlib")
    for name in ("mask_ratio", "temperature", "lr"):
        assert (plots / f"{name}.png").stat().st_size > 1000


def test_unknown_table_is_refused(tmp_path):
    write_train_job(tmp_path, 0, seed=1, auc=0.8)
    with pytest.raises(SystemExit):
        report.main([str(tmp_path), "--table", "nope"])


def test_every_row_names_its_protocol_and_compares_only_within_it(tmp_path, capsys):
    """A test-selected (paper) number next to an honest one: each row says which it is, and a
    paper-protocol FLIP_ID is compared with the paper-protocol scratch model, never the refit one."""
    paper, refit = "paper (selected on test)", "refit (epochs chosen on validation, retrained on the whole training part)"
    for seed in (1, 2, 3):
        write_pipeline_stage(tmp_path, f"p{seed}", "scratch", seed=seed, auc=0.85 + 0.001 * seed, protocol=paper)
        write_pipeline_stage(tmp_path, f"p{seed}", "finetune_id", seed=seed, auc=0.86 + 0.002 * seed, protocol=paper)
        write_pipeline_stage(tmp_path, f"r{seed}", "scratch", seed=seed, auc=0.80 + 0.003 * seed, protocol=refit)
        write_pipeline_stage(tmp_path, f"r{seed}", "finetune_id", seed=seed, auc=0.81 - 0.001 * seed, protocol=refit)
    frame = report.collect([tmp_path])
    long, markdown = report.build_table(frame, "overall", baseline="dcnv2")
    rows = rows_of(markdown)
    assert markdown.splitlines()[0].rstrip(" |").endswith("protocol")
    assert sorted((r[0], r[-1]) for r in rows) == sorted(
        [("dcnv2", paper), ("FLIP_ID", paper), ("dcnv2", refit), ("FLIP_ID", refit)]
    )
    flip_paper = long.filter((pl.col("model") == "FLIP_ID") & (pl.col("protocol") == paper)).row(0, named=True)
    scratch_paper = [0.851, 0.852, 0.853]
    flip_paper_aucs = [0.862, 0.864, 0.866]
    base = statistics.mean(scratch_paper)
    assert flip_paper["auc_rel_impr_pct"] == pytest.approx(100 * (statistics.mean(flip_paper_aucs) - base) / base)
    assert flip_paper["p_paired_t"] == pytest.approx(ttest_p(flip_paper_aucs, scratch_paper))
    # the default summary table: one row per (model, protocol), the protocol in its last column
    report.main([str(tmp_path), "--baseline", "dcnv2"])
    summary = rows_of(capsys.readouterr().out)
    assert sorted((r[1], r[-1]) for r in summary) == sorted(
        [("dcnv2", paper), ("FLIP_ID", paper), ("dcnv2", refit), ("FLIP_ID", refit)]
    )
    refit_flip = next(r for r in summary if r[1] == "FLIP_ID" and r[-1] == refit)
    refit_scratch = [0.803, 0.806, 0.809]
    refit_aucs = [0.809, 0.808, 0.807]
    assert refit_flip[6] == f"{100 * (statistics.mean(refit_aucs) - statistics.mean(refit_scratch)) / statistics.mean(refit_scratch):+.2f}%"


def test_paired_difference_column_pairs_by_seed(tmp_path):
    """ΔAUC is the mean ± std of same-seed differences: with these seeds, pairing by seed gives
    +0.01, +0.01, +0.05 (mean +0.0233, std 0.0231); pairing by sorted value would give +0.01, +0.04,
    +0.02 (std 0.0153)."""
    scratch = {1: 0.79, 2: 0.69, 3: 0.76}
    flip_id = {1: 0.80, 2: 0.70, 3: 0.81}
    for seed in scratch:
        write_pipeline_stage(tmp_path, f"s{seed}", "scratch", seed=seed, auc=scratch[seed])
        write_pipeline_stage(tmp_path, f"s{seed}", "finetune_id", seed=seed, auc=flip_id[seed])
    summary = report.summarize(report.collect([tmp_path]), baseline="scratch")
    row = summary.filter(pl.col("model") == "FLIP_ID").row(0, named=True)
    diffs = [flip_id[s] - scratch[s] for s in scratch]
    assert row["auc_diff_mean"] == pytest.approx(statistics.mean(diffs))
    assert row["auc_diff_std"] == pytest.approx(statistics.stdev(diffs))
    assert row["baseline_seeds"] == 3
    assert row["p_paired_t"] == pytest.approx(ttest_p([flip_id[s] for s in scratch], [scratch[s] for s in scratch]))
    assert row["auc_diff_std"] == pytest.approx(0.02 * 3**0.5 / 1.5)  # by hand: deviations -.0133, -.0133, .0267
    # t = 0.02333 / (0.02309 / sqrt 3) = 1.75; p by the 2-dof closed form: 1 - 1.75 / 2.25 = 2/9
    assert row["p_paired_t"] == pytest.approx(2 / 9, rel=1e-6)
    line = next(r for r in rows_of(report.to_markdown(summary)) if r[1] == "FLIP_ID")
    assert line[7] == f"{statistics.mean(diffs):+.4f} ± {statistics.stdev(diffs):.4f} (3)"


def test_partly_overlapping_seeds_pair_only_the_common_ones(tmp_path):
    """FLIP_ID has seeds 1-4, the baseline 2-5: the test and ΔAUC use seeds 2, 3, 4 only (and say
    so in baseline_seeds); the relative improvement compares the means of all runs of each."""
    scratch = {2: 0.800, 3: 0.802, 4: 0.801, 5: 0.600}
    flip_id = {1: 0.900, 2: 0.808, 3: 0.807, 4: 0.809}
    for seed, auc in scratch.items():
        write_pipeline_stage(tmp_path, f"s{seed}", "scratch", seed=seed, auc=auc)
    for seed, auc in flip_id.items():
        write_pipeline_stage(tmp_path, f"f{seed}", "finetune_id", seed=seed, auc=auc)
    row = report.summarize(report.collect([tmp_path]), baseline="scratch").filter(pl.col("model") == "FLIP_ID").row(0, named=True)
    assert row["baseline_seeds"] == 3
    common = [2, 3, 4]  # differences +0.008, +0.005, +0.008: t = 7, as in the pipelines fixture
    assert row["auc_diff_mean"] == pytest.approx(0.007)
    assert row["auc_diff_std"] == pytest.approx(statistics.stdev([0.008, 0.005, 0.008]))
    assert row["p_paired_t"] == pytest.approx(P_BY_SEED, rel=1e-6)
    assert row["p_paired_t"] == pytest.approx(ttest_p([flip_id[s] for s in common], [scratch[s] for s in common]))
    base = statistics.mean(scratch.values())
    assert row["auc_rel_impr_pct"] == pytest.approx(100 * (statistics.mean(flip_id.values()) - base) / base)
    # one common seed: no test, one difference
    one = tmp_path / "one"
    write_pipeline_stage(one, "s1", "scratch", seed=1, auc=0.70)
    write_pipeline_stage(one, "s2", "scratch", seed=2, auc=0.72)
    write_pipeline_stage(one, "f2", "finetune_id", seed=2, auc=0.75)
    write_pipeline_stage(one, "f3", "finetune_id", seed=3, auc=0.76)
    row = report.summarize(report.collect([one]), baseline="scratch").filter(pl.col("model") == "FLIP_ID").row(0, named=True)
    assert row["baseline_seeds"] == 1 and row["p_paired_t"] is None
    assert row["auc_diff_mean"] == pytest.approx(0.03)


def test_paired_t_test_constant_differences():
    """sd == 0: every difference equal. Exactly representable values, so the differences are
    exactly equal: a positive one is t = +inf, p = 0; a negative one t = -inf, p = 0; none, nan."""
    base = [0.5, 0.75, 0.625]
    assert report.paired_t_test([b + 0.125 for b in base], base) == (float("inf"), 0.0)
    assert report.paired_t_test([b - 0.125 for b in base], base) == (float("-inf"), 0.0)
    t, p = report.paired_t_test(base, base)
    assert t != t and p != p  # nan, nan
    t, p = report.paired_t_test([0.5], [0.25])  # one pair: no test
    assert t != t and p != p
    # and a case by hand, not by scipy: differences 1, 2, 3 → mean 2, sd 1, t = 2 sqrt 3, 2 dof
    t, p = report.paired_t_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert t == pytest.approx(2 * 3**0.5)
    assert p == pytest.approx(1 - t / (2 + t * t) ** 0.5, rel=1e-9)


def test_constant_differences_in_the_table_are_significant(tmp_path):
    """sd == 0 through summarize/build_table: p = 0 (significant at any alpha), ΔAUC std 0."""
    base = {1: 0.5, 2: 0.75, 3: 0.625}
    for seed, auc in base.items():
        write_pipeline_stage(tmp_path, f"s{seed}", "scratch", seed=seed, auc=auc)
        write_pipeline_stage(tmp_path, f"s{seed}", "finetune_id", seed=seed, auc=auc + 0.125)
    frame = report.collect([tmp_path])
    row = report.summarize(frame, baseline="scratch").filter(pl.col("model") == "FLIP_ID").row(0, named=True)
    assert row["p_paired_t"] == 0.0 and row["auc_diff_mean"] == 0.125 and row["auc_diff_std"] == 0.0
    _, markdown = report.build_table(frame, "overall", baseline="dcnv2", alpha=0.001)
    rows = {r[0]: r for r in rows_of(markdown)}
    assert rows["FLIP_ID"][1].endswith("*")
