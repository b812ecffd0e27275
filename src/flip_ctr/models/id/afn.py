"""AFN: Adaptive Factorization Network (Cheng et al., AAAI 2020).

A logarithmic neural network learns feature interactions of adaptive (even fractional)
order: neuron j computes ``exp(sum_f w_jf * log|e_f|) = prod_f |e_f|^{w_jf}`` element-wise
over the embedding dimension. The ``log_neurons x D`` outputs feed an MLP whose last hidden
layer is ``v``. ``afn_hidden_units`` defaults to ``dnn_hidden_units`` (the FLIP paper uses
the same DNN size for every ID model); ``ensemble_dnn=True`` adds AFN+'s parallel DNN and
then ``v = concat(afn_out, dnn_out)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import EMBEDDING_INIT_STD, FeatureEmbedding, LinearTerm, MLP


class LogarithmicLayer(nn.Module):
    """``[B, F, D]`` -> ``[B, log_neurons * D]``.

    Batch norm before and after the exp is part of the method: the paper reports it is what
    keeps the log/exp pair trainable. ``clamp_min`` keeps ``log`` finite at zero embeddings
    (1e-5 rather than the paper's 1e-7, following FuxiCTR; it also stays representable when
    autocast hands us half precision).
    """

    def __init__(self, num_fields: int, log_neurons: int, clamp_min: float = 1e-5):
        super().__init__()
        self.clamp_min = clamp_min
        self.log_norm = nn.BatchNorm1d(num_fields)
        self.coefficients = nn.Linear(num_fields, log_neurons)
        self.exp_norm = nn.BatchNorm1d(log_neurons)

    def forward(self, field_emb: torch.Tensor) -> torch.Tensor:
        # exp() of a low-precision matmul overflows easily, so this block always runs in fp32.
        with torch.autocast(device_type=field_emb.device.type, enabled=False):
            log_emb = torch.log(field_emb.float().abs().clamp_min(self.clamp_min))  # [B, F, D]
            log_emb = self.log_norm(log_emb)
            log_out = self.coefficients(log_emb.transpose(1, 2)).transpose(1, 2)  # [B, N, D]
            out = self.exp_norm(torch.exp(log_out))
        return out.flatten(1)


class AFN(nn.Module):
    def __init__(
        self,
        num_features: int,
        num_fields: int,
        embedding_dim: int = 32,
        dnn_hidden_units: Sequence[int] = (300, 300, 128),
        dropout: float = 0.0,
        linear_term: bool = False,
        embedding_init_std: float = EMBEDDING_INIT_STD,
        log_neurons: int = 64,
        afn_hidden_units: Sequence[int] | None = None,
        ensemble_dnn: bool = False,
    ):
        super().__init__()
        self.num_fields = num_fields
        self.embedding = FeatureEmbedding(num_features, embedding_dim, embedding_init_std)
        self.mask_feature_id = self.embedding.mask_feature_id
        self.linear = LinearTerm(num_features) if linear_term else None  # optional first-order term
        self.log_layer = LogarithmicLayer(num_fields, log_neurons)
        afn_units = dnn_hidden_units if afn_hidden_units is None else afn_hidden_units
        self.afn_mlp = MLP(log_neurons * embedding_dim, afn_units, dropout)
        self.dnn = MLP(num_fields * embedding_dim, dnn_hidden_units, dropout) if ensemble_dnn else None
        self.representation_dim = self.afn_mlp.output_dim + (self.dnn.output_dim if self.dnn is not None else 0)
        self.head = nn.Linear(self.representation_dim, 1)

    def forward(self, feature_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        field_emb = self.embedding(feature_ids)  # [B, F, D]
        parts = [self.afn_mlp(self.log_layer(field_emb))]
        if self.dnn is not None:
            parts.append(self.dnn(field_emb.flatten(1)))
        v = torch.cat(parts, dim=1)
        logit = self.head(v).squeeze(-1)
        if self.linear is not None:
            logit = logit + self.linear(feature_ids)
        return v, logit
