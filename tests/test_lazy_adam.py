"""stage.optimizer=lazy_adam (flip_ctr.stages.lazy_adam), each against an independent oracle:
torch.optim.Adam for dense parameters, torch.optim.SparseAdam for sparse-gradient tables."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from flip_ctr.models.id import build_id_model
from flip_ctr.stages.ctr import CTRModule
from flip_ctr.stages.lazy_adam import LazyAdam, use_sparse_embedding_gradients


def _steps(optimizer, param, grads):
    for grad in grads:
        optimizer.zero_grad()
        param.grad = grad.clone()
        optimizer.step()


def test_dense_parameters_follow_torch_adam():
    torch.manual_seed(0)
    start = torch.randn(7, 5)
    grads = [torch.randn(7, 5) for _ in range(6)]
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    _steps(LazyAdam([ours], lr=0.01, betas=(0.8, 0.95), eps=1e-6), ours, grads)
    _steps(torch.optim.Adam([theirs], lr=0.01, betas=(0.8, 0.95), eps=1e-6, foreach=False), theirs, grads)
    assert not torch.equal(ours, start)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-7)


def _table_steps(optimizer_cls, start, batches, sparse=True, **kwargs):
    weight = start.clone().requires_grad_()
    optimizer = optimizer_cls([weight], **kwargs)
    for ids, target in batches:
        optimizer.zero_grad()
        F.embedding(ids, weight, sparse=sparse).mul(target).sum().backward()
        optimizer.step()
    return weight.detach(), optimizer


def test_sparse_tables_follow_torch_sparse_adam_and_leave_unused_rows_alone():
    torch.manual_seed(1)
    start = torch.randn(20, 4)
    # Rows 0..9 only (10..19 never used); ids repeat inside a batch, so gradients must be summed.
    batches = [(torch.randint(0, 10, (6, 3)), torch.randn(6, 3, 4)) for _ in range(8)]
    ours, optimizer = _table_steps(LazyAdam, start, batches, lr=0.05)
    theirs, _ = _table_steps(torch.optim.SparseAdam, start, batches, lr=0.05)
    # float32 rounding only: SparseAdam orders its arithmetic differently (a wrong step is off by ~1e-2)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours[:10], start[:10])
    assert torch.equal(ours[10:], start[10:])
    state = optimizer.state[next(iter(optimizer.state))]
    assert torch.equal(state["exp_avg"][10:], torch.zeros(10, 4)) and torch.equal(state["exp_avg_sq"][10:], torch.zeros(10, 4))


def test_sparse_table_whose_every_row_is_used_every_step_equals_dense_adam():
    torch.manual_seed(2)
    start = torch.randn(5, 3)
    batches = [(torch.cat([torch.arange(5), torch.randint(0, 5, (4,))]), torch.randn(9, 3)) for _ in range(5)]
    lazy, _ = _table_steps(LazyAdam, start, batches, lr=0.02)
    dense, _ = _table_steps(torch.optim.Adam, start, batches, sparse=False, lr=0.02, foreach=False)
    torch.testing.assert_close(lazy, dense, rtol=0, atol=1e-7)


def test_dense_parameters_with_weight_decay_follow_torch_adamw():
    torch.manual_seed(4)
    start = torch.randn(6, 4)
    grads = [torch.randn(6, 4) for _ in range(5)]
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    _steps(LazyAdam([ours], lr=0.05, weight_decay=0.3), ours, grads)
    _steps(torch.optim.AdamW([theirs], lr=0.05, weight_decay=0.3, foreach=False), theirs, grads)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-7)
    # the decay is really applied: without it the result is another one
    plain = start.clone().requires_grad_()
    _steps(LazyAdam([plain], lr=0.05), plain, grads)
    assert (plain - ours).abs().max() > 1e-3


def test_sparse_table_with_weight_decay_decays_only_the_rows_it_used():
    torch.manual_seed(5)
    start = torch.randn(8, 3)
    # every step uses rows 0..4 (each at least once), never 5..7
    batches = [(torch.cat([torch.arange(5), torch.randint(0, 5, (3,))]), torch.randn(8, 3)) for _ in range(4)]
    lazy, _ = _table_steps(LazyAdam, start, batches, lr=0.05, weight_decay=0.5)
    # rows 0..4 took every step: the oracle is torch AdamW on those rows alone
    used, _ = _table_steps(torch.optim.AdamW, start[:5], batches, sparse=False, lr=0.05, weight_decay=0.5, foreach=False)
    torch.testing.assert_close(lazy[:5], used, rtol=0, atol=1e-6)
    assert torch.equal(lazy[5:], start[5:])  # dense AdamW would have shrunk them by (1 - 0.025) a step


def test_bad_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="betas"):
        LazyAdam([torch.zeros(1, requires_grad=True)], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="weight_decay=-0.1"):
        LazyAdam([torch.zeros(1, requires_grad=True)], weight_decay=-0.1)


def _dcnv2(num_features=30, linear_term=True):
    return build_id_model("dcnv2", num_features=num_features, num_fields=3, embedding_dim=4,
                          dnn_hidden_units=[8], num_cross_layers=1, linear_term=linear_term)


def test_switch_makes_the_feature_tables_sparse_and_keeps_the_forward():
    model = _dcnv2()
    ids = torch.randint(0, 30, (4, 3))
    before = model(ids)[1]
    names = use_sparse_embedding_gradients(model)
    assert set(names) == {"embedding", "linear"}
    after = model(ids)[1]
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    after.sum().backward()
    assert model.embedding.weight.grad.is_sparse and model.linear.weight.grad.is_sparse
    assert not model.head.weight.grad.is_sparse


@pytest.mark.parametrize(
    "kwargs, named",
    [({"l2": {"embedding": 1e-5}}, "regularization.l2.embedding=1e-05"),
     ({"l2": {"linear": 1e-4}}, "regularization.l2.linear=0.0001"),
     ({"weight_decay": 0.01}, "stage.weight_decay=0.01")],
)
def test_lazy_adam_refuses_what_would_make_the_table_dense(kwargs, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        CTRModule(_dcnv2(), optimizer="lazy_adam", **kwargs)
    CTRModule(_dcnv2(), optimizer="lazy_adam", l2={"head": 1e-5, "cross": 1e-5})  # dense groups are fine


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="stage.optimizer must be"):
        CTRModule(_dcnv2(), optimizer="sgd")


def test_lightning_fit_with_lazy_adam_trains_only_the_rows_it_saw(tmp_path):
    torch.manual_seed(3)
    # Feature ids 0..19 appear in the data; 20..29 never do, so lazy Adam must leave their rows as initialised.
    ids = torch.randint(0, 20, (256, 3))
    labels = (ids[:, 0] < 10).float()
    loader = torch.utils.data.DataLoader(
        [{"feature_ids": i, "labels": y} for i, y in zip(ids, labels)], batch_size=32, shuffle=True
    )
    module = CTRModule(_dcnv2(), lr=0.05, optimizer="lazy_adam")
    start = module.model.embedding.weight.detach().clone()
    first_loss = F.binary_cross_entropy_with_logits(module(next(iter(loader))), next(iter(loader))["labels"])
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, loader)
    weight = module.model.embedding.weight.detach()
    assert torch.equal(weight[20:], start[20:])
    assert not torch.equal(weight[:20], start[:20])
    with torch.no_grad():
        probs = torch.sigmoid(module({"feature_ids": ids}))
    # The label is a function of field 0: a trained model separates it (a constant predictor gives 0.5).
    assert probs[labels == 1].mean() - probs[labels == 0].mean() > 0.5, float(first_loss)
