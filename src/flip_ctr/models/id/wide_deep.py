"""Wide&Deep (Cheng et al., DLRS 2016).

logit = wide(x) + w^T DNN(flat embeddings). The wide part is a linear model over the raw
feature ids (no hand-crafted cross features: the data pipeline has none). ``v`` is the
deep part's last hidden layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import EMBEDDING_INIT_STD, FeatureEmbedding, LinearTerm, MLP


class WideDeep(nn.Module):
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
        self.wide = LinearTerm(num_features) if linear_term else None
        self.dnn = MLP(num_fields * embedding_dim, dnn_hidden_units, dropout)
        self.representation_dim = self.dnn.output_dim
        self.head = nn.Linear(self.representation_dim, 1)

    def forward(self, feature_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.dnn(self.embedding(feature_ids).flatten(1))
        logit = self.head(v).squeeze(-1)
        if self.wide is not None:
            logit = logit + self.wide(feature_ids)
        return v, logit
