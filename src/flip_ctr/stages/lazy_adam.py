"""Lazy Adam: Adam in which an embedding table updates only the rows its batch used.

Why: with dense Adam every step reads and writes the whole feature table and its two moment
tables. On GoodReads (4.4M features x 32 dims) that is ~1.5 s per step on this 2-core CPU
(``benchmarks/bench_scale_e2e.py``), three hours per epoch, whatever the batch. Here the
tables whose gradient is sparse (``nn.functional.embedding(..., sparse=True)``) touch only the
rows of the batch: their moments decay only when a row is used (TensorFlow Addons' LazyAdam,
``torch.optim.SparseAdam``). Every dense-gradient parameter follows ``torch.optim.Adam`` exactly,
or ``torch.optim.AdamW`` with ``weight_decay > 0`` (decoupled decay, as pretraining uses).
A deviation from the reference code (dense Adam / AdamW): ``stage.optimizer=lazy_adam`` for the CTR
stages, ``stage.optimizer=lazy_adamw`` for pretraining; the defaults are ``adam`` / ``adamw``.

Decoupled weight decay on a sparse table shrinks only the rows of the batch (TensorFlow's
LazyAdamW does the same): a row unused for k steps skips k decays. Pretraining's MTM output
table (4.4M x 256 on GoodReads) would otherwise need its whole 4 GiB rewritten every step.

One optimizer for both kinds of parameters because Lightning's automatic optimization takes one.
"""

from __future__ import annotations

import math

import torch


class LazyAdam(torch.optim.Optimizer):
    def __init__(
        self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0
    ) -> None:
        if lr <= 0 or eps <= 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(
                f"LazyAdam: lr > 0, eps > 0, weight_decay >= 0 and betas in [0, 1) expected, got lr={lr}, eps={eps}, "
                f"weight_decay={weight_decay}, betas={betas}"
            )
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                step_size = group["lr"] / (1 - beta1 ** state["step"])
                bias_correction2_sqrt = math.sqrt(1 - beta2 ** state["step"])
                decay = 1 - group["lr"] * group["weight_decay"]  # AdamW's, applied before the step as torch does
                if param.grad.is_sparse:
                    self._sparse_update(param, state, beta1, beta2, step_size, bias_correction2_sqrt, group["eps"], decay)
                else:
                    if decay != 1:
                        param.mul_(decay)
                    exp_avg, exp_avg_sq, grad = state["exp_avg"], state["exp_avg_sq"], param.grad
                    exp_avg.lerp_(grad, 1 - beta1)
                    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(group["eps"])
                    param.addcdiv_(exp_avg, denom, value=-step_size)
        return loss

    @staticmethod
    def _sparse_update(param, state, beta1, beta2, step_size, bias_correction2_sqrt, eps, decay) -> None:
        # coalesce() sums the gradients of a row used several times in the batch, as the dense
        # gradient would; then each used row takes one Adam step and the others stay as they are.
        grad = param.grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
        if decay != 1:  # rows are unique after coalesce(): each used row decays once
            param.index_copy_(0, rows, param[rows].mul_(decay))
        exp_avg = state["exp_avg"][rows].lerp_(values, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(values, values, value=1 - beta2)
        state["exp_avg"][rows] = exp_avg
        state["exp_avg_sq"][rows] = exp_avg_sq
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        param.index_add_(0, rows, exp_avg / denom, alpha=-step_size)


def use_sparse_embedding_gradients(model: torch.nn.Module) -> list[str]:
    """Switches every feature table of ``model`` (:class:`FeatureEmbedding`, :class:`LinearTerm`)
    to sparse gradients; returns their names. Forward values are unchanged."""
    from flip_ctr.models.id.layers import FeatureEmbedding, LinearTerm

    names = []
    for name, module in model.named_modules():
        if isinstance(module, FeatureEmbedding):
            module.sparse = True
        elif isinstance(module, LinearTerm):
            module.table.sparse = True
        else:
            continue
        names.append(name)
    return names
