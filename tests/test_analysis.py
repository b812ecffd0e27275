import numpy as np
import torch

from flip_ctr.analysis import alignment_heatmap, embedding_svd
from flip_ctr.data.preprocess import SplitConfig, build_artifact
from flip_ctr.data.text import TextPieces
from flip_ctr.models.alignment import ICLHead
from flip_ctr.models.id import build_id_model
from flip_ctr.models.plm import PLMEncoder


def tiny_alignment_setup(loaded_table, tokenizer, projection: str = "l2", pooling: str | None = "mean"):
    """(space, pieces, value ids of every row, a tiny PLM (``pooling``; None: its config's), a DeepFM, an ICL head)."""
    parts = build_artifact(loaded_table, SplitConfig())
    space = parts["space"]
    pieces = TextPieces(space.schema.field_names, space.values, tokenizer)
    local = torch.from_numpy(parts["value_ids"].astype("int64"))
    plm = PLMEncoder.random_like("minilm_l6", pooling=pooling, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).eval()
    id_model = build_id_model("deepfm", num_features=space.num_features, num_fields=space.num_fields).eval()
    icl = ICLHead(text_dim=32, id_dim=id_model.representation_dim, proj_dim=8, projection=projection).eval()
    return space, pieces, local, plm, id_model, icl


def text_batch(space, pieces, local) -> dict:
    """The datamodule's batch keys for the rows ``local`` (value ids)."""
    text = pieces.assemble(local)
    return {"feature_ids": local + torch.tensor(space.field_offsets[:-1]), "input_ids": text.input_ids,
            "attention_mask": text.attention_mask, "token_field_ids": text.token_field_ids,
            "value_token_mask": text.value_token_mask, "text_value_ids": local}


def test_embedding_svd_spectrum_detects_a_collapsed_space():
    torch.manual_seed(0)
    spread = torch.randn(200, 16)
    collapsed = torch.randn(200, 1) @ torch.randn(1, 16) + 1e-3 * torch.randn(200, 16)
    coords, spread_spectrum = embedding_svd(spread)
    _, collapsed_spectrum = embedding_svd(collapsed)
    assert coords.shape == (200, 2)
    assert np.isclose(spread_spectrum.sum(), 1.0)
    assert collapsed_spectrum[0] > 0.9 > spread_spectrum[0]


def test_alignment_heatmap_masks_one_field_per_row(loaded_table, minilm_tokenizer):
    torch.manual_seed(0)
    space, pieces, local, plm, id_model, icl = tiny_alignment_setup(loaded_table, minilm_tokenizer, pooling=None)
    batch = text_batch(space, pieces, local[:2])
    heatmap = alignment_heatmap(id_model, plm, icl, batch, 1, plm.mask_token_id)
    assert heatmap.shape == (space.num_fields, space.num_fields)
    # rows differ (a different text field is masked in each) and so do columns
    assert np.unique(heatmap.round(6), axis=0).shape[0] == space.num_fields
    assert np.unique(heatmap.round(6), axis=1).shape[1] == space.num_fields


def test_per_field_heatmap_of_a_short_row_in_a_padded_batch_equals_the_row_alone(loaded_table, minilm_tokenizer):
    """The per-field text states of one row end at its own length; the batch's attention mask
    pads to the longest row (mean pooling reads it). The heatmap must not depend on what else is in the batch."""
    from flip_ctr.models.field_text_states import FieldTextStates

    torch.manual_seed(0)
    space, pieces, local, plm, id_model, icl = tiny_alignment_setup(loaded_table, minilm_tokenizer)
    lengths = pieces.assemble(local).attention_mask.sum(1)
    short, long = int(lengths.argmin()), int(lengths.argmax())
    assert lengths[short] < lengths[long]
    states = FieldTextStates(pieces, plm)
    padded = alignment_heatmap(id_model, plm, icl, text_batch(space, pieces, local[[long, short]]), 1, plm.mask_token_id, states)
    alone = alignment_heatmap(id_model, plm, icl, text_batch(space, pieces, local[[short]]), 0, plm.mask_token_id, states)
    np.testing.assert_allclose(padded, alone, rtol=1e-5, atol=1e-6)
    # and what it masks: each field's sentence encoded alone by hand, in the padded batch
    oracle = hand_masked_per_field_heatmap(id_model, plm, icl, text_batch(space, pieces, local[[long, short]]), 1)
    np.testing.assert_allclose(padded, oracle, rtol=1e-5, atol=1e-6)


def test_cosine_heatmap_is_the_dot_product_over_the_norms(loaded_table, minilm_tokenizer):
    """Oracle: the dot-product heatmap divided by each side's projection length."""
    torch.manual_seed(0)
    space, pieces, local, plm, id_model, icl = tiny_alignment_setup(loaded_table, minilm_tokenizer, projection="layernorm")
    batch = text_batch(space, pieces, local[:2])
    dot = alignment_heatmap(id_model, plm, icl, batch, 1, plm.mask_token_id)
    cosine = alignment_heatmap(id_model, plm, icl, batch, 1, plm.mask_token_id, cosine=True)
    # dot[i, j] = cos[i, j] * |t_i| * |c_j|: the ratio is rank one, ratio[i, j] = ratio[i, 0] * ratio[0, j] / ratio[0, 0]
    ratio = dot / cosine
    outer = ratio[:, :1] * ratio[:1, :] / ratio[0, 0]
    np.testing.assert_allclose(ratio, outer, rtol=1e-4)
    assert np.all(np.abs(cosine) <= 1 + 1e-6) and not np.allclose(cosine, dot)


def hand_masked_heatmap(id_model, plm, icl, batch: dict, row: int) -> np.ndarray:
    """The heatmap's oracle, masked here by hand position by position: entry (i, j) is row ``row``'s
    text with field i's value tokens (only those) replaced by [MASK], against its table with field
    j's feature replaced by <MASK>."""
    att = batch["attention_mask"][row : row + 1]
    with torch.no_grad():
        texts, tables = [], []
        for f in range(id_model.num_fields):
            ids = batch["input_ids"][row].clone()
            for pos in range(ids.shape[0]):
                if int(batch["token_field_ids"][row, pos]) == f and bool(batch["value_token_mask"][row, pos]):
                    ids[pos] = plm.mask_token_id
            assert (ids == plm.mask_token_id).sum() >= 1  # every field has a value token to mask
            texts.append(plm.sentence_embedding(plm(ids[None], att), att))
            features = batch["feature_ids"][row].clone()
            features[f] = id_model.mask_feature_id
            tables.append(id_model(features[None])[0])
        z_text, z_tab = icl.project(torch.cat(texts), torch.cat(tables))
    return (z_text @ z_tab.T).numpy()


def hand_masked_per_field_heatmap(id_model, plm, icl, batch: dict, row: int) -> np.ndarray:
    """The oracle under ``text_encoding=per_field``, by separate PLM calls: each field's sentence
    (the row's tokens of that field, value tokens as [MASK] for the masked field) encoded alone as
    ``[CLS] s_g [SEP]``, the row's [CLS] and [SEP] as ``[CLS] [SEP]`` encoded alone, and the text
    vector the mean of all those token states (mean pooling)."""
    assert plm.pooling == "mean"
    ids, fields, values = batch["input_ids"][row], batch["token_field_ids"][row], batch["value_token_mask"][row]
    cls_id, sep_id = int(ids[0]), int(ids[int(batch["attention_mask"][row].sum()) - 1])
    with torch.no_grad():
        cls_sep = plm(torch.tensor([[cls_id, sep_id]]), torch.ones(1, 2, dtype=torch.long))[0]
        texts, tables = [], []
        for masked in range(id_model.num_fields):
            states = [cls_sep]
            for g in range(id_model.num_fields):
                sentence = ids[fields == g].clone()
                if g == masked:
                    sentence[values[fields == g]] = plm.mask_token_id
                tokens = torch.cat([torch.tensor([cls_id]), sentence, torch.tensor([sep_id])])[None]
                states.append(plm(tokens, torch.ones_like(tokens))[0, 1:-1])
            texts.append(torch.cat(states).mean(0, keepdim=True))
            features = batch["feature_ids"][row].clone()
            features[masked] = id_model.mask_feature_id
            tables.append(id_model(features[None])[0])
        z_text, z_tab = icl.project(torch.cat(texts), torch.cat(tables))
    return (z_text @ z_tab.T).numpy()


def test_heatmap_entries_are_the_hand_masked_projections(loaded_table, minilm_tokenizer):
    torch.manual_seed(0)
    space, pieces, local, plm, id_model, icl = tiny_alignment_setup(loaded_table, minilm_tokenizer, pooling=None)
    batch = text_batch(space, pieces, local[:3])
    row = 2
    heatmap = alignment_heatmap(id_model, plm, icl, batch, row, plm.mask_token_id)
    np.testing.assert_allclose(heatmap, hand_masked_heatmap(id_model, plm, icl, batch, row), rtol=1e-5, atol=1e-6)
