"""The checkpoint contract between pretraining and finetuning.

``<dir>/id_model.pt``: ``{"spec": {"name": ..., **constructor kwargs}, "state_dict": ...}`` —
enough to rebuild the aligned ID model with no PLM code and no transformers import, which is
what lets FLIP_ID be trained, evaluated and served as a plain ID model.

``<dir>/plm/``: the aligned encoder in Hugging Face ``save_pretrained`` format (+ tokenizer),
loadable by any HF-compatible tool as well as by :func:`load_aligned_plm`.

Writes are atomic (temp path, then rename), so a crash never leaves a half-written file, and each
written file's SHA-256 is recorded in ``<dir>/checksums.json``; the loaders below check it before
parsing and refuse a changed file with one line (:mod:`flip_ctr.integrity`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from flip_ctr.atomic import atomic_directory, atomic_path
from flip_ctr.integrity import record_tree, verify_tree

ID_MODEL_FILE = "id_model.pt"
PLM_DIR = "plm"
# The pretraining heads (MLM/MTM/ICL) and the alignment config: not needed to finetune, but the
# analyses (e.g. the masked-text vs masked-tabular similarity map) use the ICL projections.
HEADS_FILE = "alignment_heads.pt"


def _atomic_torch_save(payload: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    record_tree(path.parent, path)


def _verified_torch_load(path: Path) -> dict:
    verify_tree(path.parent, path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def submodule_state(state_dict: dict, prefix: str) -> dict:
    """The entries of a LightningModule checkpoint that belong to one attribute (``prefix``,
    e.g. ``model``), keyed as that submodule's own ``state_dict``."""
    return {k.removeprefix(f"{prefix}."): v for k, v in state_dict.items() if k.startswith(f"{prefix}.")}


def save_id_model(path: Path, model: nn.Module, spec: dict) -> None:
    _atomic_torch_save({"spec": dict(spec), "state_dict": _cpu_state(model)}, path)


def save_heads(path: Path, heads: dict[str, nn.Module], alignment_config: dict) -> None:
    _atomic_torch_save({"config": dict(alignment_config), "heads": {k: _cpu_state(m) for k, m in heads.items()}}, path)


def load_heads(directory: Path) -> dict:
    path = Path(directory) / HEADS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no pretraining heads at {path} (written by pretraining since flip-ctr 0.1)")
    return _verified_torch_load(path)


def load_id_model_payload(path: Path) -> dict:
    """``{"spec", "state_dict"}`` of an ``id_model.pt`` (or of the directory holding it), verified."""
    path = Path(path)
    if path.is_dir():
        path = path / ID_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no aligned ID model at {path} (expected the {ID_MODEL_FILE} written by pretraining)")
    return _verified_torch_load(path)


def load_id_model(path: Path) -> tuple[nn.Module, dict]:
    """Rebuilds the ID model from ``spec`` and loads its weights; imports no PLM code."""
    from flip_ctr.models.id import build_id_model

    payload = load_id_model_payload(path)
    spec = dict(payload["spec"])
    model = build_id_model(**spec)
    model.load_state_dict(payload["state_dict"])
    return model, spec


def save_aligned(directory: Path, id_model: nn.Module, id_model_spec: dict, plm: nn.Module) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_id_model(directory / ID_MODEL_FILE, id_model, id_model_spec)
    with atomic_directory(directory / PLM_DIR) as tmp:
        plm.save_pretrained(tmp)
    record_tree(directory, directory / PLM_DIR)


def load_aligned_plm(directory: Path, **kwargs) -> nn.Module:
    path = Path(directory) / PLM_DIR
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no aligned PLM at {path} (expected the {PLM_DIR}/ directory written by pretraining)")
    verify_tree(directory, path)  # before transformers is imported: a refusal costs nothing
    from flip_ctr.models.plm import PLMEncoder

    return PLMEncoder.from_pretrained(str(path), **kwargs)
