"""The compute switches of alignment pretraining: per-field text encoding with a frozen PLM
(``stages.pretrain.text_encoding=per_field``) and the MLM head over the text's own tokens
(``ablation.mlm_vocabulary=text``). Oracles: the PLM run by hand on each field's sentence,
the tokenizer's own ids, and a full-vocabulary cross-entropy restricted by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flip_ctr.config import ConfigError, validate_config
from flip_ctr.data.datamodule import BatchBuilder
from flip_ctr.models.alignment import MLMHead
from flip_ctr.models.field_text_states import FieldTextStates
from test_cli import compose_cfg
from test_stages import dm, gen, pretrain_module, tiny_plm  # noqa: F401  (dm is a fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def frozen_plm():
    plm = tiny_plm(3)
    plm.pooling = "mean"  # per field, cls pooling is refused with ICL (test_per_field_refuses_cls_pooling_for_icl)
    plm.requires_grad_(False)
    return plm.eval()


@pytest.fixture(scope="module")
def batch(dm):  # noqa: F811
    return BatchBuilder(dm.artifact, dm.text)(torch.arange(0, 64, 3))


def sentence_states(plm, tokenizer, name: str, value: str, first: bool) -> torch.Tensor:
    """Oracle: the PLM on ``[CLS] <name> is <value> . [SEP]`` tokenized from the plain string."""
    lead = "" if first else " "
    ids = tokenizer(f"{lead}{name} is {value}.", add_special_tokens=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return plm(ids, torch.ones_like(ids))[0, 1:-1]


def test_each_rows_states_are_its_field_sentences_encoded_alone(dm, batch, frozen_plm, minilm_tokenizer):  # noqa: F811
    states = FieldTextStates(dm.text, frozen_plm, batch_size=7).assemble(batch["text_value_ids"])
    assert states.shape[:2] == batch["input_ids"].shape
    names = dm.space.schema.field_names
    for row in (0, 5, len(batch["input_ids"]) - 1):
        for f, name in enumerate(names):
            value = dm.space.values[f][int(batch["text_value_ids"][row, f])]
            positions = (batch["token_field_ids"][row] == f).nonzero(as_tuple=True)[0]
            expected = sentence_states(frozen_plm, minilm_tokenizer, name, value, first=f == 0)
            torch.testing.assert_close(states[row, positions], expected, atol=1e-5, rtol=1e-4)
        padding = batch["attention_mask"][row] == 0
        assert states[row, padding].abs().sum() == 0


def test_masked_fields_take_the_states_of_their_masked_sentence(dm, batch, frozen_plm, minilm_tokenizer):  # noqa: F811
    cache = FieldTextStates(dm.text, frozen_plm)
    masked_fields = torch.zeros_like(batch["text_value_ids"], dtype=torch.bool)
    masked_fields[0, 1] = masked_fields[2, 3] = True
    plain = cache.assemble(batch["text_value_ids"])
    masked = cache.assemble(batch["text_value_ids"], masked_fields)
    names = dm.space.schema.field_names
    for row, f in ((0, 1), (2, 3)):
        positions = (batch["token_field_ids"][row] == f).nonzero(as_tuple=True)[0]
        n = int(batch["value_token_mask"][row, positions].sum())
        expected = sentence_states(frozen_plm, minilm_tokenizer, names[f], " ".join(["[MASK]"] * n), first=f == 0)
        torch.testing.assert_close(masked[row, positions], expected, atol=1e-5, rtol=1e-4)
        others = batch["token_field_ids"][row] != f
        torch.testing.assert_close(masked[row, others], plain[row, others])
    untouched = torch.ones(len(plain), dtype=torch.bool)
    untouched[[0, 2]] = False
    torch.testing.assert_close(masked[untouched], plain[untouched])


def test_per_field_pretraining_runs_no_plm_per_step_and_trains_the_id_model(dm, batch, frozen_plm):  # noqa: F811
    module = pretrain_module(dm, {}, plm=frozen_plm, freeze_plm=True, text_encoding="per_field", text_pieces=dm.text)
    module.field_states()  # built once, up front
    calls = []
    hook = frozen_plm.register_forward_hook(lambda *a: calls.append(1))
    try:
        losses = module.compute_losses(batch, gen(0))
    finally:
        hook.remove()
    assert calls == []
    losses["loss"].backward()
    assert all(torch.isfinite(losses[k]) for k in ("mlm", "mtm", "icl"))
    assert sum(p.grad.abs().sum() for p in module.id_model.parameters() if p.grad is not None) > 0


def test_row_and_per_field_encodings_differ_only_in_the_text_states(dm, batch, frozen_plm):  # noqa: F811
    """Same masks, same heads: the losses differ (cross-field context), the mask layout does not."""
    row = pretrain_module(dm, {}, plm=frozen_plm, freeze_plm=True)
    per_field = pretrain_module(dm, {}, plm=frozen_plm, freeze_plm=True, text_encoding="per_field", text_pieces=dm.text)
    per_field.load_state_dict(row.state_dict())
    masks = row.make_masks(batch, gen(1))
    torch.testing.assert_close(per_field.make_masks(batch, gen(1))["text_mask"], masks["text_mask"])
    w_row, _ = row.encode_text(batch, masks)
    w_field, _ = per_field.encode_text(batch, masks)
    assert w_row.shape == w_field.shape
    assert not torch.allclose(w_row, w_field)


@pytest.mark.parametrize(
    "settings, message",
    [({"freeze_plm": False}, "freeze_plm=true"), ({"field_level_masking": False}, "field-level text masking")],
)
def test_per_field_refuses_what_it_cannot_precompute(dm, frozen_plm, settings, message, tmp_path):  # noqa: F811
    alignment = {"field_level_masking": settings.get("field_level_masking", True)}
    with pytest.raises(ValueError, match=message):
        pretrain_module(dm, alignment, plm=frozen_plm, freeze_plm=settings.get("freeze_plm", True), text_encoding="per_field", text_pieces=dm.text)
    overrides = [
        "stages.pretrain.text_encoding=per_field",
        f"stages.pretrain.freeze_plm={settings.get('freeze_plm', True)}",
        f"ablation.field_level_masking={alignment['field_level_masking']}",
    ]
    cfg = compose_cfg("pipeline", overrides, tmp_path)
    with pytest.raises(ConfigError, match=f"stages.pretrain.text_encoding=per_field needs .*{message}"):
        validate_config(cfg)


def test_per_field_refuses_cls_pooling_for_icl(dm, tmp_path):  # noqa: F811
    """Per field, every row's [CLS] position holds the one state of ``[CLS] [SEP]`` encoded alone:
    under cls pooling ICL would see the same text vector for every row (found under DDP, where
    both ranks' ICL text inputs came out identical). Mean pooling reads the fields' states."""
    plm = tiny_plm(3).requires_grad_(False).eval()
    plm.pooling = "cls"
    assert plm.pooling == "cls"
    with pytest.raises(ValueError, match="plm.pooling=cls"):
        pretrain_module(dm, {}, plm=plm, freeze_plm=True, text_encoding="per_field", text_pieces=dm.text)
    pretrain_module(dm, {"use_icl": False}, plm=plm, freeze_plm=True, text_encoding="per_field", text_pieces=dm.text)
    overrides = ["stages.pretrain.text_encoding=per_field", "stages.pretrain.freeze_plm=true", "plm.pooling=cls"]
    with pytest.raises(ConfigError, match="plm.pooling=cls"):
        validate_config(compose_cfg("pipeline", overrides, tmp_path))
    validate_config(compose_cfg("pipeline", [*overrides, "ablation.use_icl=false"], tmp_path))
    validate_config(compose_cfg("pipeline", [*overrides[:2], "plm.pooling=mean"], tmp_path))


def test_text_vocabulary_is_every_token_of_the_pieces(dm, minilm_tokenizer):  # noqa: F811
    ids = dm.text.token_ids()
    expected = set()
    for f, name in enumerate(dm.space.schema.field_names):
        for value in dm.space.values[f]:
            lead = "" if f == 0 else " "
            expected.update(minilm_tokenizer(f"{lead}{name} is {value}.", add_special_tokens=False)["input_ids"])
    assert ids.tolist() == sorted(expected)


def test_text_vocabulary_mlm_is_the_full_softmax_restricted_to_it():
    torch.manual_seed(0)
    vocab, outputs = 40, torch.tensor([2, 5, 7, 11, 30])
    full = MLMHead(text_dim=6, id_dim=4, vocab_size=vocab, hidden_dim=8)
    restricted = MLMHead(text_dim=6, id_dim=4, vocab_size=vocab, hidden_dim=8, output_token_ids=outputs)
    restricted.transform.load_state_dict(full.transform.state_dict())
    restricted.decoder.weight.data = full.decoder.weight.data[outputs].clone()
    restricted.decoder.bias.data = full.decoder.bias.data[outputs].clone()
    states, v = torch.randn(3, 4, 6), torch.randn(3, 4)
    text_mask = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    targets = outputs[torch.randint(0, len(outputs), (3, 4))]
    loss, _ = restricted.loss(states, v, text_mask, targets)
    # Oracle: the full head's logits, columns outside the output set dropped, per-sample means.
    rows, cols = text_mask.nonzero(as_tuple=True)
    logits = full(states[rows, cols], v[rows])[:, outputs]
    index = torch.searchsorted(outputs, targets[rows, cols])
    ce = F.cross_entropy(logits, index, reduction="none")
    expected = torch.stack([ce[rows == r].mean() for r in range(3)]).mean()
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="outside output_token_ids"):
        restricted.loss(states, v, text_mask, torch.full((3, 4), 3))


def test_cpu_scale_token_masking_names_the_row_path_and_runs_with_it(tmp_path):
    """The CPU scale pretrains per field; token-level masking (Table VII's ablation) is refused
    with the switch that runs it, and validates with that switch."""
    with pytest.raises(ConfigError, match=r"text_encoding=row"):
        validate_config(compose_cfg("pipeline", ["ablation=token_masking"], tmp_path))
    validate_config(compose_cfg("pipeline", ["ablation=token_masking", "stages.pretrain.text_encoding=row"], tmp_path))
    ablations = compose_cfg("pipeline", ["experiment=ablations_ml100k_cpu", "ablation=token_masking"], tmp_path)
    validate_config(ablations)
    assert ablations.stages.pretrain.text_encoding == "row"
