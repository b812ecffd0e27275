"""Tests for flip_ctr.data.masking (paper §IV-C1: field-level masking of both modalities)."""

from __future__ import annotations

import math

import pytest
import torch

from flip_ctr.data.masking import (
    choose_masked_fields,
    field_level_text_mask,
    mask_batch,
    mask_tabular,
    mask_text,
    num_masked,
    token_level_text_mask,
)

MASK_TOKEN = 99
NUM_FEATURES = 30  # fields own [0,10), [10,20), [20,30); the <MASK> feature is id 30


def hand_batch() -> dict[str, torch.Tensor]:
    """Two samples, three fields: "[CLS] <name> is <value> . (x3) [SEP] <pad>...".

    Per field the sentence is name, "is", value token(s), "." — only the value tokens are in
    the value span. L = 17.
    """
    # sample 0: CLS | f0: n is v . | f1: n is v v . | f2: n is v . | SEP | pad pad
    fid0 = [-1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, -1, -1, -1]
    val0 = [0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0]
    att0 = [1] * 15 + [0, 0]
    # sample 1: CLS | f0: n is v v v . | f1: n is v . | f2: n is v v . | SEP
    fid1 = [-1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, -1]
    val1 = [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0]
    att1 = [1] * 17
    return {
        "input_ids": torch.arange(1, 35).view(2, 17),
        "attention_mask": torch.tensor([att0, att1]),
        "token_field_ids": torch.tensor([fid0, fid1]),
        "value_token_mask": torch.tensor([val0, val1], dtype=torch.bool),
        "feature_ids": torch.tensor([[3, 12, 25], [7, 10, 29]]),
    }


def test_num_masked_rounding_rule():
    for n in range(1, 20):
        for r in (0.05, 0.15, 0.3, 0.5, 0.6, 1.0):
            expected = min(n, max(1, math.floor(r * n + 0.5)))
            assert num_masked(n, r) == expected
    assert num_masked(8, 0.15) == 1 and num_masked(8, 0.3) == 2 and num_masked(8, 0.6) == 5
    assert num_masked(5, 0.5) == 3  # half rounds up (Python's round would give 2)
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            num_masked(8, bad)


@pytest.mark.parametrize("num_fields,ratio", [(3, 0.15), (8, 0.3), (8, 0.6), (15, 0.15), (4, 1.0)])
def test_choose_masked_fields_count_per_sample(num_fields, ratio):
    g = torch.Generator().manual_seed(0)
    m = choose_masked_fields(64, num_fields, ratio, g)
    assert m.dtype == torch.bool and m.shape == (64, num_fields)
    assert (m.sum(dim=1) == num_masked(num_fields, ratio)).all()


def test_choose_masked_fields_is_uniform():
    g = torch.Generator().manual_seed(1)
    m = choose_masked_fields(20000, 5, 0.4, g)  # 2 of 5 fields per sample
    freq = m.float().mean(dim=0)
    assert torch.allclose(freq, torch.full((5,), 0.4), atol=0.02)


def test_masks_advance_and_reseed():
    g = torch.Generator().manual_seed(123)
    a = choose_masked_fields(32, 8, 0.3, g)
    b = choose_masked_fields(32, 8, 0.3, g)
    assert not torch.equal(a, b), "an advancing generator must give a fresh mask"
    g.manual_seed(123)
    assert torch.equal(choose_masked_fields(32, 8, 0.3, g), a)
    assert torch.equal(choose_masked_fields(32, 8, 0.3, g), b)


def test_field_level_text_mask_covers_exactly_chosen_value_tokens():
    batch = hand_batch()
    chosen = torch.tensor([[False, True, False], [True, False, True]])
    mask = field_level_text_mask(batch["token_field_ids"], batch["value_token_mask"], chosen)
    expected = torch.zeros(2, 17, dtype=torch.bool)
    expected[0, [7, 8]] = True  # sample 0, field 1 value span
    expected[1, [3, 4, 5]] = True  # sample 1, field 0 value span
    expected[1, [13, 14]] = True  # sample 1, field 2 value span
    assert torch.equal(mask, expected)
    # exhaustive check against the definition for random field choices
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        chosen = choose_masked_fields(2, 3, 0.6, g)
        mask = field_level_text_mask(batch["token_field_ids"], batch["value_token_mask"], chosen)
        for i in range(2):
            for l in range(17):
                f = int(batch["token_field_ids"][i, l])
                want = f >= 0 and bool(chosen[i, f]) and bool(batch["value_token_mask"][i, l])
                assert bool(mask[i, l]) == want


def test_mask_text_replaces_only_selected():
    batch = hand_batch()
    chosen = torch.tensor([[True, False, False], [False, False, True]])
    mask = field_level_text_mask(batch["token_field_ids"], batch["value_token_mask"], chosen)
    out = mask_text(batch["input_ids"], mask, MASK_TOKEN)
    assert (out[mask] == MASK_TOKEN).all()
    assert torch.equal(out[~mask], batch["input_ids"][~mask])
    assert torch.equal(batch["input_ids"], torch.arange(1, 35).view(2, 17)), "input must not be modified in place"


def test_mask_tabular_single_shared_mask_id():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 10, (16, 3), generator=g) + torch.tensor([0, 10, 20])
    chosen = choose_masked_fields(16, 3, 0.3, g)
    out = mask_tabular(ids, chosen, NUM_FEATURES)
    assert (out[chosen] == NUM_FEATURES).all()
    assert torch.equal(out[~chosen], ids[~chosen])
    assert set(out[chosen].unique().tolist()) == {NUM_FEATURES}
    assert ((out == NUM_FEATURES).sum(dim=1) == num_masked(3, 0.3)).all()


def test_token_level_mask_ignores_special_and_padding():
    batch = hand_batch()
    g = torch.Generator().manual_seed(0)
    special = batch["token_field_ids"] < 0
    seen = torch.zeros(2, 17, dtype=torch.bool)
    for _ in range(50):
        m = token_level_text_mask(batch["attention_mask"], batch["token_field_ids"], 0.3, g)
        assert not (m & special).any()
        assert not (m & (batch["attention_mask"] == 0)).any()
        candidates = (batch["attention_mask"].bool() & ~special).sum(dim=1)
        assert m.sum(dim=1).tolist() == [num_masked(int(c), 0.3) for c in candidates]
        seen |= m
        # bool special-tokens mask gives the same semantics
        g2 = torch.Generator().manual_seed(7)
        g3 = torch.Generator().manual_seed(7)
        a = token_level_text_mask(batch["attention_mask"], batch["token_field_ids"], 0.3, g2)
        b = token_level_text_mask(batch["attention_mask"], special, 0.3, g3)
        assert torch.equal(a, b)
    # token-level masking reaches template words too (not only value spans)
    assert (seen & ~batch["value_token_mask"] & ~special).any()


def test_mask_batch_both_modalities():
    batch = hand_batch()
    g = torch.Generator().manual_seed(0)
    out = mask_batch(batch, text_ratio=0.3, tab_ratio=0.3, mask_token_id=MASK_TOKEN, mask_feature_id=NUM_FEATURES, generator=g)
    # expected values written out by hand from hand_batch(), not by the masking functions:
    # the value-token positions of each field, per sample
    value_positions = [{0: [3], 1: [7, 8], 2: [12]}, {0: [3, 4, 5], 1: [9], 2: [13, 14]}]
    features = [[3, 12, 25], [7, 10, 29]]
    text_fields, tab_fields = out.text_masked_fields.tolist(), out.tab_masked_fields.tolist()
    for b in range(2):  # 30% of 3 fields rounds to 1 field per sample and modality
        assert sum(text_fields[b]) == 1 and sum(tab_fields[b]) == 1
    expected_mask = [[False] * 17 for _ in range(2)]
    expected_ids = [list(range(1, 18)), list(range(18, 35))]
    expected_features = [list(row) for row in features]
    for b in range(2):
        for f in range(3):
            if text_fields[b][f]:
                for j in value_positions[b][f]:
                    expected_mask[b][j] = True
                    expected_ids[b][j] = MASK_TOKEN
            if tab_fields[b][f]:
                expected_features[b][f] = NUM_FEATURES
    assert out.text_mask.tolist() == expected_mask
    assert out.masked_input_ids.tolist() == expected_ids
    assert out.masked_feature_ids.tolist() == expected_features
    assert batch["input_ids"].tolist() == [list(range(1, 18)), list(range(18, 35))]  # the input is not modified
    assert batch["feature_ids"].tolist() == features
    # ratio 1: every field of both modalities, a fully hand-written answer
    full = mask_batch(batch, text_ratio=1.0, tab_ratio=1.0, mask_token_id=MASK_TOKEN, mask_feature_id=NUM_FEATURES, generator=g)
    m = MASK_TOKEN
    assert full.masked_input_ids.tolist() == [
        [1, 2, 3, m, 5, 6, 7, m, m, 10, 11, 12, m, 14, 15, 16, 17],
        [18, 19, 20, m, m, m, 24, 25, 26, m, 28, 29, 30, m, m, 33, 34],
    ]
    assert full.masked_feature_ids.tolist() == [[NUM_FEATURES] * 3] * 2
    # the two modalities choose their fields independently: over seeds, they sometimes differ
    differ = 0
    for seed in range(20):
        o = mask_batch(batch, text_ratio=0.3, tab_ratio=0.3, mask_token_id=MASK_TOKEN, mask_feature_id=NUM_FEATURES,
                       generator=torch.Generator().manual_seed(seed))
        differ += not torch.equal(o.text_masked_fields, o.tab_masked_fields)
    assert differ > 0
    tok = mask_batch(
        batch, text_ratio=0.3, tab_ratio=0.3, mask_token_id=MASK_TOKEN, mask_feature_id=NUM_FEATURES, generator=g, token_level=True
    )
    assert tok.text_masked_fields is None and tok.text_mask.any()


# -- written against mutation survivors (results/mutation.md): each test fails on at least one ------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: num_masked(3, 0.0), r"mask ratio must be in \(0, 1\], got 0.0"),
        (lambda: choose_masked_fields(2, 0, 0.5), "num_fields must be positive, got 0"),
        (lambda: field_level_text_mask(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 4, dtype=torch.bool),
                                       torch.zeros(2, 3, dtype=torch.bool)),
         r"token_field_ids \(2, 5\) and value_token_mask \(2, 4\) differ"),
        (lambda: field_level_text_mask(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.bool),
                                       torch.zeros(3, 3, dtype=torch.bool)),
         "masked_fields and token_field_ids have different batch sizes"),
        (lambda: token_level_text_mask(torch.ones(2, 5), torch.zeros(2, 4, dtype=torch.long), 0.5),
         r"shape mismatch: attention_mask \(2, 5\) vs \(2, 4\)"),
        (lambda: mask_tabular(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.bool), 9),
         r"feature_ids \(2, 3\) and masked_fields \(2, 4\) differ"),
    ],
)
def test_bad_shapes_and_values_are_named(call, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        call()


def test_nothing_to_mask_and_a_single_field():
    assert num_masked(0, 0.5) == 0  # an empty set masks nothing (not the "at least one" rule)
    one = choose_masked_fields(4, 1, 0.15, torch.Generator().manual_seed(0))
    assert one.tolist() == [[True]] * 4  # one field: it is always the masked one


def test_integer_masks_count_as_booleans():
    """0/1 integer masks (e.g. read back from a file) select exactly what the bool masks select."""
    batch = hand_batch()
    fields = torch.tensor([[1, 0, 1], [0, 1, 0]])
    as_int = field_level_text_mask(batch["token_field_ids"], batch["value_token_mask"].long(), fields)
    assert as_int.dtype == torch.bool  # torch.equal alone would accept a 0/1 long tensor
    assert torch.equal(as_int, field_level_text_mask(batch["token_field_ids"], batch["value_token_mask"], fields.bool()))
    assert torch.equal(mask_text(batch["input_ids"], as_int.long(), MASK_TOKEN), mask_text(batch["input_ids"], as_int, MASK_TOKEN))
    assert torch.equal(mask_tabular(batch["feature_ids"], fields, NUM_FEATURES), mask_tabular(batch["feature_ids"], fields.bool(), NUM_FEATURES))
    special = batch["token_field_ids"] < 0
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(token_level_text_mask(batch["attention_mask"], special.long().bool(), 0.3, g()),
                       token_level_text_mask(batch["attention_mask"], batch["token_field_ids"], 0.3, g()))


def test_token_level_masks_one_token_when_the_ratio_rounds_to_zero():
    batch = hand_batch()
    mask = token_level_text_mask(batch["attention_mask"], batch["token_field_ids"], 0.01, torch.Generator().manual_seed(0))
    assert mask.sum(dim=1).tolist() == [1, 1]  # floor(0.01 * n + 0.5) = 0 → at least one


@pytest.mark.parametrize("token_level", [False, True])
def test_mask_batch_follows_its_generator(token_level):
    """The same seed gives the same masks on both modalities; another seed gives other masks."""
    batch = hand_batch()

    def run(seed):
        out = mask_batch(batch, text_ratio=0.3, tab_ratio=0.3, mask_token_id=MASK_TOKEN, mask_feature_id=NUM_FEATURES,
                         generator=torch.Generator().manual_seed(seed), token_level=token_level)
        return out.text_mask, out.tab_masked_fields

    first = run(5)
    assert all(torch.equal(a, b) for a, b in zip(first, run(5)))
    others = [run(s) for s in range(6, 26)]
    assert any(not torch.equal(o[0], first[0]) for o in others) and any(not torch.equal(o[1], first[1]) for o in others)


def test_masks_without_a_generator_use_torchs_global_generator():
    torch.manual_seed(11)
    fields = choose_masked_fields(6, 4, 0.5)
    assert fields.sum(dim=1).tolist() == [2] * 6
    batch = hand_batch()
    torch.manual_seed(11)
    assert torch.equal(choose_masked_fields(6, 4, 0.5), fields)  # reproducible through torch.manual_seed
    assert token_level_text_mask(batch["attention_mask"], batch["token_field_ids"], 0.3).sum(dim=1).tolist() == [4, 5]
