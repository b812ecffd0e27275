"""DCNv2 (Wang et al., WWW 2021), parallel structure. FLIP's default ID model.

A cross network runs in parallel with a DNN on the flat embeddings ``x0``;
``v = concat(cross_out, dnn_out)``. Two cross networks, chosen by ``cross_type``:

- ``"full"``: full-rank matrices, ``x_{l+1} = x0 * (W_l x_l + b_l) + x_l`` (DCN-V, §3.1 of the
  DCNv2 paper). With ``F*D`` in the hundreds the full matrices are cheap.
- ``"mix"``: DCN-Mix (§3.2), a softmax-gated mixture of ``num_experts`` low-rank experts per
  layer, each ``x0 * (U_i tanh(C_i tanh(V_iᵀ x_l)) + b_l)``. This is the "DCNv2" that produced
  the FLIP paper's numbers (the authors' code uses deepctr-torch's DCNMix: 2 layers, 4 experts
  of rank 32, plus a first-order linear term; see ``conf/id_model/dcnv2_mix.yaml``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import EMBEDDING_INIT_STD, MLP, FeatureEmbedding, LinearTerm

CROSS_TYPES = ("full", "mix")


class CrossNetV2(nn.Module):
    def __init__(self, input_dim: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(input_dim, input_dim) for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class CrossNetMix(nn.Module):
    """DCN-Mix cross layers. Per layer ``l`` and expert ``i`` (all experts in one batched einsum):
    ``E_i(x) = x0 * (U_i tanh(C_i tanh(V_iᵀ x)) + b_l)``, gate ``g_i(x) = w_iᵀ x``, and
    ``x_{l+1} = Σ_i softmax(g(x))_i E_i(x) + x``. ``U, V, C`` are the matrices an L2 penalty
    on "cross" regularises (their names start with ``u``/``v``/``c``; biases are not penalised).
    """

    def __init__(self, input_dim: int, num_layers: int, num_experts: int = 4, low_rank: int = 32):
        super().__init__()
        shape = (num_layers, num_experts)
        self.u = nn.Parameter(torch.empty(*shape, input_dim, low_rank))
        self.v = nn.Parameter(torch.empty(*shape, input_dim, low_rank))
        self.c = nn.Parameter(torch.empty(*shape, low_rank, low_rank))
        self.bias = nn.Parameter(torch.zeros(num_layers, input_dim))
        self.gate = nn.ModuleList(nn.Linear(input_dim, num_experts, bias=False) for _ in range(num_layers))
        # Xavier-normal per expert matrix (fan_in/fan_out of the matrix itself, not of the stack).
        for weight in (self.u, self.v, self.c):
            fan_in, fan_out = weight.shape[-2], weight.shape[-1]
            nn.init.normal_(weight, std=(2.0 / (fan_in + fan_out)) ** 0.5)
        self.num_layers = num_layers

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in range(self.num_layers):
            low = torch.tanh(torch.einsum("bd,edr->ber", x, self.v[layer]))  # [B, E, r]
            low = torch.tanh(torch.einsum("ber,eqr->beq", low, self.c[layer]))  # C_i · low
            experts = x0.unsqueeze(1) * (torch.einsum("ber,edr->bed", low, self.u[layer]) + self.bias[layer])  # [B, E, D]
            weights = torch.softmax(self.gate[layer](x), dim=-1)  # [B, E]
            x = torch.einsum("be,bed->bd", weights, experts) + x
        return x


class DCNv2(nn.Module):
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
        cross_type: str = "full",
        num_experts: int = 4,
        low_rank: int = 32,
    ):
        super().__init__()
        if cross_type not in CROSS_TYPES:
            raise ValueError(f"id_model.cross_type must be one of {CROSS_TYPES}, got {cross_type!r}")
        self.num_fields = num_fields
        self.embedding = FeatureEmbedding(num_features, embedding_dim, embedding_init_std)
        self.mask_feature_id = self.embedding.mask_feature_id
        self.linear = LinearTerm(num_features) if linear_term else None  # optional first-order term
        input_dim = num_fields * embedding_dim
        if cross_type == "full":
            self.cross = CrossNetV2(input_dim, num_cross_layers)
        else:
            self.cross = CrossNetMix(input_dim, num_cross_layers, num_experts, low_rank)
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
