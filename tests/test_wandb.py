"""W&B tracking (`logger=wandb`, offline by default) on the ML-100K fixture.

The documented command `WANDB_MODE=offline flip-ctr train logger=wandb ...` must leave an
offline W&B run directory whose summary holds the test AUC of metrics.json, whose config is the
run's resolved config, whose history holds the losses, and which carries a `results` table; a
pipeline gives one W&B run per stage, each named after dataset/model/stage/ablation/seed. The
offline runs are read back from their transaction logs (flip_ctr.tracking.read_offline_run).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flip_ctr.tracking import FlipWandbLogger, find_offline_runs, read_offline_run, run_name
from test_cli import compose_cfg, quiet_env
from test_datamodule import write_ml100k_fixture

pytest.importorskip("wandb")


def wandb_env(tmp: Path) -> dict:
    return {
        **quiet_env(),
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp / "wandb_dir"),
        "WANDB_CACHE_DIR": str(tmp / "wandb_cache"),
        "WANDB_CONFIG_DIR": str(tmp / "wandb_config"),
        "WANDB_SILENT": "true",
    }


def flip_ctr(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "flip_ctr.cli", *args], capture_output=True, text=True, timeout=300, cwd=tmp, env=wandb_env(tmp)
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    return proc


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_ml100k_fixture(tmp_path_factory.mktemp("wandb_data") / "ml-100k")


def common(data: Path, tmp: Path) -> list[str]:
    return [f"data.data_dir={data}", f"data.cache_dir={tmp / 'cache'}", f"paths.log_dir={tmp / 'logs'}", "logger=wandb",
            "num_threads=1", "trainer.log_every_n_steps=1"]


def results_table(run_dir: Path, summary: dict) -> dict:
    table = json.loads((run_dir / "files" / summary["results"]["path"]).read_text())
    assert len(table["data"]) == 1
    return dict(zip(table["columns"], table["data"][0]))


@pytest.mark.parametrize(("config", "stage_dir", "expected"), [
    ("train", ".", "ml100k-autoint-finetune_id-no_icl-s5"),
    ("pipeline", "finetune_joint", "ml100k-autoint+tiny_random-finetune_joint-no_icl-s5"),
    ("pipeline", "scratch", "ml100k-autoint-scratch-no_icl-s5"),
])
def test_logger_config_names_the_stage(config, stage_dir, expected, tmp_path):
    """conf/logger/wandb.yaml composes for both commands; the pipeline's stage comes from its directory."""
    from flip_ctr.train import instantiate_group

    overrides = ["logger=wandb", "id_model=autoint", "ablation=no_icl", "seed=5", "plm=tiny_random"]
    cfg = compose_cfg(config, overrides + (["stage=finetune_id"] if config == "train" else []), tmp_path)
    (logger,) = instantiate_group(cfg.logger, tmp_path / stage_dir, "save_dir")  # as run_stage does
    assert isinstance(logger, FlipWandbLogger) and logger._offline  # offline by default
    assert logger._wandb_init["name"] == expected and logger._wandb_init["group"] == tmp_path.name
    assert Path(logger.save_dir) == tmp_path / stage_dir
    assert logger._experiment is None  # nothing started yet


def test_train_writes_an_offline_run_with_the_test_auc(data, tmp_path):
    flip_ctr(["train", *common(data, tmp_path), "id_model=deepfm", "seed=7", "stage.max_epochs=1"], tmp_path)
    (metrics_path,) = (tmp_path / "logs").rglob("metrics.json")
    metrics = json.loads(metrics_path.read_text())
    # protocol=refit: the selection fit (epoch count on validation) and the final fit are two runs
    runs = find_offline_runs(metrics_path.parent)
    assert sorted(r.parent for r in runs) == sorted([metrics_path.parent / "wandb", metrics_path.parent / "selection" / "wandb"])
    selection = read_offline_run(next(r for r in runs if r.parent.parent.name == "selection"))
    assert selection["name"] == "ml100k-deepfm-ctr-full-s7-selection" and selection["job_type"] == "ctr-selection"
    runs = [r for r in runs if r.parent == metrics_path.parent / "wandb"]
    run = read_offline_run(runs[0])
    assert run["name"] == "ml100k-deepfm-ctr-full-s7" == run_name("ml100k", "deepfm", "ctr", "full", 7)
    assert run["job_type"] == "ctr" and {"ml100k", "deepfm", "ctr"} <= set(run["tags"])
    summary = run["summary"]
    assert summary["test/auc"] == pytest.approx(metrics["auc"], abs=1e-7)
    assert summary["test/logloss"] == pytest.approx(metrics["logloss"], abs=1e-7)
    assert summary["final/num_test_rows"] == metrics["num_test_rows"]
    # config: the resolved Hydra config; history: the training losses step by step
    assert run["config"]["data"]["dataset"] == "ml100k" and run["config"]["seed"] == 7
    assert run["config"]["id_model"]["name"] == "deepfm"
    losses = [row["train/loss"] for row in run["history"] if "train/loss" in row]
    assert len(losses) >= 2 and all(loss > 0 for loss in losses)
    row = results_table(runs[0], summary)
    assert row["auc"] == pytest.approx(metrics["auc"], abs=1e-7) and row["stage"] == "ctr" and row["seed"] == 7


def test_pipeline_gives_one_named_run_per_stage(data, tmp_path):
    flip_ctr(
        ["pipeline", *common(data, tmp_path), "plm=tiny_random", "ablation=no_mtm", "seed=3", "strategies=[finetune_id]",
         "stages.pretrain.max_epochs=1", "stages.pretrain.batch_size=64", "stages.pretrain.limit_train_batches=2",
         "stages.finetune_id.max_epochs=1", "ablation.head_hidden_dim=32"],
        tmp_path,
    )
    (summary_path,) = (tmp_path / "logs").rglob("summary.json")
    run_dir = summary_path.parent
    runs = {path.parents[1].name: read_offline_run(path) for path in find_offline_runs(run_dir)}
    # one W&B run per fit, in its own directory: under protocol=refit FLIP_ID fits twice
    assert set(runs) == {"pretrain", "finetune_id", "selection"}
    assert runs["selection"]["name"] == "ml100k-dcnv2-finetune_id-no_mtm-s3-selection"
    assert runs["selection"]["job_type"] == "finetune_id-selection" and runs["selection"]["group"] == run_dir.name
    assert runs["pretrain"]["name"] == "ml100k-dcnv2+tiny_random-pretrain-no_mtm-s3"
    assert runs["finetune_id"]["name"] == "ml100k-dcnv2-finetune_id-no_mtm-s3"
    assert runs["pretrain"]["id"] != runs["finetune_id"]["id"]
    assert runs["pretrain"]["group"] == runs["finetune_id"]["group"] == run_dir.name
    assert any("pretrain/icl" in row for row in runs["pretrain"]["history"])  # pretraining losses
    assert not any("pretrain/mtm" in row for row in runs["pretrain"]["history"])  # ablated term
    metrics = json.loads((run_dir / "finetune_id" / "metrics.json").read_text())
    assert runs["finetune_id"]["summary"]["test/auc"] == pytest.approx(metrics["auc"], abs=1e-7)
    assert "test/auc" not in runs["pretrain"]["summary"]


def test_logger_in_process_names_finishes_and_reads_back(tmp_path, monkeypatch):
    """Two stages in one process get two runs; a record larger than a 32 KiB log block is read back."""
    for key, value in wandb_env(tmp_path).items():
        if key.startswith("WANDB"):
            monkeypatch.setenv(key, value)
    import wandb

    first = FlipWandbLogger(dataset="toy", id_model="dcnv2", ablation="full", seed=1, save_dir=str(tmp_path / "pretrain"),
                            run_dir=str(tmp_path), plm="tiny", offline=True, project="flip-ctr-test")
    first.log_hyperparams({"ablation": {"temperature": 0.3}, "seed": 1})
    big = "x" * 70_000  # spans three 32 KiB blocks of the transaction log
    first.experiment.summary["big"] = big
    first.log_metrics({"pretrain/loss": 1.5}, step=0)
    first_id = first.experiment.id
    second = FlipWandbLogger(dataset="toy", id_model="dcnv2", ablation="full", seed=1, save_dir=str(tmp_path / "finetune_id"),
                             run_dir=str(tmp_path), plm="tiny", offline=True, project="flip-ctr-test")
    second.log_metrics({"final/auc": 0.75, "final/logloss": 0.5, "final/seed": 1}, step=3)
    assert second.experiment.id != first_id  # the first stage's run was finished, not reused
    wandb.finish()
    runs = {path.parents[1].name: read_offline_run(path) for path in find_offline_runs(tmp_path)}
    assert runs["pretrain"]["name"] == "toy-dcnv2+tiny-pretrain-full-s1"
    assert runs["pretrain"]["config"]["ablation"] == {"temperature": 0.3}
    assert runs["pretrain"]["summary"]["big"] == big and runs["pretrain"]["summary"]["pretrain/loss"] == 1.5
    assert runs["finetune_id"]["name"] == "toy-dcnv2-finetune_id-full-s1"  # ID-only stage: no PLM in the name
    assert runs["finetune_id"]["summary"]["test/auc"] == 0.75
    row = results_table(find_offline_runs(tmp_path / "finetune_id")[0], runs["finetune_id"]["summary"])
    assert row == {"dataset": "toy", "id_model": "dcnv2", "plm": "tiny", "stage": "finetune_id", "ablation": "full", "seed": 1,
                   "auc": 0.75, "logloss": 0.5}
