"""DCNv2 (Wang et al., WWW 2021), parallel structure. FLIP's default ID model.

Cross network v2 with full-rank matrices, ``x_{l+1} = x0 * (W_l x_l + b_l) + x_l``, runs in
parallel with a DNN on the flat embeddings ``x0``; ``v = concat(cross_out, dnn_out)``.
(The low-rank / mixture-of-experts variant of the paper is not implemented: with F*D in the
hundreds the full-rank matrices are cheap.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import MLP, FeatureEmbedding


class CrossNetV2(nn.Module):
    def __init__(self, input_dim: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(input_dim, input_dim) for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class DCNv2(nn.Module):
    def __init__(
        self,
        num_features: int,
        num_fields: int,
        embedding_dim: int = 32,
        dnn_hidden_units: Sequence[int] = (300, 300, 128),
        dropout: float = 0.0,
        num_cross_layers: int = 3,
    ):
        super().__init__()
        self.num_fields = num_fields
        self.embedding = FeatureEmbedding(num_features, embedding_dim)
        self.mask_feature_id = self.embedding.mask_feature_id
        input_dim = num_fields * embedding_dim
        self.cross = CrossNetV2(input_dim, num_cross_layers)
        self.dnn = MLP(input_dim, dnn_hidden_units, dropout)
        self.representation_dim = input_dim + self.dnn.output_dim
        self.head = nn.Linear(self.representation_dim, 1)

    def forward(self, feature_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = self.embedding(feature_ids).flatten(1)  # [B, F*D]
        v = torch.cat([self.cross(x0), self.dnn(x0)], dim=1)
        return v, self.head(v).squeeze(-1)
