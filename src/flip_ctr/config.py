"""Config helpers of `flip-ctr train` / `flip-ctr pipeline`: the ``table_name`` resolver and the
validation of config values, run on the composed config before anything else happens.

``validate_config(cfg)`` raises :class:`ConfigError` naming the key, what it may be and what it
got (``ablation.text_mask_ratio must be in (0, 1], got 1.5``); the CLI prints that one line and
exits with status 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """An invalid config value; the message names the key."""


# -- resolvers ------------------------------------------------------------------------------
def table_name(schema: str | None) -> str:
    """``${table_name:${data.schema}}``: the ``name:`` of a table's YAML schema (run folders), or
    "table" when it cannot be read yet (the loader then reports why, naming the file)."""
    from flip_ctr.data.schema import DataError
    from flip_ctr.data.sources.table_schema import read_table_schema

    if not schema:
        return "table"
    try:
        return read_table_schema(schema)["name"]
    except (DataError, OSError):
        return "table"


OmegaConf.register_new_resolver("table_name", table_name, replace=True)


# -- value checks ---------------------------------------------------------------------------
# A check returns None when the value is fine, else what the value must be ("an integer >= 1").
Check = Callable[[Any], "str | None"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def integer(minimum: int) -> Check:
    return lambda v: None if _is_int(v) and v >= minimum else f"an integer >= {minimum}"


def number(low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if _is_number(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high):
            return None
        if high == math.inf:
            return f"a number {'>' if low_open else '>='} {low:g}"
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    return check


def one_of(*choices: Any) -> Check:
    return lambda v: None if v in choices else f"one of {', '.join(map(str, choices))}"


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def optional(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


def batch_limit(v: Any) -> str | None:
    """Lightning's limit_*_batches: a count >= 1 or a share in (0, 1]."""
    if v is None or (_is_int(v) and v >= 1) or (isinstance(v, float) and 0 < v <= 1):
        return None
    return "null, an integer >= 1 (batches) or a number in (0, 1] (a share)"


TOP_RULES: dict[str, Check] = {
    "seed": integer(0),
    "num_threads": optional(integer(1)),
    "test": boolean,
    "trainer.max_epochs": optional(integer(1)),
    "trainer.limit_train_batches": batch_limit,
    "trainer.limit_val_batches": batch_limit,
}
DATA_RULES: dict[str, Check] = {
    "test_fraction": number(0, 1, low_open=True, high_open=True),
    "val_fraction": number(0, 1, high_open=True),
    "batch_size": integer(1),
    "eval_batch_size": integer(1),
    "max_length": integer(8),
    "max_value_tokens": integer(1),
    "num_workers": integer(0),
    "num_rows": integer(1),  # data=synthetic_goodreads
    "train_split": one_of("fit", "train"),
    "engine": one_of("memory", "streaming"),
}
ABLATION_RULES: dict[str, Check] = {
    "pretrain": boolean,
    "use_mlm": boolean,
    "use_mtm": boolean,
    "use_icl": boolean,
    "joint_reconstruction": boolean,
    "field_level_masking": boolean,
    "text_mask_ratio": number(0, 1, low_open=True),
    "tab_mask_ratio": number(0, 1, low_open=True),
    "temperature": number(0, low_open=True),
    "icl_dim": integer(1),
    "num_noise": integer(1),
    "noise_scope": one_of("field", "global"),
    "head_hidden_dim": integer(1),
    "icl_projection": one_of("layernorm", "l2"),
    "nce": one_of("corrected", "negative_sampling"),
    "mtm_input": one_of("masked_and_attended", "attended"),
    "mlm_vocabulary": one_of("full", "text"),
    "remove_accidental_hits": optional(boolean),
}
PROTOCOL_RULES: dict[str, Check] = {
    "name": one_of("refit", "paper", "holdout"),
    "fit_split": one_of("fit", "train"),
    "select_on": one_of("val", "test"),
    "patience": integer(1),
}
ID_MODEL_RULES: dict[str, Check] = {
    "embedding_dim": integer(1),
    "dropout": number(0, 1, high_open=True),
    "linear_term": boolean,
    "embedding_init_std": number(0, low_open=True),
    "cross_type": one_of("full", "mix"),
    "num_cross_layers": integer(1),
    "num_experts": integer(1),
    "low_rank": integer(1),
}
REGULARIZATION_RULES: dict[str, Check] = {
    **{f"l2.{group}": number(0) for group in ("embedding", "linear", "head", "cross")},
    "bce_reduction": one_of("mean", "sum"),
}
STAGE_RULES: dict[str, Check] = {
    "batch_size": integer(1),
    "max_epochs": integer(1),
    "limit_train_batches": batch_limit,
    "lr": number(0, low_open=True),
    "lr_id": number(0, low_open=True),
    "lr_plm": number(0, low_open=True),
    "id_lr": optional(number(0, low_open=True)),
    "lr_alpha": optional(number(0, low_open=True)),
    "weight_decay": number(0),
    "warmup_ratio": number(0, 1, high_open=True),
    "validate": boolean,
    "needs_text": boolean,
    "train_split": one_of("fit", "train"),
    "freeze_plm": boolean,
    "text_encoding": one_of("row", "per_field"),
}


def _check_group(cfg: DictConfig, prefix: str, rules: dict[str, Check]) -> None:
    node = OmegaConf.select(cfg, prefix) if prefix else cfg
    if node is None:
        return
    for key, check in rules.items():
        full = f"{prefix}.{key}" if prefix else key
        if OmegaConf.select(cfg, full, default="<absent>") == "<absent>":
            continue  # a group that does not use this key (e.g. a stage without lr_plm)
        value = OmegaConf.select(cfg, full)
        expected = check(value)
        if expected is not None:
            raise ConfigError(f"{full} must be {expected}, got {value!r}")


def _missing_values(cfg: DictConfig) -> None:
    try:
        missing = sorted(OmegaConf.missing_keys(cfg))
    except OmegaConfBaseException as err:  # e.g. an interpolation to a key that does not exist
        raise ConfigError(str(err).splitlines()[0]) from err
    if missing:
        raise ConfigError(f"{missing[0]} has no value (???): set it on the command line, e.g. {missing[0]}=...")


def _check_data(cfg: DictConfig) -> None:
    _check_group(cfg, "data", DATA_RULES)
    data = cfg.data
    if data.get("dataset") == "table" and not (data.get("schema") or (data.get("loader_kwargs") or {}).get("schema_yaml")):
        raise ConfigError("data.schema is required with data=table: data.path=FILE_OR_DIR data.schema=SCHEMA.yaml (docs/own_data.md)")
    if data.get("dataset") == "table" and not (data.get("path") or data.get("data_dir") or (data.get("loader_kwargs") or {}).get("path")):
        raise ConfigError("data.path is required with data=table: data.path=FILE_OR_DIR data.schema=SCHEMA.yaml (docs/own_data.md)")


def check_protocol(cfg: DictConfig) -> None:
    """The protocol's values, and select_on=test only under the paper protocol (also used by run_stage)."""
    _check_group(cfg, "protocol", PROTOCOL_RULES)
    protocol = cfg.get("protocol")
    if protocol is not None and (protocol.get("select_on") == "test") != (protocol.get("name") == "paper"):
        raise ConfigError(
            f"protocol.select_on=test is the paper protocol's rule alone (protocol={protocol.get('name')}, "
            f"select_on={protocol.get('select_on')}): the test split may not choose anything under another protocol"
        )
    _check_patience(cfg)


def _check_patience(cfg: DictConfig) -> None:
    """The protocol owns early stopping's patience (train.py sets it on the callback): a value given
    to the callback itself would be overwritten without a word, so it is refused instead."""
    stopping = OmegaConf.select(cfg, "callbacks.early_stopping", default=None)
    patience = OmegaConf.select(cfg, "protocol.patience", default=None)
    if stopping is None or patience is None or "patience" not in stopping:
        return
    if stopping.patience != patience:
        raise ConfigError(
            f"callbacks.early_stopping.patience={stopping.patience} differs from protocol.patience={patience}, which "
            f"the protocol sets on the callback: set protocol.patience={stopping.patience} instead"
        )


def _stage_prefixes(cfg: DictConfig) -> list[str]:
    if "stages" in cfg:
        return [f"stages.{name}" for name in cfg.stages]
    return ["stage"] if "stage" in cfg else []


def _check_text_encoding(cfg: DictConfig, prefix: str) -> None:
    stage = OmegaConf.select(cfg, prefix)
    if stage.get("text_encoding", "row") != "per_field":
        return
    from flip_ctr.models.field_text_states import per_field_encoding_problem

    ablation = cfg.get("ablation") or {}
    problem = per_field_encoding_problem(
        bool(stage.get("freeze_plm", False)),
        bool(ablation.get("use_mlm", True)),
        bool(ablation.get("field_level_masking", True)),
        use_icl=bool(ablation.get("use_icl", True)),
        pooling=OmegaConf.select(cfg, "plm.pooling", default=None),  # None: the checkpoint's, checked when built
    )
    if problem:
        raise ConfigError(problem.replace("stages.pretrain.", f"{prefix}."))


def _check_strategies(cfg: DictConfig) -> None:
    if "strategies" not in cfg or "stages" not in cfg:
        return
    unknown = [s for s in cfg.strategies if s not in cfg.stages]
    if unknown:
        raise ConfigError(f"strategies: unknown strategy {unknown[0]!r}; known: {', '.join(cfg.stages)}")


def validate_config(cfg: DictConfig) -> None:
    """Raises ConfigError for the first invalid value of a `train` or `pipeline` config."""
    _missing_values(cfg)
    _check_group(cfg, "", TOP_RULES)
    _check_data(cfg)
    _check_group(cfg, "ablation", ABLATION_RULES)
    _check_group(cfg, "id_model", ID_MODEL_RULES)
    _check_group(cfg, "regularization", REGULARIZATION_RULES)
    check_protocol(cfg)
    for prefix in _stage_prefixes(cfg):
        _check_group(cfg, prefix, STAGE_RULES)
        # pretraining's optimizer is AdamW (paper §V-A4), the CTR stages' Adam (the reference's)
        pretraining = OmegaConf.select(cfg, f"{prefix}.name") == "pretrain"
        _check_group(cfg, prefix, {"optimizer": one_of(*(("adamw", "lazy_adamw") if pretraining else ("adam", "lazy_adam")))})
        _check_text_encoding(cfg, prefix)
    _check_strategies(cfg)


__all__ = ["ConfigError", "table_name", "validate_config"]
