"""Tests for the ID-model zoo (flip_ctr.models.id)."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch.nn import functional as F

from flip_ctr.models.id import ID_MODELS, build_id_model

NAMES = sorted(ID_MODELS)
NUM_FEATURES = 50
NUM_FIELDS = 5
VALUES_PER_FIELD = NUM_FEATURES // NUM_FIELDS  # field f owns ids [10f, 10f + 10)
SHARED_PARAMS = {
    "num_features": inspect.Parameter.empty,
    "num_fields": inspect.Parameter.empty,
    "embedding_dim": 32,
    "dnn_hidden_units": (300, 300, 128),
    "dropout": 0.0,
    "embedding_init_std": 0.01,
}
# Models whose definition includes a first-order term (on by default; linear_term=False drops it).
WITH_FIRST_ORDER = {"afm", "deepfm", "wide_deep", "xdeepfm"}


def small_model(name: str, **kwargs):
    return build_id_model(
        name,
        num_features=NUM_FEATURES,
        num_fields=NUM_FIELDS,
        embedding_dim=8,
        dnn_hidden_units=(32, 16),
        **kwargs,
    )


def random_ids(batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Valid ids under the contiguous per-field layout."""
    values = torch.randint(0, VALUES_PER_FIELD, (batch_size, NUM_FIELDS), generator=generator)
    return values + torch.arange(NUM_FIELDS) * VALUES_PER_FIELD


@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_and_backward(name):
    torch.manual_seed(0)
    model = small_model(name)
    ids = random_ids(8, torch.Generator().manual_seed(0))
    v, logit = model(ids)
    assert v.shape == (8, model.representation_dim)
    assert logit.shape == (8,)
    assert torch.isfinite(v).all() and torch.isfinite(logit).all()

    F.binary_cross_entropy_with_logits(logit, torch.rand(8)).backward()
    grad = model.embedding.weight.grad
    assert grad is not None and torch.isfinite(grad).all()
    # Only the rows that were looked up receive gradient (the mask row was not used here).
    assert grad[ids.unique()].abs().sum() > 0
    assert grad[model.mask_feature_id].abs().sum() == 0


@pytest.mark.parametrize("name", NAMES)
def test_mask_feature_is_a_trainable_input(name):
    torch.manual_seed(0)
    model = small_model(name)
    ids = random_ids(8, torch.Generator().manual_seed(1))
    ids[:, 2] = model.mask_feature_id
    ids[0] = model.mask_feature_id  # a fully masked row must work too
    v, logit = model(ids)
    assert v.shape == (8, model.representation_dim) and logit.shape == (8,)
    assert torch.isfinite(v).all() and torch.isfinite(logit).all()
    logit.sum().backward()
    assert model.embedding.weight.grad[model.mask_feature_id].abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_representation_depends_on_input(name):
    torch.manual_seed(0)
    model = small_model(name).eval()
    ids = random_ids(8, torch.Generator().manual_seed(2))
    other = ids.clone()
    other[:, 0] = (other[:, 0] + 1) % VALUES_PER_FIELD  # change field 0's value in every row
    with torch.no_grad():
        v1, logit1 = model(ids)
        v2, logit2 = model(other)
        v3, logit3 = model(ids)
    assert not torch.allclose(v1, v2)
    assert not torch.allclose(logit1, logit2)
    torch.testing.assert_close(v1, v3)  # eval mode is deterministic
    torch.testing.assert_close(logit1, logit3)


@pytest.mark.parametrize("name", NAMES)
def test_autocast_bfloat16(name):
    torch.manual_seed(0)
    model = small_model(name)
    ids = random_ids(8, torch.Generator().manual_seed(3))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        v, logit = model(ids)
        loss = F.binary_cross_entropy_with_logits(logit.float(), torch.ones(8))
    loss.backward()
    assert v.shape == (8, model.representation_dim) and logit.shape == (8,)
    assert torch.isfinite(v.float()).all() and torch.isfinite(logit.float()).all()
    assert torch.isfinite(model.embedding.weight.grad).all()


def synthetic_task(num_rows: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Label = a fixed random function of (field 0 value, field 1 value); other fields are noise.

    The table mixes main effects with a pure interaction so that both linear-ish models
    (wide part, FM) and interaction models have something to learn.
    """
    generator = torch.Generator().manual_seed(1234)
    ids = random_ids(num_rows, generator)
    v0 = ids[:, 0]
    v1 = ids[:, 1] - VALUES_PER_FIELD
    labels = ((v0 < VALUES_PER_FIELD // 2) ^ (v1 % 2 == 0)).float()
    return ids, labels


@pytest.mark.parametrize("name", NAMES)
def test_short_fit_lowers_loss(name):
    torch.manual_seed(0)
    model = small_model(name)
    ids, labels = synthetic_task()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_fn() -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(model(ids)[1], labels)

    losses = []
    for _ in range(50):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # Start = the first training-mode loss (at init, eval-mode batch norm still has default
    # running stats, which would give AFN an artificially high starting loss).
    initial = losses[0]
    model.eval()
    with torch.no_grad():
        final = loss_fn().item()
    assert final < 0.7 * initial, f"{name}: loss {initial:.4f} -> {final:.4f}"


@pytest.mark.parametrize("name", NAMES)
def test_shared_constructor_signature(name):
    params = inspect.signature(ID_MODELS[name].__init__).parameters
    for param_name, default in SHARED_PARAMS.items():
        assert param_name in params, f"{name} lacks {param_name}"
        assert params[param_name].default == default, f"{name}.{param_name} default {params[param_name].default!r}"
    assert params["linear_term"].default == (name in WITH_FIRST_ORDER), name
    # Everything beyond the shared ones must have a default so build_id_model(name, ...) works.
    for param in list(params.values())[1:]:
        if param.name not in SHARED_PARAMS and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            assert param.default is not inspect.Parameter.empty, f"{name}.{param.name} has no default"


@pytest.mark.parametrize("name", NAMES)
def test_embedding_table_and_attributes(name):
    model = build_id_model(name, num_features=NUM_FEATURES, num_fields=8)  # all defaults
    assert model.embedding.weight.shape == (NUM_FEATURES + 1, 32)
    assert model.mask_feature_id == NUM_FEATURES
    assert model.num_fields == 8
    assert isinstance(model.representation_dim, int) and model.representation_dim > 0
    v, logit = model.eval()(torch.full((3, 8), NUM_FEATURES - 1))
    assert v.shape == (3, model.representation_dim) and logit.shape == (3,)


def test_model_specific_kwargs_change_the_model():
    base = build_id_model("dcnv2", num_features=NUM_FEATURES, num_fields=NUM_FIELDS)
    deeper = build_id_model("dcnv2", num_features=NUM_FEATURES, num_fields=NUM_FIELDS, num_cross_layers=5)
    assert len(deeper.cross.layers) == 5 and len(base.cross.layers) == 3
    narrow = build_id_model("xdeepfm", num_features=NUM_FEATURES, num_fields=NUM_FIELDS, cin_layer_units=(4, 4))
    assert narrow.representation_dim == 8 + 128


def test_unknown_name_raises_with_valid_names():
    with pytest.raises(ValueError) as excinfo:
        build_id_model("dcnv3", num_features=NUM_FEATURES, num_fields=NUM_FIELDS)
    message = str(excinfo.value)
    assert "dcnv3" in message
    for name in ID_MODELS:
        assert name in message


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_autocast(name):
    model = small_model(name).cuda()
    ids = random_ids(8, torch.Generator().manual_seed(4)).cuda()
    with torch.autocast(device_type="cuda", dtype=torch.float16):
        v, logit = model(ids)
    assert v.device.type == "cuda" and logit.shape == (8,)
    assert torch.isfinite(v.float()).all() and torch.isfinite(logit.float()).all()


def first_order_parameters(model) -> list[torch.Tensor]:
    table = getattr(model, "linear", None) or getattr(model, "wide", None)
    return [] if table is None else list(table.parameters())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("linear_term", [True, False])
def test_linear_term_switch(name, linear_term):
    torch.manual_seed(0)
    model = small_model(name, linear_term=linear_term)
    ids = random_ids(16, torch.Generator().manual_seed(1))
    params = first_order_parameters(model)
    assert bool(params) == linear_term
    if not linear_term:
        return
    before = model(ids)[1].detach().clone()
    table = next(p for p in params if p.ndim == 2)  # the per-feature weights (the other one is the bias)
    with torch.no_grad():  # a weight on one feature of field 0 moves exactly the rows that have it
        table[ids[0, 0]] += 1.5
    after = model(ids)[1].detach()
    has_feature = (ids[:, 0] == ids[0, 0]).float()
    torch.testing.assert_close(after - before, 1.5 * has_feature)


@pytest.mark.parametrize("name", NAMES)
def test_embedding_init_std_is_applied(name):
    torch.manual_seed(0)
    wide = build_id_model(name, num_features=5000, num_fields=NUM_FIELDS, embedding_init_std=0.01).embedding.weight.detach()
    narrow = build_id_model(name, num_features=5000, num_fields=NUM_FIELDS, embedding_init_std=1e-4).embedding.weight.detach()
    assert abs(float(wide.std()) - 0.01) < 1e-3 and abs(float(narrow.std()) - 1e-4) < 1e-5


def test_dcn_mix_shapes_gradients_and_fit():
    torch.manual_seed(0)
    model = small_model("dcnv2", cross_type="mix", num_cross_layers=2, num_experts=3, low_rank=4)
    cross = model.cross
    assert cross.u.shape == (2, 3, NUM_FIELDS * 8, 4) and cross.c.shape == (2, 3, 4, 4)
    ids = random_ids(8, torch.Generator().manual_seed(0))
    v, logit = model(ids)
    assert v.shape == (8, model.representation_dim) == (8, NUM_FIELDS * 8 + 16) and logit.shape == (8,)
    F.binary_cross_entropy_with_logits(logit, torch.rand(8)).backward()
    for name in ("u", "v", "c", "bias"):
        assert getattr(cross, name).grad.abs().sum() > 0, name
    assert all(g.weight.grad.abs().sum() > 0 for g in cross.gate)


def test_dcn_mix_layer_matches_its_formula():
    """One layer, written out expert by expert: x1 = Σ_i softmax(G x)_i · x0 ⊙ (U_i tanh(C_i tanh(V_iᵀ x)) + b) + x."""
    from flip_ctr.models.id.dcnv2 import CrossNetMix

    torch.manual_seed(0)
    net = CrossNetMix(input_dim=6, num_layers=1, num_experts=2, low_rank=3)
    with torch.no_grad():
        net.bias.normal_()
    x0 = torch.randn(4, 6)
    expected = torch.zeros(4, 6)
    gates = torch.softmax(x0 @ net.gate[0].weight.t(), dim=-1)
    for b in range(4):
        for i in range(2):
            low = torch.tanh(net.v[0, i].t() @ x0[b])
            low = torch.tanh(net.c[0, i] @ low)
            expected[b] += gates[b, i] * x0[b] * (net.u[0, i] @ low + net.bias[0])
    torch.testing.assert_close(net(x0), expected + x0)


def test_dcn_mix_short_fit_lowers_loss():
    torch.manual_seed(0)
    model = small_model("dcnv2", cross_type="mix", num_cross_layers=2, linear_term=True)
    ids, labels = synthetic_task()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    initial = F.binary_cross_entropy_with_logits(model(ids)[1], labels).item()
    for _ in range(50):
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(ids)[1], labels)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.7 * initial


def test_unknown_cross_type_is_refused():
    with pytest.raises(ValueError, match="cross_type"):
        small_model("dcnv2", cross_type="lowrank")


def test_linear_term_loads_checkpoints_written_before_its_table_became_a_child_module():
    torch.manual_seed(0)
    model = small_model("deepfm", linear_term=True)
    with torch.no_grad():
        model.linear.weight.normal_()
    state = model.state_dict()
    assert "linear.table.weight" in state and "linear.weight" not in state
    old = {("linear.weight" if k == "linear.table.weight" else k): v.clone() for k, v in state.items()}
    torch.manual_seed(1)
    fresh = small_model("deepfm", linear_term=True)
    fresh.load_state_dict(old)  # strict: every key used, none missing
    assert torch.equal(fresh.linear.weight, state["linear.table.weight"])
