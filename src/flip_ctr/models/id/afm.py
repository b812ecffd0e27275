"""AFM: Attentional Factorization Machines (Xiao et al., IJCAI 2017).

logit = linear(x) + p^T sum_{i<j} a_ij (e_i * e_j), where the attention weights a_ij come from
a one-hidden-layer attention network over the pairwise interaction vectors.

AFM has no DNN: ``dnn_hidden_units`` is accepted only so every model shares one signature.
The representation ``v`` is the attention-pooled interaction vector (size ``embedding_dim``),
and ``p`` is the final ``Linear(embedding_dim, 1)`` head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import EMBEDDING_INIT_STD, FeatureEmbedding, LinearTerm, PairwiseProduct


class AFM(nn.Module):
    def __init__(
        self,
        num_features: int,
        num_fields: int,
        embedding_dim: int = 32,
        dnn_hidden_units: Sequence[int] = (300, 300, 128),
        dropout: float = 0.0,
        linear_term: bool = True,
        embedding_init_std: float = EMBEDDING_INIT_STD,
        attention_dim: int = 32,
    ):
        super().__init__()
        self.num_fields = num_fields
        self.embedding = FeatureEmbedding(num_features, embedding_dim, embedding_init_std)
        self.mask_feature_id = self.embedding.mask_feature_id
        self.linear = LinearTerm(num_features) if linear_term else None
        self.pairwise = PairwiseProduct(num_fields)
        # The paper puts dropout on the pair-wise interaction layer.
        self.dropout = nn.Dropout(dropout)
        self.attention = nn.Sequential(
            nn.Linear(embedding_dim, attention_dim),
            nn.ReLU(),
            nn.Linear(attention_dim, 1, bias=False),
        )
        self.representation_dim = embedding_dim
        self.head = nn.Linear(self.representation_dim, 1)

    def forward(self, feature_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        field_emb = self.embedding(feature_ids)  # [B, F, D]
        pairs = self.dropout(self.pairwise(field_emb))  # [B, P, D]
        weights = torch.softmax(self.attention(pairs), dim=1)  # [B, P, 1]
        v = (weights * pairs).sum(dim=1)  # [B, D]
        logit = self.head(v).squeeze(-1)
        if self.linear is not None:
            logit = logit + self.linear(feature_ids)
        return v, logit
