"""IPNN: Product-based Neural Network with inner products (Qu et al., ICDM 2016).

The product layer concatenates the flat field embeddings (the "z" signal) with the inner
product of every field pair (the "p" signal); a DNN on top gives the representation ``v``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import EMBEDDING_INIT_STD, FeatureEmbedding, LinearTerm, MLP, PairwiseProduct


class PNN(nn.Module):
    def __init__(
        self,
        num_features: int,
        num_fields: int,
        embedding_dim: int = 32,
        dnn_hidden_units: Sequence[int] = (300, 300, 128),
        dropout: float = 0.0,
        linear_term: bool = False,
        embedding_init_std: float = EMBEDDING_INIT_STD,
    ):
        super().__init__()
        self.num_fields = num_fields
        self.embedding = FeatureEmbedding(num_features, embedding_dim, embedding_init_std)
        self.mask_feature_id = self.embedding.mask_feature_id
        self.linear = LinearTerm(num_features) if linear_term else None  # optional first-order term
        self.pairwise = PairwiseProduct(num_fields)
        product_dim = num_fields * embedding_dim + self.pairwise.num_pairs
        self.dnn = MLP(product_dim, dnn_hidden_units, dropout)
        self.representation_dim = self.dnn.output_dim
        self.head = nn.Linear(self.representation_dim, 1)

    def forward(self, feature_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        field_emb = self.embedding(feature_ids)  # [B, F, D]
        inner_products = self.pairwise(field_emb).sum(dim=-1)  # [B, P]
        product_layer = torch.cat([field_emb.flatten(1), inner_products], dim=1)
        v = self.dnn(product_layer)
        logit = self.head(v).squeeze(-1)
        if self.linear is not None:
            logit = logit + self.linear(feature_ids)
        return v, logit
