"""AutoInt (Song et al., CIKM 2019), in its AutoInt+ form (with a parallel DNN).

Stacked multi-head self-attention over the fields learns which feature combinations matter;
each layer has a residual connection. The paper's baselines all use a DNN of
``dnn_hidden_units``, so by default a DNN runs in parallel on the flat embeddings (AutoInt+);
``use_dnn=False`` gives the original AutoInt. ``v = concat(flat attention output, dnn_out)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .layers import EMBEDDING_INIT_STD, FeatureEmbedding, LinearTerm, MLP


class InteractingLayer(nn.Module):
    """One multi-head self-attention layer over fields: ``[B, F, D_in]`` -> ``[B, F, D_out]``."""

    def __init__(self, input_dim: int, attention_dim: int, num_heads: int, dropout: float, use_residual: bool):
        super().__init__()
        if attention_dim % num_heads:
            raise ValueError(f"attention_dim={attention_dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(input_dim, 3 * attention_dim, bias=False)
        # The residual branch needs its own projection when the width changes (the first layer).
        self.residual = nn.Linear(input_dim, attention_dim, bias=False) if use_residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, num_fields, _ = x.shape
        # [B, F, 3*A] -> 3 x [B, heads, F, A/heads]
        q, k, v = self.qkv(x).view(batch_size, num_fields, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(batch_size, num_fields, -1)  # [B, F, A]
        if self.residual is not None:
            out = out + self.residual(x)
        return F.relu(out)


class AutoInt(nn.Module):
    def __init__(
        self,
        num_features: int,
        num_fields: int,
        embedding_dim: int = 32,
        dnn_hidden_units: Sequence[int] = (300, 300, 128),
        dropout: float = 0.0,
        linear_term: bool = False,
        embedding_init_std: float = EMBEDDING_INIT_STD,
        num_attention_layers: int = 3,
        attention_dim: int = 32,
        num_heads: int = 2,
        use_residual: bool = True,
        use_dnn: bool = True,
    ):
        super().__init__()
        self.num_fields = num_fields
        self.embedding = FeatureEmbedding(num_features, embedding_dim, embedding_init_std)
        self.mask_feature_id = self.embedding.mask_feature_id
        self.linear = LinearTerm(num_features) if linear_term else None  # optional first-order term
        self.attention = nn.Sequential(
            *(
                InteractingLayer(
                    embedding_dim if i == 0 else attention_dim, attention_dim, num_heads, dropout, use_residual
                )
                for i in range(num_attention_layers)
            )
        )
        attention_out_dim = num_fields * (attention_dim if num_attention_layers else embedding_dim)
        self.dnn = MLP(num_fields * embedding_dim, dnn_hidden_units, dropout) if use_dnn else None
        self.representation_dim = attention_out_dim + (self.dnn.output_dim if self.dnn is not None else 0)
        self.head = nn.Linear(self.representation_dim, 1)

    def forward(self, feature_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        field_emb = self.embedding(feature_ids)  # [B, F, D]
        parts = [self.attention(field_emb).flatten(1)]
        if self.dnn is not None:
            parts.append(self.dnn(field_emb.flatten(1)))
        v = torch.cat(parts, dim=1)
        logit = self.head(v).squeeze(-1)
        if self.linear is not None:
            logit = logit + self.linear(feature_ids)
        return v, logit
