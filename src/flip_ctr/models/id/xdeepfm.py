"""xDeepFM (Lian et al., KDD 2018).

logit = linear(x) + w_cin^T p + w_dnn^T DNN(flat embeddings), where ``p`` comes from the
Compressed Interaction Network (CIN): vector-wise interactions of explicit, growing order.
``v = concat(p, dnn_out)`` so that a single ``Linear`` head reproduces the two output weights;
the linear term is added to the logit only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import EMBEDDING_INIT_STD, FeatureEmbedding, LinearTerm, MLP


class CIN(nn.Module):
    """Compressed Interaction Network: ``[B, F, D]`` -> ``[B, sum(layer_units)]``.

    Layer k builds every (hidden map, field) Hadamard product ``x^{k-1}_h * x^0_m`` and
    compresses the ``H_{k-1} * F`` products into ``H_k`` maps with a 1x1 convolution (a
    per-position linear map shared over the embedding dimension). Each layer's maps are
    sum-pooled over ``D`` and all layers feed the output (no split-half, as in FuxiCTR).
    """

    def __init__(self, num_fields: int, layer_units: Sequence[int]):
        super().__init__()
        self.convs = nn.ModuleList()
        prev_units = num_fields
        for units in layer_units:
            self.convs.append(nn.Conv1d(prev_units * num_fields, units, kernel_size=1))
            prev_units = units
        self.output_dim = sum(layer_units)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        batch_size, _, embedding_dim = x0.shape
        x = x0
        pooled = []
        for conv in self.convs:
            products = x.unsqueeze(2) * x0.unsqueeze(1)  # [B, H_{k-1}, F, D]
            x = conv(products.reshape(batch_size, -1, embedding_dim))  # [B, H_k, D]
            pooled.append(x.sum(dim=-1))
        return torch.cat(pooled, dim=1)


class XDeepFM(nn.Module):
    def __init__(
        self,
        num_features: int,
        num_fields: int,
        embedding_dim: int = 32,
        dnn_hidden_units: Sequence[int] = (300, 300, 128),
        dropout: float = 0.0,
        linear_term: bool = True,
        embedding_init_std: float = EMBEDDING_INIT_STD,
        cin_layer_units: Sequence[int] = (16, 16, 16),
    ):
        super().__init__()
        self.num_fields = num_fields
        self.embedding = FeatureEmbedding(num_features, embedding_dim, embedding_init_std)
        self.mask_feature_id = self.embedding.mask_feature_id
        self.linear = LinearTerm(num_features) if linear_term else None
        self.cin = CIN(num_fields, cin_layer_units)
        self.dnn = MLP(num_fields * embedding_dim, dnn_hidden_units, dropout)
        self.representation_dim = self.cin.output_dim + self.dnn.output_dim
        self.head = nn.Linear(self.representation_dim, 1)

    def forward(self, feature_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        field_emb = self.embedding(feature_ids)  # [B, F, D]
        v = torch.cat([self.cin(field_emb), self.dnn(field_emb.flatten(1))], dim=1)
        logit = self.head(v).squeeze(-1)
        if self.linear is not None:
            logit = logit + self.linear(feature_ids)
        return v, logit
