"""The Hydra configs and the `flip-ctr` entry point.

Composition of `train` and `pipeline` with every option of every config group, bad overrides,
one end-to-end `flip-ctr pipeline` run on the ML-100K fixture (tiny random PLM, one epoch per
stage), and a malformed data file reported by name.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf, open_dict

import fixtures_data as fx
from oracles import check_test_outputs
from flip_ctr.config import ConfigError, validate_config
from test_datamodule import make_dm, write_ml100k_fixture

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("id_model", "ablation", "plm", "stage", "protocol", "id_recipe")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(name: str, overrides: list[str], tmp_path: Path | None = None):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        extra = [f"paths.output_dir={tmp_path}"] if tmp_path is not None else []
        cfg = compose(config_name=name, overrides=overrides + extra, return_hydra_config=tmp_path is not None)
        if tmp_path is not None:
            # what the Hydra app does before running the job: ${hydra:...} interpolations resolve
            HydraConfig.instance().set_config(cfg)
            resolved = cfg.copy()
            with open_dict(resolved):
                del resolved["hydra"]
            OmegaConf.resolve(resolved)
            return resolved
        return cfg


def test_every_group_has_options():
    from flip_ctr.models.id import ID_MODELS

    for group in GROUPS:
        assert options(group), group
    # every registered ID model is selectable under its own name; variants (dcnv2_mix) build a registered one
    assert set(ID_MODELS) <= set(options("id_model"))
    for option in options("id_model"):
        assert OmegaConf.to_container(compose_cfg("train", [f"id_model={option}"]).id_model)["name"] in ID_MODELS, option


def option_rows() -> list[dict[str, str]]:
    """Enough override sets that every option of every group is composed at least once
    (row i takes option i mod n of each group): 2 x max(n) compositions instead of 2 x sum(n)."""
    per_group = {g: options(g) for g in GROUPS}
    width = max(len(v) for v in per_group.values())
    return [{g: opts[i % len(opts)] for g, opts in per_group.items()} for i in range(width)]


CLS_POOLED_PLMS = {o for o in options("plm") if OmegaConf.load(CONF / "plm" / f"{o}.yaml").get("pooling") == "cls"}
CASES = [(name, row) for name in ("train", "pipeline") for row in option_rows()]


@pytest.mark.parametrize(("config", "row"), CASES, ids=[f"{c}-{'-'.join(r.values())}" for c, r in CASES])
def test_compose_every_option(config, row, tmp_path):
    import hydra
    import torch

    from flip_ctr.models.plm import resolve_plm_path
    from flip_ctr.stages.pretrain import AlignmentConfig
    from flip_ctr.train import build_id_model

    # the pipeline's stages are packaged stage configs: swap the scratch slot
    stage_key = "stage" if config == "train" else "stage@stages.scratch"
    overrides = [f"{stage_key if g == 'stage' else g}={o}" for g, o in row.items()]
    if config == "pipeline" and row.get("ablation") == "token_masking":
        # the CPU scale's per-field text states cannot mask single tokens (refused with this hint:
        # tests/test_field_text_states.py)
        overrides.append("stages.pretrain.text_encoding=row")
    if config == "pipeline" and row.get("plm") in CLS_POOLED_PLMS:
        # nor give a cls-pooled PLM's ICL a row-dependent [CLS] state (refused: test_field_text_states)
        overrides.append("stages.pretrain.text_encoding=row")
    cfg = compose_cfg(config, overrides, tmp_path)
    for group, option in row.items():
        if group == "id_recipe":  # a global package: it names itself
            assert cfg.id_recipe_name == option
            continue
        chosen = cfg.stages.scratch if (config == "pipeline" and group == "stage") else cfg[group]
        if group == "id_model" and option == "dcnv2_mix":  # a variant: builds DCNv2 with the mixture cross net
            assert chosen.name == "dcnv2" and chosen.cross_type == "mix"
            continue
        assert chosen.name == option, (group, option)
    assert cfg.paths.output_dir == str(tmp_path)
    validate_config(cfg)  # every shipped option passes the checks run before a job
    # the pieces the chosen options feed are usable
    stages = [cfg.stage] if config == "train" else list(cfg.stages.values())
    for stage in stages:
        assert callable(hydra.utils.instantiate(stage.builder)) and stage.batch_size > 0 and stage.max_epochs >= 1
    alignment = {k: v for k, v in OmegaConf.to_container(cfg.ablation).items() if k not in ("name", "pretrain")}
    AlignmentConfig(**alignment)
    assert cfg.data._target_ == "flip_ctr.data.datamodule.CTRDataModule"

    class FakeData:
        num_features, num_fields = 40, 5

    model = build_id_model(cfg, FakeData())
    v, logit = model(torch.randint(0, 40, (3, 5)))
    assert logit.shape == (3,) and v.shape == (3, model.representation_dim)
    resolve_plm_path(cfg.plm.name_or_path)  # a local alias resolves, a hub name passes through
    if config == "pipeline":
        assert set(cfg.strategies) <= set(cfg.stages)


def test_option_rows_cover_every_option():
    rows = option_rows()
    for group in GROUPS:
        assert {r[group] for r in rows} == set(options(group))


@pytest.mark.parametrize("config", ["train", "pipeline"])
@pytest.mark.parametrize("override", ["id_model=nope", "ablation=nope", "plm=nope", "stage=nope", "ablation.use_mlmm=false"])
def test_bad_override_fails(config, override):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg(config, [override])
    if override.endswith("=nope"):
        group = override.split("=")[0]
        if not (config == "pipeline" and group == "stage"):
            assert "nope" in str(err.value)


# ----------------------------------------------------------------------------- the entry point


def flip_ctr_command() -> list[str]:
    script = Path(sys.executable).parent / "flip-ctr"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "flip_ctr.cli"]


def quiet_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HYDRA_FULL_ERROR": "0"}


def test_pipeline_end_to_end(tmp_path):
    data = write_ml100k_fixture(tmp_path / "data" / "ml-100k")
    logs = tmp_path / "logs"
    strategies = list(compose_cfg("pipeline", []).strategies)
    overrides = [
        "plm=tiny_random",
        f"data.data_dir={data}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"paths.log_dir={logs}",
        "stages.pretrain.max_epochs=1",
        "stages.pretrain.batch_size=64",
        *[f"stages.{s}.max_epochs=1" for s in strategies],
        # every batch of the tiny fixture (a fraction of its ~6 batches would be < 1 batch)
        *[f"stages.{s}.limit_train_batches=null" for s in ["pretrain", *strategies]],
        "logger=csv",
        "num_threads=1",
        "ablation.head_hidden_dim=32",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "flip_ctr.cli", "pipeline", *overrides],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=quiet_env(),
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    summaries = list(logs.rglob("summary.md"))
    assert len(summaries) == 1, summaries
    run = summaries[0].parent
    from flip_ctr.train import STRATEGY_LABELS

    rows = [line.split("|")[1].strip() for line in summaries[0].read_text().splitlines()[2:] if line.strip()]
    assert rows == [STRATEGY_LABELS[s] for s in strategies] and len(set(rows)) == len(strategies) == 4
    expected = make_dm(data, tmp_path / "cache").artifact  # the cache the run wrote
    for strategy in strategies:
        # metrics.json = the oracles' AUC / logloss of the non-constant predictions.parquet
        metrics = check_test_outputs(run / strategy, expected)
        assert metrics["num_test_rows"] == expected.num_test and metrics["dataset"] == "ml100k"
        # the ID model trained from scratch never touches a PLM: none is recorded for it
        assert metrics["plm"] == (None if strategy == "scratch" else "tiny_random"), strategy
        # the CPU scale validates (and selects) only the ID-only stages; the single-pass PLM stages skip it
        validated = OmegaConf.load(run / strategy / "config.yaml").stages[strategy].get("validate", True)
        assert (metrics["best_val_auc"] is not None) == validated, strategy
        assert (run / strategy / "predictions.parquet").is_file()
    assert (run / "pretrain" / "aligned" / "id_model.pt").is_file()
    assert (run / "pretrain" / "aligned" / "plm" / "config.json").is_file()
    # the finetuning strategies started from the aligned models, the scratch baseline did not
    for strategy in strategies:
        stage = OmegaConf.load(run / strategy / "config.yaml").stages[strategy]
        if "pretrained_dir" in stage:
            assert Path(stage.pretrained_dir) == run / "pretrain" / "aligned"
    assert "pretrained_dir" not in OmegaConf.load(run / "scratch" / "config.yaml").stages.scratch
    # the CPU-scale FLIP starts from this pipeline's finetuned FLIP_ID and FLIP_PLM weights
    joint = OmegaConf.load(run / "finetune_joint" / "config.yaml").stages.finetune_joint
    assert joint.warm_start and Path(joint.warm_start_checkpoints.id_checkpoint) == run / "finetune_id" / "checkpoints" / "best.ckpt"
    assert "alpha" in json.loads((run / "finetune_joint" / "metrics.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert [m["strategy"] for m in summary] == strategies

    # A pipeline killed while testing FLIP, rerun into the same directory with
    # skip_completed_stages: only FLIP runs again; the finished stages are reused untouched.
    joint_metrics = run / "finetune_joint" / "metrics.json"
    joint_metrics.write_text(json.dumps({k: v for k, v in json.loads(joint_metrics.read_text()).items() if k != "stage"}))
    finished = [run / "pretrain" / "aligned" / "id_model.pt", *[run / s / "metrics.json" for s in strategies[:-1]]]
    before = {path: path.stat().st_mtime_ns for path in finished}
    rerun = [*overrides, f"hydra.run.dir={run}", "skip_completed_stages=true"]
    proc = subprocess.run(
        [sys.executable, "-m", "flip_ctr.cli", "pipeline", *rerun],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=quiet_env(),
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    assert {path: path.stat().st_mtime_ns for path in finished} == before
    assert json.loads(joint_metrics.read_text())["stage"] == "finetune_joint"
    assert [m["strategy"] for m in json.loads((run / "summary.json").read_text())] == strategies
    # reusing a finished stage computed under another config is refused, naming what differs
    proc = subprocess.run(
        [sys.executable, "-m", "flip_ctr.cli", "pipeline", *rerun, "seed=7"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=quiet_env(),
    )
    assert proc.returncode != 0 and "seed" in proc.stderr and "skip_completed_stages" in proc.stderr, proc.stderr[-3000:]


def test_malformed_ratings_file_is_named(tmp_path):
    data = write_ml100k_fixture(tmp_path / "ml-100k")
    bad = fx.write_lines(data / "u.data", ["1,1,5,874965758", "2,2,4,874965759"])  # comma- instead of tab-separated
    proc = subprocess.run(
        [*flip_ctr_command(), "train", f"data.data_dir={data}", f"data.cache_dir={tmp_path / 'cache'}",
         f"paths.log_dir={tmp_path / 'logs'}", "logger=none"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=quiet_env(),
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    # one line on stderr: the file, the line, and why; no traceback
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("flip-ctr train:")]
    assert f"{bad} line 1" in line and "separat" in line, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("ml100k-*/manifest.json"))


BAD_VALUES = [
    ("ablation.text_mask_ratio=1.5", "ablation.text_mask_ratio must be in (0, 1], got 1.5"),
    ("ablation.tab_mask_ratio=0", "ablation.tab_mask_ratio must be in (0, 1], got 0"),
    ("ablation.temperature=0", "ablation.temperature must be a number > 0, got 0"),
    ("ablation.num_noise=0", "ablation.num_noise must be an integer >= 1, got 0"),
    ("ablation.noise_scope=batch", "ablation.noise_scope must be one of field, global, got 'batch'"),
    ("ablation.use_icl=maybe", "ablation.use_icl must be true or false, got 'maybe'"),
    ("seed=abc", "seed must be an integer >= 0, got 'abc'"),
    ("data.test_fraction=1.0", "data.test_fraction must be in (0, 1), got 1.0"),
    ("data.batch_size=0", "data.batch_size must be an integer >= 1, got 0"),
    ("trainer.max_epochs=0", "trainer.max_epochs must be an integer >= 1, got 0"),
    ("num_threads=0", "num_threads must be an integer >= 1, got 0"),
    ("data=table", "data.schema is required with data=table"),
    ("ablation.nce=plain", "ablation.nce must be one of corrected, negative_sampling, got 'plain'"),
    ("ablation.icl_projection=cosine", "ablation.icl_projection must be one of layernorm, l2, got 'cosine'"),
    ("protocol.patience=0", "protocol.patience must be an integer >= 1, got 0"),
    ("protocol.select_on=test", "protocol.select_on=test is the paper protocol's rule alone (protocol=refit"),
    ("regularization.l2.embedding=-1e-5", "regularization.l2.embedding must be a number >= 0, got -1e-05"),
    ("id_model.cross_type=lowrank", "id_model.cross_type must be one of full, mix, got 'lowrank'"),
    ("data.engine=disk", "data.engine must be one of memory, streaming, got 'disk'"),
    # train.py sets the protocol's patience on the callback: a value given there would be lost
    ("callbacks.early_stopping.patience=5", "callbacks.early_stopping.patience=5 differs from protocol.patience=2"),
]


@pytest.mark.parametrize("config", ["train", "pipeline"])
@pytest.mark.parametrize(("override", "message"), BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_invalid_values_are_named_when_the_config_is_composed(config, override, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        validate_config(compose_cfg(config, [override], tmp_path))
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        ("train", ["stage.lr=-1"], "stage.lr must be a number > 0, got -1"),
        ("train", ["stage.optimizer=sgd"], "stage.optimizer must be one of adam, lazy_adam, got 'sgd'"),
        ("train", ["stage.optimizer=adamw"], "stage.optimizer must be one of adam, lazy_adam, got 'adamw'"),
        ("train", ["stage=pretrain", "stage.optimizer=lazy_adam"], "stage.optimizer must be one of adamw, lazy_adamw, got 'lazy_adam'"),
        ("pipeline", ["stages.pretrain.optimizer=adam"], "stages.pretrain.optimizer must be one of adamw, lazy_adamw, got 'adam'"),
        ("train", ["stage.limit_train_batches=1.5"], "stage.limit_train_batches must be null, an integer >= 1"),
        ("pipeline", ["stages.pretrain.batch_size=0"], "stages.pretrain.batch_size must be an integer >= 1, got 0"),
        ("pipeline", ["stages.finetune_plm.lr_plm=0"], "stages.finetune_plm.lr_plm must be a number > 0, got 0"),
        ("pipeline", ["strategies=[scratch,nope]"], "strategies: unknown strategy 'nope'"),
    ],
)
def test_invalid_stage_values_are_named(config, overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(compose_cfg(config, overrides, tmp_path))


@pytest.mark.parametrize(("command", "override", "message"), [
    ("train", "ablation.text_mask_ratio=1.5", "ablation.text_mask_ratio must be in (0, 1], got 1.5"),
    ("pipeline", "ablation.temperature=0", "ablation.temperature must be a number > 0, got 0"),
    ("train", "seed=abc", "seed must be an integer >= 0, got 'abc'"),
])
def test_cli_reports_an_invalid_value_in_one_line_before_running(tmp_path, command, override, message):
    args = [*flip_ctr_command(), command, override, f"paths.log_dir={tmp_path / 'logs'}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=quiet_env())
    assert proc.returncode == 2 and proc.stderr.strip() == f"flip-ctr {command}: {message}", proc.stderr[-3000:]
    assert not list((tmp_path / "run").rglob("metrics.json")) and not (tmp_path / "run" / "config.yaml").exists()
    # the traceback on request
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**quiet_env(), "HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr and message in proc.stderr


def test_help_and_unknown_command():
    proc = subprocess.run([*flip_ctr_command(), "help"], capture_output=True, text=True, timeout=60, env=quiet_env())
    assert proc.returncode == 0 and "pipeline" in proc.stdout and "train" in proc.stdout
    proc = subprocess.run([*flip_ctr_command(), "nope"], capture_output=True, text=True, timeout=60, env=quiet_env())
    assert proc.returncode != 0 and "nope" in proc.stderr


def test_config_dir_points_at_this_repository():
    from flip_ctr.cli import config_dir

    assert Path(config_dir()).resolve() == CONF.resolve()


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_experiment_values_reach_the_composed_config(experiment):
    # An experiment's own values (task_name, strategies, stage limits) must win over the entry
    # config's defaults, or `experiment=X` silently runs something else.
    cfg = compose_cfg("pipeline", [f"experiment={experiment}"])
    own = OmegaConf.to_container(OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml"))
    own.pop("defaults", None)
    assert own, experiment
    for key, value in _leaves(own):
        assert OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(cfg, key)}))["v"] == value, (experiment, key)
