"""The switches where the paper, the authors' reference code and this project differ
(flip_ctr.models.alignment, AlignmentConfig): corrected NCE vs negative sampling, global vs
per-field noise, LayerNorm vs L2 ICL projection, [v̂; u] vs u as the MTM predictor input, and
their validation. Expected numbers are computed independently with math on Python floats."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from flip_ctr.models.alignment import ICLHead, MTMHead
from flip_ctr.stages.pretrain import AlignmentConfig
from test_alignment import (
    OFFSETS,
    StandInIDModel,
    infonce_by_hand,
    mean_of_sample_means,
    mtm_head,
    mtm_inputs,
    mtm_loss_and_replay,
    sigmoid,
    skewed_freqs,
)

CONF = Path(__file__).resolve().parents[1] / "conf"
SWITCHES = ("icl_projection", "noise_scope", "remove_accidental_hits", "nce", "mtm_input")


def noise_probability(feature: int, scope: str) -> float:
    """q(x) of skewed_freqs(): the feature's share of all counts, or of its field's counts."""
    counts = skewed_freqs().tolist()
    if scope == "global":
        return counts[feature] / sum(counts)
    field = max(f for f in range(len(OFFSETS) - 1) if OFFSETS[f] <= feature)
    return counts[feature] / sum(counts[OFFSETS[field] : OFFSETS[field + 1]])


# ---------------------------------------------------------------------------------- corrected NCE
@pytest.mark.parametrize("scope", ["global", "field"])
def test_corrected_nce_equals_the_formula_by_hand(scope):
    k, num_features = 3, OFFSETS[-1]
    head = mtm_head(nce="corrected", noise_scope=scope, remove_accidental_hits=False, num_noise=k)
    with torch.no_grad():  # move the bias off its initial value so that it matters on its own
        head.output_bias.add_(torch.linspace(-1.0, 1.0, num_features))
    r = mtm_loss_and_replay(head, mtm_inputs(), noise_seed=5)

    def corrected_logit(i: int, f: int, x: int) -> float:
        score = float(r.h[i, f] @ r.emb[x]) + float(r.bias[x])
        return score - math.log(num_features) - math.log(k * noise_probability(x, scope))

    per_sample: dict[int, list[float]] = {}
    for row, (i, f) in enumerate(r.pairs):
        bce = -math.log(sigmoid(corrected_logit(i, f, int(r.targets[i, f]))))
        bce -= sum(math.log(1.0 - sigmoid(corrected_logit(i, f, x))) for x in r.noise[row])
        per_sample.setdefault(i, []).append(bce)
    expected = mean_of_sample_means(per_sample)
    assert math.isclose(r.loss, expected, rel_tol=1e-5), (r.loss, expected)


@pytest.mark.parametrize("scope", ["global", "field"])
def test_corrected_nce_bias_starts_at_log_q_plus_log_m(scope):
    head = mtm_head(nce="corrected", noise_scope=scope)
    counts = skewed_freqs().tolist()
    for x in range(OFFSETS[-1]):
        q = noise_probability(x, scope) if counts[x] > 0 else 1e-10  # a never-drawn feature is floored
        assert math.isclose(float(head.output_bias[x].detach()), math.log(q) + math.log(OFFSETS[-1]), rel_tol=1e-5, abs_tol=1e-5), x
    # hence, with no signal from h, every candidate is judged true with the prior 1/(1+K)
    candidates = torch.tensor([[0, 1, 9, 19, 4, 7]])
    scores = head.output_bias[candidates].detach()
    logits = head.classifier_logits(scores, candidates)
    assert torch.allclose(logits, torch.full_like(logits, -math.log(5)), atol=1e-5)
    assert torch.equal(mtm_head(nce="negative_sampling").output_bias, torch.zeros(OFFSETS[-1]))


def test_negative_sampling_uses_the_raw_scores():
    head = mtm_head(nce="negative_sampling")
    candidates = torch.tensor([[0, 1, 9]])
    scores = torch.tensor([[0.3, -1.2, 2.0]])
    assert torch.equal(head.classifier_logits(scores, candidates), scores)


# ---------------------------------------------------------------------------------- noise scope
def test_global_noise_is_drawn_across_fields_at_the_training_frequencies():
    head = mtm_head(noise_scope="global")
    n, k = 20000, 5
    # every draw for a field-0 entry: the masked field must not restrict global noise
    noise = head.sample_noise(torch.zeros(n, dtype=torch.long), num_noise=k, generator=torch.Generator().manual_seed(0))
    counts = skewed_freqs().tolist()
    observed = torch.bincount(noise.flatten(), minlength=len(counts) + 1).tolist()
    assert observed[len(counts)] == 0, "the <MASK> id is never a noise feature"
    chi_square, degrees = 0.0, -1
    for feature, count in enumerate(counts):
        expected = n * k * count / sum(counts)
        if expected == 0:
            assert observed[feature] == 0, f"zero-count feature {feature} drawn"
            continue
        chi_square += (observed[feature] - expected) ** 2 / expected
        degrees += 1
    assert degrees == 18
    assert chi_square < 42.31, chi_square  # the 0.999 quantile of chi-square with 18 degrees of freedom
    fields_hit = {f for f in range(3) if any(observed[x] for x in range(OFFSETS[f], OFFSETS[f + 1]))}
    assert fields_hit == {0, 1, 2}


def test_accidental_hits_default_follows_the_noise_scope():
    assert mtm_head(noise_scope="field").remove_accidental_hits is True
    assert mtm_head(noise_scope="global").remove_accidental_hits is False
    assert mtm_head(noise_scope="global", remove_accidental_hits=True).remove_accidental_hits is True
    # all noise mass on feature 0, the true feature: kept (labelled 0) under global noise, dropped under field noise
    freqs = torch.tensor([1.0, 0.0, 0.0])
    v_hat, w, att = torch.randn(3, 6), torch.randn(3, 5, 16), torch.ones(3, 5, dtype=torch.long)
    masked, targets = torch.tensor([[True, False]] * 3), torch.tensor([[0, 2]] * 3)
    losses = {}
    for scope in ("global", "field"):
        torch.manual_seed(0)
        head = MTMHead(16, 6, feature_frequencies=freqs, field_offsets=[0, 2, 3], hidden_dim=8, num_noise=4, noise_scope=scope)
        losses[scope], _ = head.loss(v_hat, w, att, masked, targets)
        h = head.field_hidden(head.predictor_input_of(v_hat, w, att))[:, 0]
        c = (h @ head.output_embedding.weight[0] + head.output_bias[0]).detach()
        positive = -torch.nn.functional.logsigmoid(c)
        expected = positive if scope == "field" else positive - 4 * torch.nn.functional.logsigmoid(-c)
        assert torch.allclose(losses[scope], expected.mean(), atol=1e-5), scope


# ---------------------------------------------------------------------------------- ICL projection
def _tied_icl(projection: str) -> ICLHead:
    """Both towers with the same weights, so the same input gives the same projection."""
    torch.manual_seed(0)
    head = ICLHead(text_dim=6, id_dim=6, proj_dim=16, temperature=0.7, projection=projection)
    head.tab_proj.load_state_dict(head.text_proj.state_dict())
    return head.eval()


def test_layernorm_projection_is_the_reference_head():
    head = _tied_icl("layernorm")
    x = torch.randn(4, 6)
    z_text, _ = head.project(x, x)
    tower = head.text_proj
    p = x @ tower.projection.weight.T + tower.projection.bias
    gelu = 0.5 * p * (1.0 + torch.erf(p / math.sqrt(2.0)))
    r = p + gelu @ tower.fc.weight.T + tower.fc.bias
    expected = (r - r.mean(-1, keepdim=True)) / torch.sqrt(r.var(-1, unbiased=False, keepdim=True) + tower.norm.eps)
    expected = expected * tower.norm.weight + tower.norm.bias
    assert torch.allclose(z_text, expected, atol=1e-5)
    # not L2-normalised: a LayerNorm row of dimension d (unit gain, zero shift) has norm √d
    assert torch.allclose(z_text.norm(dim=-1), torch.full((4,), 4.0), atol=1e-3)


def test_layernorm_logits_exceed_the_cosine_bound():
    x = torch.randn(4, 6)
    bound = 1.0 / 0.7
    head = _tied_icl("layernorm")
    z_text, z_tab = head.project(x, x)
    logits = z_text @ z_tab.T / head.temperature
    assert logits.abs().max() > 5 * bound  # the diagonal is d / τ = 16 / 0.7
    loss = head(x, x)
    assert math.isclose(loss.item(), infonce_by_hand(z_text.tolist(), z_tab.tolist(), 0.7, normalize=False), rel_tol=1e-5)
    z_text, z_tab = _tied_icl("l2").project(x, x)
    assert (z_text @ z_tab.T / 0.7).abs().max() <= bound + 1e-5


# ---------------------------------------------------------------------------------- MTM input
@pytest.mark.parametrize("predictor_input", ["attended", "masked_and_attended"])
def test_masked_representation_reaches_the_id_model_only_through_the_query_unless_concatenated(predictor_input):
    v_hat_dim, text_dim = 12, 16
    head = MTMHead(text_dim, v_hat_dim, torch.ones(15), [0, 5, 10, 15], hidden_dim=8, predictor_input=predictor_input)
    in_dim = text_dim if predictor_input == "attended" else v_hat_dim + text_dim
    assert head.mlp_w1.shape[1] == in_dim
    torch.manual_seed(0)
    idm = StandInIDModel(num_features=15, num_fields=3)
    features = torch.randint(0, 5, (4, 3)) + torch.tensor([0, 5, 10])
    masked = torch.zeros(4, 3, dtype=torch.bool)
    masked[:, 1] = True
    w, att = torch.randn(4, 7, text_dim), torch.ones(4, 7, dtype=torch.long)

    def id_model_gradient() -> float:
        idm.zero_grad()
        masked_features = features.masked_fill(masked, idm.mask_feature_id)
        v_hat, _ = idm(masked_features)
        loss, _ = head.loss(v_hat, w, att, masked, features, generator=torch.Generator().manual_seed(0))
        loss.backward()
        return sum(float(p.grad.abs().sum()) for p in idm.parameters() if p.grad is not None)

    assert id_model_gradient() > 0
    with torch.no_grad():
        head.query.zero_()  # uniform attention: u no longer depends on v̂
    assert (id_model_gradient() > 0) is (predictor_input == "masked_and_attended")


# ---------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("key", "value"),
    [("icl_projection", "cosine"), ("noise_scope", "batch"), ("nce", "sampled"), ("mtm_input", "masked"),
     ("remove_accidental_hits", "yes")],
)
def test_invalid_switch_values_name_the_key_and_the_allowed_values(key, value):
    with pytest.raises(ValueError, match=rf"{key} must be one of .*got '{value}'"):
        AlignmentConfig(**{key: value})


def test_heads_validate_their_switches():
    with pytest.raises(ValueError, match="projection must be one of 'layernorm', 'l2'"):
        ICLHead(4, 4, projection="cosine")
    with pytest.raises(ValueError, match="nce must be one of 'corrected', 'negative_sampling'"):
        mtm_head(nce="sampled")
    with pytest.raises(ValueError, match="predictor_input must be one of 'attended', 'masked_and_attended'"):
        mtm_head(predictor_input="masked")


def test_full_yaml_holds_the_method_defaults():
    full = OmegaConf.to_container(OmegaConf.load(CONF / "ablation" / "full.yaml"))
    defaults = asdict(AlignmentConfig())
    assert {k: full[k] for k in SWITCHES} == {k: defaults[k] for k in SWITCHES}
    assert full["icl_projection"] == "layernorm" and full["noise_scope"] == "global"
    assert full["nce"] == "corrected" and full["mtm_input"] == "masked_and_attended"
