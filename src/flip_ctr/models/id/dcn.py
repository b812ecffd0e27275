"""DCN: Deep & Cross Network (Wang et al., ADKDD 2017).

A cross network and a DNN run in parallel on the flat embeddings ``x0``; each cross layer is
``x_{l+1} = x0 * (x_l . w_l) + b_l + x_l`` (a rank-one cross, one weight *vector* per layer).
``v`` is the concatenation of both outputs, as in the paper's combination layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import EMBEDDING_INIT_STD, FeatureEmbedding, LinearTerm, MLP


class CrossNet(nn.Module):
    def __init__(self, input_dim: int, num_layers: int):
        super().__init__()
        self.weights = nn.ModuleList(nn.Linear(input_dim, 1, bias=False) for _ in range(num_layers))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(input_dim)) for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for weight, bias in zip(self.weights, self.biases):
            # weight(x) is the scalar x_l . w_l per row, so this never builds a D x D matrix.
            x = x0 * weight(x) + bias + x
        return x


class DCN(nn.Module):
    def __init__(
        self,
        num_features: int,
        num_fields: int,
        embedding_dim: int = 32,
        dnn_hidden_units: Sequence[int] = (300, 300, 128),
        dropout: float = 0.0,
        linear_term: bool = False,
        embedding_init_std: float = EMBEDDING_INIT_STD,
        num_cross_layers: int = 3,
    ):
        super().__init__()
        self.num_fields = num_fields
        self.embedding = FeatureEmbedding(num_features, embedding_dim, embedding_init_std)
        self.mask_feature_id = self.embedding.mask_feature_id
        self.linear = LinearTerm(num_features) if linear_term else None  # optional first-order term
        input_dim = num_fields * embedding_dim
        self.cross = CrossNet(input_dim, num_cross_layers)
        self.dnn = MLP(input_dim, dnn_hidden_units, dropout)
        self.representation_dim = input_dim + self.dnn.output_dim
        self.head = nn.Linear(self.representation_dim, 1)

    def forward(self, feature_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = self.embedding(feature_ids).flatten(1)  # [B, F*D]
        v = torch.cat([self.cross(x0), self.dnn(x0)], dim=1)
        logit = self.head(v).squeeze(-1)
        if self.linear is not None:
            logit = logit + self.linear(feature_ids)
        return v, logit
