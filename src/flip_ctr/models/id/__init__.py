"""ID-based CTR models (FLIP's tabular modality).

Every model has the constructor ``(num_features, num_fields, embedding_dim=32,
dnn_hidden_units=(300, 300, 128), dropout=0.0, **model_specific_kwargs)`` and
``forward(feature_ids [B, F]) -> (v [B, representation_dim], logit [B])``, and exposes
``embedding`` (table of ``num_features + 1`` rows, the last being ``<MASK>``),
``mask_feature_id``, ``representation_dim`` and ``num_fields``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .afm import AFM
from .afn import AFN
from .autoint import AutoInt
from .dcn import DCN
from .dcnv2 import DCNv2
from .deepfm import DeepFM
from .layers import MLP, FeatureEmbedding, LinearTerm, PairwiseProduct
from .pnn import PNN
from .wide_deep import WideDeep
from .xdeepfm import XDeepFM

ID_MODELS: dict[str, type[nn.Module]] = {
    "afm": AFM,
    "pnn": PNN,
    "wide_deep": WideDeep,
    "dcn": DCN,
    "deepfm": DeepFM,
    "xdeepfm": XDeepFM,
    "autoint": AutoInt,
    "dcnv2": DCNv2,
    "afn": AFN,
}


def build_id_model(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the ID model registered as ``name`` (e.g. ``"dcnv2"``) with ``kwargs``."""
    try:
        model_cls = ID_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown ID model {name!r}; valid names: {', '.join(sorted(ID_MODELS))}") from None
    return model_cls(**kwargs)


__all__ = [
    "AFM",
    "AFN",
    "DCN",
    "ID_MODELS",
    "MLP",
    "PNN",
    "AutoInt",
    "DCNv2",
    "DeepFM",
    "FeatureEmbedding",
    "LinearTerm",
    "PairwiseProduct",
    "WideDeep",
    "XDeepFM",
    "build_id_model",
]
