"""conf/hparams_search/: every sweep config composes with the command it is written for, sweeps
keys that exist in that command's config over the paper's values, and the Optuna config loads
the plugin and runs a (2-trial) study end to end on the ML-100K fixture."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from test_cli import quiet_env
from test_datamodule import write_ml100k_fixture

CONF = Path(__file__).resolve().parents[1] / "conf"
SEARCHES = sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml"))
# config → (command config, extra overrides, {swept key: the paper's values})
PAPER_LRS = [1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3]
EXPECTED = {
    "finetune_lr": ("train", ["stage=finetune_id"], {"stage.lr": PAPER_LRS}),
    "finetune_plm_lr": ("train", ["stage=finetune_plm"], {"stage.lr_plm": PAPER_LRS}),
    "ablations": ("pipeline", [], {"ablation": sorted(p.stem for p in (CONF / "ablation").glob("*.yaml"))}),
    "mask_ratio_text": ("pipeline", [], {"ablation.text_mask_ratio": [0.15, 0.3, 0.6]}),
    "mask_ratio_tab": ("pipeline", [], {"ablation.tab_mask_ratio": [0.15, 0.3, 0.6]}),
    "temperature": ("pipeline", [], {"ablation.temperature": [0.05, 0.1, 0.3, 0.5, 0.7, 1.0]}),
    "optuna_finetune": ("train", ["stage=finetune_id"], {}),
}


def search_override(config: str, name: str) -> str:
    """`hparams_search=X` once the primary config lists `hparams_search: null`, else `+hparams_search=X`."""
    defaults = yaml.safe_load((CONF / f"{config}.yaml").read_text())["defaults"]
    listed = any(isinstance(d, dict) and "hparams_search" in d for d in defaults)
    return f"{'' if listed else '+'}hparams_search={name}"


def compose_search(name: str, extra: list[str] = ()):
    config, overrides, _ = EXPECTED[name]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        overrides = [*overrides, *extra, search_override(config, name)]
        return compose(config_name=config, overrides=overrides, return_hydra_config=True)


def swept_values(value: str) -> list:
    (override,) = OverridesParser.create().parse_overrides([f"key={value}"])
    return list(override.sweep_iterator())


def test_every_search_config_is_covered():
    assert set(SEARCHES) == set(EXPECTED)


@pytest.mark.parametrize("name", [n for n in SEARCHES if n != "optuna_finetune"])
def test_grid_search_composes_and_sweeps_the_papers_values(name):
    cfg = compose_search(name)
    assert str(cfg.hydra.mode).endswith("MULTIRUN")  # runs as a sweep without -m
    params = dict(cfg.hydra.sweeper.params)
    _, _, expected = EXPECTED[name]
    for key, values in expected.items():
        got = swept_values(params.pop(key))
        assert (sorted(got) if key == "ablation" else got) == values, key
        if key != "ablation":  # the swept key exists in the job config (a typo would add a new key)
            assert OmegaConf.select(cfg, key) is not None, key
    assert swept_values(params.pop("seed")) == [1, 2, 3]
    assert not params, params


def test_optuna_search_composes_and_its_search_space_parses():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from optuna.distributions import CategoricalDistribution, LogUniformDistribution

    cfg = compose_search("optuna_finetune")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    space, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert not fixed
    lr = space["stage.lr"]
    assert isinstance(lr, LogUniformDistribution) and (lr.low, lr.high) == (min(PAPER_LRS), max(PAPER_LRS))
    assert isinstance(space["stage.weight_decay"], CategoricalDistribution)
    for key in space:
        assert OmegaConf.select(cfg, key) is not None, key


def test_optuna_study_runs_and_records_the_best_trial(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    data = write_ml100k_fixture(tmp_path / "data" / "ml-100k")
    logs = tmp_path / "logs"
    proc = subprocess.run(
        [sys.executable, "-m", "flip_ctr.cli", "train", search_override("train", "optuna_finetune"),
         "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2", f"data.data_dir={data}",
         f"data.cache_dir={tmp_path / 'cache'}", f"paths.log_dir={logs}", "logger=none", "num_threads=1", "stage.max_epochs=1"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=quiet_env(),
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    (results,) = logs.rglob("optimization_results.yaml")
    best = yaml.safe_load(results.read_text())
    trials = [json.loads(p.read_text()) for p in sorted(results.parent.glob("*/metrics.json"))]
    assert len(trials) == 2
    lrs = [OmegaConf.load(p.parent / "config.yaml").stage.lr for p in sorted(results.parent.glob("*/metrics.json"))]
    assert lrs[0] != lrs[1] and all(1e-5 <= lr <= 5e-3 for lr in lrs)  # sampled from the search space
    # the study maximised each trial's VALIDATION AUC, never its test AUC (selecting on test is a leak)
    val = [t["best_val_auc"] for t in trials]
    test = [t["auc"] for t in trials]
    assert all(v is not None for v in val), trials
    # the fixture tells the two apart: a sweep optimising the test AUC gives a different best value
    assert max(val) != pytest.approx(max(test), abs=1e-9), trials
    assert best["best_value"] == pytest.approx(max(val), abs=1e-12), (best, trials)
    winner = trials[val.index(max(val))]
    assert best["best_params"]["stage.lr"] == pytest.approx(lrs[trials.index(winner)])
