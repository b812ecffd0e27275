"""Building blocks shared by the ID-based CTR models.

Feature-id layout (set by the data pipeline): every (field, value) pair has one global id in
``[0, num_features)``; field ``f`` owns a contiguous range whose first id is that field's OOV
id. One extra id, ``num_features``, is the single ``<MASK>`` feature that FLIP's masked
tabular modelling substitutes for a masked field. All tables here therefore have
``num_features + 1`` rows, and the mask row is trained like any other feature.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# Embedding init std. Small keeps the initial logits near zero and the SVD plots of a fresh
# table isotropic; not *too* small because several models (FM, IPNN, AFM, CIN) multiply
# embeddings together, so their gradients scale with the embedding norm and a 1e-4 init
# would leave those interaction terms nearly dead for the first epoch.
EMBEDDING_INIT_STD = 1e-2


class _FeatureTable(nn.Embedding):
    """A table with one row per feature plus the ``<MASK>`` row. An ``nn.Embedding`` so that
    DDP sees ``sparse`` and all-reduces a sparse gradient as one (it checks for that class);
    ``sparse = True`` (set by :func:`flip_ctr.stages.lazy_adam.use_sparse_embedding_gradients`)
    makes the gradient hold only the batch's rows."""

    def __init__(self, weight: torch.Tensor):
        # _weight: nn.Embedding's own initialisation is skipped (it would draw from the RNG)
        super().__init__(weight.shape[0], weight.shape[1], _weight=weight)


class FeatureEmbedding(_FeatureTable):
    """One embedding table for all fields: ``[B, F]`` global ids -> ``[B, F, D]``.

    ``weight`` has ``num_features + 1`` rows; the last one is the ``<MASK>`` feature.
    """

    def __init__(self, num_features: int, embedding_dim: int, init_std: float = EMBEDDING_INIT_STD):
        if num_features <= 0 or embedding_dim <= 0:
            raise ValueError(f"num_features and embedding_dim must be positive, got {num_features}, {embedding_dim}")
        weight = torch.empty(num_features + 1, embedding_dim)
        nn.init.normal_(weight, std=init_std)
        super().__init__(weight)
        self.num_features = num_features
        self.mask_feature_id = num_features

    # forward: nn.Embedding's, F.embedding(feature_ids, weight, sparse=self.sparse) with no padding row or max norm

    def extra_repr(self) -> str:
        return f"num_features={self.num_features} (+1 mask), embedding_dim={self.embedding_dim}"


class LinearTerm(nn.Module):
    """First-order term ``b + sum_f w[x_f]``: one scalar weight per feature -> ``[B]``.

    Used by the models with a "wide"/linear part (Wide&Deep, DeepFM, xDeepFM, AFM).
    Zero init so the term starts neutral and the model starts from the deep part.
    The table is a child module so that DDP, which takes every parameter of an ``nn.Embedding``
    with ``sparse`` set for a sparse one, does not take the dense bias for one too.
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.table = _FeatureTable(torch.zeros(num_features + 1, 1))
        self.bias = nn.Parameter(torch.zeros(()))
        self._register_load_state_dict_pre_hook(_linear_term_table_key)

    @property
    def weight(self) -> nn.Parameter:
        return self.table.weight

    def forward(self, feature_ids: torch.LongTensor) -> torch.Tensor:
        return self.table(feature_ids).sum(dim=(1, 2)) + self.bias

    def extra_repr(self) -> str:
        return f"num_features={self.table.num_embeddings - 1} (+1 mask)"


def _linear_term_table_key(state_dict, prefix, *args) -> None:
    # checkpoints written before the table became a child module name it `<prefix>weight`
    if prefix + "weight" in state_dict and prefix + "table.weight" not in state_dict:
        state_dict[prefix + "table.weight"] = state_dict.pop(prefix + "weight")


class MLP(nn.Module):
    """``(Linear -> [BatchNorm] -> ReLU -> Dropout) x len(hidden_units)``.

    Every layer, the last included, ends with the activation: the output is a hidden
    representation (the models put their own ``Linear(., 1)`` head on top). With no hidden
    units it is the identity, so ``output_dim == input_dim``.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_units: Sequence[int],
        dropout: float = 0.0,
        batch_norm: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        dim = input_dim
        for units in hidden_units:
            layers.append(nn.Linear(dim, units))
            if batch_norm:
                layers.append(nn.BatchNorm1d(units))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            dim = units
        self.net = nn.Sequential(*layers)
        self.output_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PairwiseProduct(nn.Module):
    """Element-wise products of every field pair ``i < j``: ``[B, F, D]`` -> ``[B, F(F-1)/2, D]``.

    AFM pools these vectors with attention; IPNN sums them over ``D`` to get inner products.
    """

    def __init__(self, num_fields: int):
        super().__init__()
        rows, cols = torch.triu_indices(num_fields, num_fields, offset=1)
        # Buffers so the index tensors follow the module to the right device.
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.num_pairs = rows.numel()

    def forward(self, field_emb: torch.Tensor) -> torch.Tensor:
        return field_emb[:, self.rows] * field_emb[:, self.cols]
