"""`flip-ctr train` (one stage) and `flip-ctr pipeline` (pretrain → finetuning strategies).

Thin on purpose (lightning-hydra-template style): compose the config, instantiate datamodule,
module, callbacks, loggers and trainer, fit, test. Everything interesting lives in the
datamodule, the stage LightningModules and the models.

A stage config (conf/stage/*.yaml) names a ``builder`` below, whether the stage reads text,
and its batch size / epochs / learning rates.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from flip_ctr.atomic import atomic_write_text

log = logging.getLogger(__name__)


# -- builders: (cfg, stage, datamodule, stage_dir) → LightningModule ------------------------------
def _id_model_spec(cfg: DictConfig, datamodule) -> dict:
    spec = OmegaConf.to_container(cfg.id_model, resolve=True)
    spec.pop("_target_", None)
    return {**spec, "num_features": datamodule.num_features, "num_fields": datamodule.num_fields}


def build_id_model(cfg: DictConfig, datamodule) -> torch.nn.Module:
    from flip_ctr.models.id import build_id_model as build

    return build(**_id_model_spec(cfg, datamodule))


def build_plm(plm_cfg: DictConfig) -> torch.nn.Module:
    from flip_ctr.models.plm import PLMEncoder

    if plm_cfg.get("random_init"):
        return PLMEncoder.random_like(plm_cfg.name_or_path, pooling=plm_cfg.get("pooling"), **plm_cfg.random_init)
    return PLMEncoder.from_pretrained(
        plm_cfg.name_or_path,
        keep_layers=plm_cfg.get("keep_layers"),
        gradient_checkpointing=plm_cfg.get("gradient_checkpointing", False),
        pooling=plm_cfg.get("pooling"),
    )


def _load_plm(cfg: DictConfig, stage: DictConfig) -> torch.nn.Module:
    if stage.get("pretrained_dir"):
        from flip_ctr.stages.checkpoints import load_aligned_plm

        return load_aligned_plm(Path(stage.pretrained_dir), gradient_checkpointing=cfg.plm.get("gradient_checkpointing", False))
    return build_plm(cfg.plm)


def _load_id_model(cfg: DictConfig, stage: DictConfig, datamodule) -> torch.nn.Module:
    if stage.get("pretrained_dir"):
        from flip_ctr.stages.checkpoints import load_id_model

        model, spec = load_id_model(Path(stage.pretrained_dir))
        if spec["num_features"] != datamodule.num_features:
            raise ValueError(
                f"aligned ID model in {stage.pretrained_dir} has {spec['num_features']} features, the data has "
                f"{datamodule.num_features}: it was pretrained on another dataset or preprocessing"
            )
        return model
    return build_id_model(cfg, datamodule)


def _id_training(cfg: DictConfig, stage: DictConfig) -> dict:
    """The ID model's loss options (conf/id_recipe/: L2 coefficients by group and BCE reduction)
    and the stage's optimizer (adam | lazy_adam)."""
    reg = OmegaConf.to_container(cfg.get("regularization") or {}, resolve=True)
    return {"l2": reg.get("l2") or {}, "bce_reduction": reg.get("bce_reduction", "mean"), "optimizer": stage.get("optimizer", "adam")}


def build_ctr(cfg, stage, datamodule, stage_dir):
    from flip_ctr.stages.ctr import CTRModule

    return CTRModule(build_id_model(cfg, datamodule), lr=stage.lr, weight_decay=stage.weight_decay, **_id_training(cfg, stage))


def build_finetune_id(cfg, stage, datamodule, stage_dir):
    from flip_ctr.stages.finetune_id import FinetuneIDModule

    return FinetuneIDModule(
        _load_id_model(cfg, stage, datamodule), lr=stage.lr, weight_decay=stage.weight_decay, **_id_training(cfg, stage)
    )


def build_finetune_plm(cfg, stage, datamodule, stage_dir):
    from flip_ctr.stages.finetune import FinetunePLMModule

    return FinetunePLMModule(_load_plm(cfg, stage), lr_plm=stage.lr_plm, weight_decay=stage.weight_decay)


def build_finetune_joint(cfg, stage, datamodule, stage_dir):
    from flip_ctr.stages.finetune import FinetuneJointModule

    module = FinetuneJointModule(
        _load_id_model(cfg, stage, datamodule),
        _load_plm(cfg, stage),
        lr_id=stage.lr_id,
        lr_plm=stage.lr_plm,
        lr_alpha=stage.get("lr_alpha"),
        weight_decay=stage.weight_decay,
    )
    if stage.get("warm_start_checkpoints"):
        module.warm_start(**stage.warm_start_checkpoints)
    return module


def build_pretrain(cfg, stage, datamodule, stage_dir):
    from flip_ctr.stages.pretrain import AlignmentPretrainModule

    alignment = OmegaConf.to_container(cfg.ablation, resolve=True)
    for key in ("name", "pretrain"):
        alignment.pop(key, None)
    artifact = datamodule.artifact
    return AlignmentPretrainModule(
        id_model=build_id_model(cfg, datamodule),
        plm=build_plm(cfg.plm),
        feature_frequencies=torch.as_tensor(artifact.feature_frequencies, dtype=torch.float),
        field_offsets=artifact.space.field_offsets,
        alignment=alignment,
        lr=stage.lr,
        id_lr=stage.get("id_lr"),
        weight_decay=stage.weight_decay,
        warmup_ratio=stage.get("warmup_ratio", 0.0),
        seed=cfg.seed,
        save_dir=str(Path(stage_dir) / "aligned"),
        id_model_spec=_id_model_spec(cfg, datamodule),
        freeze_plm=stage.get("freeze_plm", False),
        text_encoding=stage.get("text_encoding", "row"),
        text_pieces=datamodule.text,
        optimizer=stage.get("optimizer", "adamw"),
    )


# -- running one stage ---------------------------------------------------------------------------------
def instantiate_group(cfg: DictConfig | None, stage_dir: Path, key: str) -> list:
    """Instantiates each entry of a callbacks/logger group, pointing its ``key`` dir at the stage."""
    objects = []
    for entry in (cfg or {}).values():
        if entry is None or "_target_" not in entry:
            continue
        overrides = {key: str(stage_dir / ("checkpoints" if key == "dirpath" else ""))} if key in entry else {}
        objects.append(hydra.utils.instantiate(entry, **overrides))
    return objects


def make_datamodule(cfg: DictConfig, stage: DictConfig):
    tokenizer = cfg.plm.name_or_path if stage.get("needs_text") and "plm" in cfg else None
    return hydra.utils.instantiate(cfg.data, tokenizer=tokenizer, batch_size=stage.batch_size)


def run_stage(cfg: DictConfig, stage: DictConfig, stage_dir: Path, datamodule=None) -> dict:
    """Fit + test one stage in ``stage_dir`` under ``cfg.protocol``; returns the test metrics
    (also in metrics.json). Pretraining has no labels and no protocol: it fits and returns."""
    stage_dir = Path(stage_dir)
    if datamodule is None:
        L.seed_everything(cfg.seed, workers=True)  # the same for every stage, whatever ran before
        datamodule = make_datamodule(cfg, stage)
        datamodule.prepare_data()
        datamodule.setup()
    if stage.name == "pretrain":
        # The reference pretrains on the whole training part; `fit` keeps the validation slice out.
        plan = FitPlan(stage.get("train_split", "fit"), None, None, _stage_epochs(cfg, stage))
        return _fit(cfg, stage, stage_dir, datamodule, plan, test=False)
    protocol = _protocol(cfg)
    labels = {"protocol": protocol.label, "protocol_name": protocol.name}
    if not stage.get("validate", True):
        # Nothing to select (one short pass, CPU scale): train on the protocol's training rows.
        plan = FitPlan(protocol.final_split, None, None, _stage_epochs(cfg, stage))
        return _fit(cfg, stage, stage_dir, datamodule, plan, record=labels)
    if protocol.name != "refit":
        plan = FitPlan(protocol.fit_split, protocol.select_on, protocol.patience, _stage_epochs(cfg, stage))
        return _fit(cfg, stage, stage_dir, datamodule, plan, record=labels)
    # refit: choose the epoch count on the validation slice, then train again from the same
    # initialisation on the whole training part for that many epochs and test once.
    select = FitPlan("fit", "val", protocol.patience, _stage_epochs(cfg, stage))
    selection = _fit(cfg, stage, stage_dir / "selection", datamodule, select, test=False)
    epochs = selection["selected_epochs"]
    log.info(
        "refit: %s selected %d epoch(s) on validation (AUC %.4f); retraining on the whole training part",
        stage.name, epochs, selection["best_val_auc"],
    )
    record = {**labels, "best_val_auc": selection["best_val_auc"], "selection_fit_seconds": selection["fit_seconds"]}
    metrics = _fit(cfg, stage, stage_dir, datamodule, FitPlan("train", None, None, epochs), record=record)
    return metrics


@dataclass(frozen=True)
class FitPlan:
    """One Trainer.fit: which rows train, which split selects the checkpoint (None: the last
    weights, no validation pass), early-stopping patience, and the epoch budget."""

    train_split: str
    select_on: str | None
    patience: int | None
    max_epochs: int


@dataclass(frozen=True)
class Protocol:
    """conf/protocol/: how label-trained stages fit, select and report (see those files)."""

    name: str
    label: str
    fit_split: str  # rows that train the selected model (paper: the whole training part)
    select_on: str  # "val" (the validation slice) or "test" (paper protocol only)
    patience: int

    @property
    def final_split(self) -> str:
        return "fit" if self.name == "holdout" else "train"


def _protocol(cfg: DictConfig) -> Protocol:
    """The protocol block, checked by the same rules as at config time (flip_ctr.config), so a
    caller of run_stage that skipped the CLI's validation cannot select on test either."""
    from flip_ctr.config import check_protocol

    p = cfg.get("protocol")
    if p is None:
        raise ValueError("no protocol in the config: add `protocol: refit` (or paper/holdout) to the defaults list")
    check_protocol(cfg)
    return Protocol(name=p.name, label=p.label, fit_split=p.fit_split, select_on=p.select_on, patience=int(p.patience))


def _fit(
    cfg: DictConfig, stage: DictConfig, stage_dir: Path, datamodule, plan: FitPlan, test: bool = True, record: dict | None = None
) -> dict:
    """Build the stage's module (seeded: the same initialisation every time), fit it under
    ``plan``, and (``test``) evaluate the selected weights on the test split; ``record`` is
    written into metrics.json beside them."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    datamodule.train_split = plan.train_split
    datamodule.val_split = plan.select_on or "val"
    module = hydra.utils.call(stage.builder)(cfg=cfg, stage=stage, datamodule=datamodule, stage_dir=stage_dir)
    is_pretrain = stage.name == "pretrain"
    from flip_ctr.callbacks import SpeedMonitor

    callbacks = instantiate_group(cfg.get("callbacks"), stage_dir, "dirpath")
    if is_pretrain:  # no validation and no checkpoints here, but the other callbacks (NaN guard) apply
        from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

        callbacks = [c for c in callbacks if not isinstance(c, (EarlyStopping, ModelCheckpoint))]
    elif plan.select_on is None:
        callbacks = _without_model_selection(callbacks)
    else:
        _set_patience(callbacks, plan.patience)
    callbacks.append(SpeedMonitor())
    loggers = instantiate_group(cfg.get("logger"), stage_dir, "save_dir")
    # Epochs and batch limits are per stage; an explicit trainer.* value on the command line wins.
    trainer_overrides = {"default_root_dir": str(stage_dir), "max_epochs": plan.max_epochs}
    limit = stage.get("limit_train_batches")
    if limit is not None and cfg.trainer.get("limit_train_batches") is None:
        if isinstance(limit, float) and 0 < limit < 1:
            # A share of the batches, but at least one (Lightning refuses a share that rounds to 0).
            limit = max(1, int(limit * len(datamodule.train_dataloader())))
        trainer_overrides["limit_train_batches"] = limit
    if is_pretrain:
        trainer_overrides.update(limit_val_batches=0, enable_checkpointing=False)
    elif plan.select_on is None:
        # Nothing to select: skip the validation pass (through a PLM it costs minutes) and keep
        # the final weights.
        trainer_overrides["limit_val_batches"] = 0
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **trainer_overrides)
    (stage_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=_resume_checkpoint(cfg, stage_dir))
    fit_seconds = time.perf_counter() - start
    # DDP: rank 0 writes the stage's artifacts (aligned/, checkpoints) in on_fit_end; no rank may
    # go on to read them (next stage) before that is done.
    trainer.strategy.barrier("flip_ctr_fitted")
    if is_pretrain:
        return {"stage": stage.name, "fit_seconds": fit_seconds}
    selection_score = _best_score(trainer) if plan.select_on else None
    fitted = {
        # Under the paper protocol the selecting score is a test AUC: never call it validation.
        "best_val_auc": selection_score if plan.select_on == "val" else None,
        "selection_auc": selection_score,
        "selected_epochs": _selected_epochs(trainer) if plan.select_on else trainer.current_epoch,
        "epochs_trained": trainer.current_epoch,
        "train_split": plan.train_split,
        "train_rows": _split_rows(datamodule, plan.train_split),
        "fit_seconds": fit_seconds,
    }
    if not test or not cfg.get("test", True):
        return {"stage": stage.name, **fitted}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    trainer.test(module, datamodule=datamodule, ckpt_path="best" if best else None)
    trainer.strategy.barrier("flip_ctr_tested")  # DDP: rank 0 has written metrics.json
    metrics = json.loads((stage_dir / "metrics.json").read_text())
    metrics.update(
        dataset=datamodule.dataset_name,
        id_model=cfg.id_model.get("name"),
        id_variant=_id_variant(cfg),
        id_recipe=cfg.get("id_recipe_name"),
        plm=_plm_used(cfg, stage),
        stage=stage.name,
        ablation=cfg.ablation.get("name") if "ablation" in cfg else None,
        seed=cfg.seed,
        **{**fitted, **(record or {})},  # the protocol's record wins (refit: the selection's val AUC)
    )
    if trainer.is_global_zero:
        # Atomic: skip_completed_stages reads a complete metrics.json as "this stage finished".
        atomic_write_text(stage_dir / "metrics.json", json.dumps(metrics, indent=2))
    for lg in loggers:
        lg.log_metrics({f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    return metrics


def _id_variant(cfg: DictConfig) -> str:
    """The ID model as results tables name it: its registry name, ``dcnv2_mix`` for DCN-Mix."""
    name = cfg.id_model.get("name")
    return f"{name}_mix" if cfg.id_model.get("cross_type") == "mix" else name


def _stage_epochs(cfg: DictConfig, stage: DictConfig) -> int:
    """The stage's epoch budget; an explicit ``trainer.max_epochs`` on the command line wins."""
    return int(cfg.trainer.get("max_epochs") or stage.max_epochs)


def _resume_checkpoint(cfg: DictConfig, stage_dir: Path) -> str | None:
    """``ckpt_path`` resumes the fit that wrote it. Under refit a stage fits twice (``selection/``,
    then the stage dir itself): a checkpoint of one of them is not loaded into the other."""
    path = cfg.get("ckpt_path")
    if not path:
        return None
    checkpoint_dir = Path(path).resolve().parent
    fits = {(stage_dir / "checkpoints").resolve(), (stage_dir / "selection" / "checkpoints").resolve()}
    if stage_dir.name == "selection":
        fits.add((stage_dir.parent / "checkpoints").resolve())
    if checkpoint_dir in fits and checkpoint_dir != (stage_dir / "checkpoints").resolve():
        return None  # the other fit of this stage wrote it
    return path


def _set_patience(callbacks: list, patience: int | None) -> None:
    from lightning.pytorch.callbacks import EarlyStopping

    for c in callbacks:
        if isinstance(c, EarlyStopping) and patience is not None:
            c.patience = patience


def _selected_epochs(trainer) -> int:
    """Epochs behind the selected (best) checkpoint: its saved ``epoch`` is 0-based."""
    callback = trainer.checkpoint_callback
    if callback is None or not callback.best_model_path:
        return trainer.current_epoch
    checkpoint = torch.load(callback.best_model_path, map_location="cpu", weights_only=False)
    return int(checkpoint["epoch"]) + 1


def _split_rows(datamodule, split: str) -> int:
    start, stop = datamodule.artifact.split_ranges[split]
    return stop - start


def _plm_used(cfg: DictConfig, stage: DictConfig) -> str | None:
    """The PLM a stage's result depends on: None for an ID model trained from scratch (ctr, or
    finetune_id without aligned weights), which never touches one."""
    if "plm" not in cfg or (stage.name in ("ctr", "finetune_id") and not stage.get("pretrained_dir")):
        return None
    return cfg.plm.get("name")


def _without_model_selection(callbacks: list) -> list:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    kept = [c for c in callbacks if not isinstance(c, EarlyStopping)]
    for c in kept:
        if isinstance(c, ModelCheckpoint):
            c.monitor = None  # save_top_k=1 with no monitor: the latest weights are "best"
    return kept


def _best_score(trainer) -> float | None:
    score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    return float(score) if score is not None else None


def run(cfg: DictConfig) -> dict:
    """`flip-ctr train`: one stage, in the Hydra run directory."""
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    return run_stage(cfg, cfg.stage, Path(cfg.paths.output_dir))


STRATEGY_LABELS = {
    "ctr": "ID model from scratch",
    "scratch": "ID model from scratch",
    "finetune_id": "FLIP_ID",
    "finetune_plm": "FLIP_PLM",
    "finetune_joint": "FLIP",
}


def run_pipeline(cfg: DictConfig) -> list[dict]:
    """`flip-ctr pipeline`: alignment pretraining once, then every strategy in ``cfg.strategies``."""
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    out = Path(cfg.paths.output_dir)
    skip_completed = bool(cfg.get("skip_completed_stages", False))
    aligned = None
    if cfg.ablation.get("pretrain", True) and any(s != "scratch" for s in cfg.strategies):
        if not (skip_completed and _completed_stage(cfg, "pretrain", out / "pretrain") is not None):
            run_stage(cfg, cfg.stages.pretrain, out / "pretrain")
        aligned = str(out / "pretrain" / "aligned")
    results = []
    for strategy in cfg.strategies:
        if strategy not in cfg.stages:
            raise ValueError(f"unknown strategy {strategy!r}; known: {list(cfg.stages)}")
        stage = cfg.stages[strategy]
        if "pretrained_dir" in stage:
            with open_dict(stage):
                stage.pretrained_dir = aligned
        if stage.get("warm_start"):
            with open_dict(stage):
                stage.warm_start_checkpoints = _finetuned_checkpoints(out, cfg.strategies, strategy)
        done = _completed_stage(cfg, strategy, out / strategy) if skip_completed else None
        metrics = done if done is not None else run_stage(cfg, stage, out / strategy)
        metrics["strategy"] = strategy
        results.append(metrics)
    table = format_table(results)
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0:  # DDP: every rank ran the pipeline; one writes its summary
        atomic_write_text(out / "summary.json", json.dumps(results, indent=2))
        (out / "summary.md").write_text(table + "\n")
        print(table)
    return results


# What must match for an earlier stage run to stand in for this one (num_threads, paths, loggers,
# callbacks and the list of strategies may differ: they do not change what the stage computes).
_STAGE_IDENTITY = ("data", "id_model", "plm", "ablation", "trainer", "seed", "protocol", "regularization")


def _completed_stage(cfg: DictConfig, key: str, stage_dir: Path) -> dict | None:
    """``skip_completed_stages=true``: the result of an earlier, finished run of ``stages.<key>`` in
    ``stage_dir`` (so a killed pipeline rerun into the same directory picks up where it stopped),
    or None when it has to run. A finished stage run with a different config is an error, not a
    silent reuse."""
    name = cfg.stages[key].name
    if name == "pretrain":
        finished = all((stage_dir / "aligned" / f).exists() for f in ("id_model.pt", "plm/config.json", "alignment_heads.pt"))
        metrics = {"stage": "pretrain"}
    else:
        path = stage_dir / "metrics.json"
        # run_stage adds "stage" as the very last write; a run killed during test lacks it.
        metrics = json.loads(path.read_text()) if path.is_file() else {}
        finished = "stage" in metrics
    if not finished:
        return None
    now = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    earlier = _relocated(OmegaConf.load(stage_dir / "config.yaml"), now)
    differ = [k for k in (*_STAGE_IDENTITY, f"stages.{key}") if OmegaConf.select(earlier, k) != OmegaConf.select(now, k)]
    if differ:
        raise ValueError(
            f"skip_completed_stages: {stage_dir} holds a finished {name} run with a different "
            f"config ({', '.join(differ)} differ from {stage_dir / 'config.yaml'}); use a new "
            "hydra.run.dir or delete that stage directory"
        )
    log.info("skip_completed_stages: %s already finished in %s, reusing it", name, stage_dir)
    return metrics


def _relocated(earlier: DictConfig, now: DictConfig) -> DictConfig:
    """The earlier config with its run directory's paths moved to this run's: a run dir copied or
    moved elsewhere is the same run (trainer.default_root_dir, a stage's pretrained_dir and
    warm-start checkpoints name the run dir itself, not what the stage computes)."""
    from flip_ctr.callbacks import relocate

    old, new = OmegaConf.select(earlier, "paths.output_dir"), OmegaConf.select(now, "paths.output_dir")
    if not old or not new or old == new:
        return earlier

    def move(value):
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        return [move(v) for v in value] if isinstance(value, list) else relocate(value, old, new)

    return OmegaConf.create(move(OmegaConf.to_container(earlier)))


def _finetuned_checkpoints(out: Path, strategies, strategy: str) -> dict:
    """Best checkpoints of this pipeline's FLIP_ID and FLIP_PLM runs (for a warm-started FLIP)."""
    found = {}
    for source, key in (("finetune_id", "id_checkpoint"), ("finetune_plm", "plm_checkpoint")):
        path = out / source / "checkpoints" / "best.ckpt"
        if source not in strategies or list(strategies).index(source) > list(strategies).index(strategy) or not path.is_file():
            raise ValueError(
                f"stages.{strategy}.warm_start=true needs {source} to run before {strategy} in this pipeline "
                f"(strategies={list(strategies)}); no checkpoint at {path}"
            )
        found[key] = str(path)
    return found


def format_table(results: list[dict]) -> str:
    header = "| model | dataset | ID model | PLM | ablation | seed | test AUC | test Logloss | fit s | protocol |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for m in results:
        label = STRATEGY_LABELS.get(m.get("strategy", m.get("stage")), m.get("stage"))
        lines.append(
            f"| {label} | {m.get('dataset')} | {m.get('id_model')} | {m.get('plm') or '-'} | {m.get('ablation') or '-'} "
            f"| {m.get('seed')} | {m['auc']:.4f} | {m['logloss']:.4f} | {m.get('fit_seconds', 0):.0f} | {m.get('protocol', '-')} |"
        )
    return "\n".join(lines)
