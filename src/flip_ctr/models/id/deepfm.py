"""DeepFM (Guo et al., IJCAI 2017).

logit = FM(x) + w^T DNN(flat embeddings), with the FM (first + second order) and the DNN
sharing one embedding table. ``v`` is the DNN's last hidden layer; the FM terms are added to
the logit only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import EMBEDDING_INIT_STD, FeatureEmbedding, LinearTerm, MLP


def fm_second_order(field_emb: torch.Tensor) -> torch.Tensor:
    """``sum_{i<j} <e_i, e_j>`` in O(F*D) via ``((sum e)^2 - sum e^2) / 2`` -> ``[B]``."""
    square_of_sum = field_emb.sum(dim=1).pow(2)
    sum_of_square = field_emb.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)


class DeepFM(nn.Module):
    def __init__(
        self,
        num_features: int,
        num_fields: int,
        embedding_dim: int = 32,
        dnn_hidden_units: Sequence[int] = (300, 300, 128),
        dropout: float = 0.0,
        linear_term: bool = True,
        embedding_init_std: float = EMBEDDING_INIT_STD,
    ):
        super().__init__()
        self.num_fields = num_fields
        self.embedding = FeatureEmbedding(num_features, embedding_dim, embedding_init_std)
        self.mask_feature_id = self.embedding.mask_feature_id
        self.linear = LinearTerm(num_features) if linear_term else None
        self.dnn = MLP(num_fields * embedding_dim, dnn_hidden_units, dropout)
        self.representation_dim = self.dnn.output_dim
        self.head = nn.Linear(self.representation_dim, 1)

    def forward(self, feature_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        field_emb = self.embedding(feature_ids)  # [B, F, D]
        v = self.dnn(field_emb.flatten(1))
        logit = self.head(v).squeeze(-1) + fm_second_order(field_emb)
        if self.linear is not None:
            logit = logit + self.linear(feature_ids)
        return v, logit
