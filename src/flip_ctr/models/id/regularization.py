"""L2 regularisation of an ID model by parameter group, as the reference code applies it.

The authors' baselines (deepctr-torch) add ``λ · Σ w²`` over whole parameter tensors to the
loss at every step — the whole embedding table, not only the rows in the batch — with separate
coefficients for the embedding table, the first-order (linear) table, the output layer and the
cross-network matrices. Groups, by the submodule attribute every model in this package uses:

- ``embedding``: ``model.embedding`` (the shared feature table)
- ``linear``: ``model.linear`` (the first-order term; Wide&Deep calls it ``wide``)
- ``head``: the weight matrix of ``model.head`` (the output layer; no bias)
- ``cross``: the matrices of ``model.cross`` (DCN, DCNv2), gates and biases excluded

A model without a group's submodule contributes nothing to that group (DeepFM has no cross).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn

L2_GROUPS = ("embedding", "linear", "head", "cross")
_GROUP_ATTRIBUTES = {"embedding": ("embedding",), "linear": ("linear", "wide"), "head": ("head",), "cross": ("cross",)}


def group_parameters(model: nn.Module, group: str) -> Iterator[torch.Tensor]:
    """The tensors an L2 penalty on ``group`` covers: matrices and tables, never biases or gates."""
    if group not in _GROUP_ATTRIBUTES:
        raise ValueError(f"unknown L2 group {group!r}; valid groups: {', '.join(L2_GROUPS)}")
    for attribute in _GROUP_ATTRIBUTES[group]:
        module = getattr(model, attribute, None)
        if module is None:
            continue
        for name, parameter in module.named_parameters():
            if parameter.ndim >= 2 and not name.startswith("gate"):
                yield parameter


def l2_penalty(model: nn.Module, coefficients: Mapping[str, float]) -> torch.Tensor | None:
    """``Σ_g λ_g Σ_{w ∈ g} ||w||²`` over the groups with a nonzero coefficient (None if there are none)."""
    total = None
    for group, coefficient in coefficients.items():
        if coefficient < 0:
            raise ValueError(f"regularization.l2.{group} must be >= 0, got {coefficient}")
        if coefficient == 0:
            continue
        for parameter in group_parameters(model, group):
            term = coefficient * parameter.float().pow(2).sum()
            total = term if total is None else total + term
    return total
