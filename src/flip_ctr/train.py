"""`flip-ctr train`: compose the config, instantiate the pieces, fit, test.

Thin on purpose (lightning-hydra-template style): everything interesting lives in the
datamodule, the stage's LightningModule and the models; this file only wires them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def instantiate_dict(cfg: DictConfig | None) -> list:
    """Instantiates every entry of a config group dict (callbacks, loggers); skips nulls."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def build_id_model(cfg: DictConfig, datamodule) -> torch.nn.Module:
    return hydra.utils.instantiate(cfg.id_model, num_features=datamodule.num_features, num_fields=datamodule.num_fields)


def build_module(cfg: DictConfig, datamodule) -> L.LightningModule:
    """The stage's LightningModule with its models. Stage configs name a builder or a module."""
    builder = cfg.stage.get("builder")
    if builder:
        return hydra.utils.call(builder, cfg=cfg, datamodule=datamodule)
    return hydra.utils.instantiate(cfg.stage.module, model=build_id_model(cfg, datamodule))


def run(cfg: DictConfig) -> dict:
    """Fit + test one configuration; returns the test metrics (also in <run dir>/metrics.json)."""
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    module = build_module(cfg, datamodule)
    callbacks = instantiate_dict(cfg.get("callbacks"))
    loggers = instantiate_dict(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    run_dir = Path(trainer.default_root_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics: dict = {}
    if cfg.get("test"):
        has_best = trainer.checkpoint_callback is not None and trainer.checkpoint_callback.best_model_path
        trainer.test(module, datamodule=datamodule, ckpt_path="best" if has_best else None)
        metrics_file = run_dir / "metrics.json"
        if metrics_file.exists():
            metrics = json.loads(metrics_file.read_text())
            metrics.update(
                dataset=cfg.data.dataset,
                id_model=cfg.id_model.get("name"),
                stage=cfg.stage.name,
                seed=cfg.seed,
                best_val_auc=float(trainer.checkpoint_callback.best_model_score)
                if has_best and trainer.checkpoint_callback.best_model_score is not None
                else None,
                epochs_trained=trainer.current_epoch,
            )
            metrics_file.write_text(json.dumps(metrics, indent=2))
            for lg in loggers:
                lg.log_metrics({f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    return metrics


def print_metrics(metrics: dict) -> None:
    if not metrics:
        return
    rows = [("dataset", "model", "stage", "seed", "test AUC", "test Logloss")]
    rows.append(
        (
            str(metrics.get("dataset")),
            str(metrics.get("id_model")),
            str(metrics.get("stage")),
            str(metrics.get("seed")),
            f"{metrics['auc']:.4f}",
            f"{metrics['logloss']:.4f}",
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
