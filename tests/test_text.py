import pytest
import torch

from flip_ctr.data.preprocess import SplitConfig, build_artifact
from flip_ctr.data.text import TextPieces, render_sentence


def _pieces(tokenizer, max_length=256):
    names = ["occupation", "movie title", "genre"]
    values = [
        ["unknown", "college/grad student", "writer"],
        ["unknown", "Toy Story (1995)", "Heat"],
        ["unknown", "Animation, Children's, Comedy", "Drama"],
    ]
    return names, values, TextPieces(names, values, tokenizer, max_length=max_length)


def test_assembled_tokens_equal_tokenizing_the_sentence(minilm_tokenizer):
    names, values, pieces = _pieces(minilm_tokenizer)
    local = torch.tensor([[1, 1, 1], [2, 2, 2], [1, 2, 1]])
    batch = pieces.assemble(local)
    for row in range(local.shape[0]):
        sentence = render_sentence(names, [values[f][int(local[row, f])] for f in range(3)])
        expected = minilm_tokenizer(sentence)["input_ids"]
        length = int(batch.attention_mask[row].sum())
        assert batch.input_ids[row, :length].tolist() == expected
        assert (batch.input_ids[row, length:] == minilm_tokenizer.pad_token_id).all()


def test_token_field_map_marks_value_spans(minilm_tokenizer):
    names, values, pieces = _pieces(minilm_tokenizer)
    batch = pieces.assemble(torch.tensor([[1, 1, 1]]))
    ids = batch.input_ids[0].tolist()
    fields = batch.token_field_ids[0].tolist()
    is_value = batch.value_token_mask[0].tolist()
    assert fields[0] == -1 and fields[len(ids) - 1] == -1  # [CLS], [SEP]
    for f in range(3):
        value_tokens = [t for t, fi, v in zip(ids, fields, is_value) if fi == f and v]
        template_tokens = [t for t, fi, v in zip(ids, fields, is_value) if fi == f and not v]
        assert minilm_tokenizer.decode(value_tokens) == minilm_tokenizer.decode(
            minilm_tokenizer(values[f][1], add_special_tokens=False)["input_ids"]
        )
        assert minilm_tokenizer.decode(template_tokens).replace(" ", "") == f"{names[f]}is.".replace(" ", "")


def test_truncation_is_reported_and_keeps_sep(minilm_tokenizer):
    _, _, pieces = _pieces(minilm_tokenizer, max_length=12)
    batch = pieces.assemble(torch.tensor([[1, 1, 1], [2, 2, 2]]))
    assert batch.input_ids.shape[1] == 12
    assert batch.num_truncated == 2
    assert (batch.input_ids[:, -1] == minilm_tokenizer.sep_token_id).all()
    assert (batch.token_field_ids[:, -1] == -1).all()


def test_dynamic_padding_uses_longest_row(minilm_tokenizer):
    _, _, pieces = _pieces(minilm_tokenizer)
    short = pieces.assemble(torch.tensor([[2, 2, 2]]))
    mixed = pieces.assemble(torch.tensor([[2, 2, 2], [1, 1, 1]]))
    assert short.input_ids.shape[1] < mixed.input_ids.shape[1]
    assert int(mixed.attention_mask.sum(1).max()) == mixed.input_ids.shape[1]


def test_artifact_values_render_through_pieces(minilm_tokenizer, loaded_table):
    parts = build_artifact(loaded_table, SplitConfig())
    space = parts["space"]
    pieces = TextPieces(space.schema.field_names, space.values, minilm_tokenizer)
    local = torch.from_numpy(parts["value_ids"][:4].astype("int64"))
    batch = pieces.assemble(local)
    row = loaded_table.table.sort(["timestamp", "row_in_source"]).row(0, named=True)
    sentence = render_sentence(space.schema.field_names, [row[c] for c in space.schema.field_columns])
    length = int(batch.attention_mask[0].sum())
    assert batch.input_ids[0, :length].tolist() == minilm_tokenizer(sentence)["input_ids"]


def test_long_tokenization_reports_each_field(minilm_tokenizer, caplog, monkeypatch):
    import logging

    import flip_ctr.data.text as text_module

    caplog.set_level(logging.INFO, logger="flip_ctr.data.text")
    _pieces(minilm_tokenizer)  # 9 values: below the threshold, one summary line only
    quiet = [r.getMessage() for r in caplog.records]
    assert not any("tokenized field" in m for m in quiet) and any("tokenized 9 distinct values of 3 fields" in m for m in quiet)
    caplog.clear()
    monkeypatch.setattr(text_module, "LONG_WORK_VALUES", 9)
    _pieces(minilm_tokenizer)
    per_field = [r.getMessage() for r in caplog.records if "tokenized field" in r.getMessage()]
    assert [m.split(":")[0] for m in per_field] == [
        "tokenized field 1/3 'occupation'", "tokenized field 2/3 'movie title'", "tokenized field 3/3 'genre'"
    ]


TRICKY_VALUES = [
    "",  # empty: the piece is "<name> is ."
    " ",
    "unknown",
    "Toy Story (1995)",
    "Ærøskøbing · Zürich — naïve café",  # accents (WordPiece strips them), punctuation
    "東京 ラーメン 北京",  # CJK: a token per character
    "🙂 emoji 🚀",  # unknown to the vocabulary
    "[CLS] [SEP] [PAD]",  # special-token text inside a value
    "tab\there\nnewline",
    " ".join(f"word{i}" for i in range(80)),  # far more than max_value_tokens tokens
    "supercalifragilisticexpialidocious " * 6,
]


def _reference_field(tokenizer, index, name, values, max_value_tokens, pad_id):
    """The former loop: one tokenizer call over the list, then a row at a time."""
    from flip_ctr.data.text import fill_pieces_loop

    lead = "" if index == 0 else " "
    prefix = tokenizer(f"{lead}{name} is", add_special_tokens=False)["input_ids"]
    suffix = tokenizer(".", add_special_tokens=False)["input_ids"]
    ids = tokenizer([f" {v}" for v in values], add_special_tokens=False)["input_ids"]
    tokens, value_lengths = fill_pieces_loop(ids, prefix, suffix, max_value_tokens, pad_id)
    return tokens, value_lengths, len(prefix), sum(len(v) > max_value_tokens for v in ids)


@pytest.mark.parametrize("max_value_tokens", [1, 5, 32])
def test_array_built_pieces_equal_the_former_loop_on_tricky_values(minilm_tokenizer, max_value_tokens):
    names = ["title", "author name", "empty field"]
    values = [TRICKY_VALUES, list(reversed(TRICKY_VALUES)) + ["x"], [""]]
    pieces = TextPieces(names, values, minilm_tokenizer, max_value_tokens=max_value_tokens)
    long_values = 0
    for f, (name, vals) in enumerate(zip(names, values)):
        tokens, value_lengths, prefix_length, num_long = _reference_field(
            minilm_tokenizer, f, name, vals, max_value_tokens, pieces.pad_id
        )
        got = pieces.fields[f]
        assert got.tokens.dtype == torch.int64
        assert got.tokens.numpy().tolist() == tokens.tolist()
        assert got.value_lengths.tolist() == value_lengths.tolist()
        assert got.lengths.tolist() == (value_lengths + (got.tokens.shape[1] - int(value_lengths.max()))).tolist()
        assert got.prefix_length == prefix_length
        long_values += num_long
    assert pieces.num_long_values == long_values
    assert long_values >= (2 if max_value_tokens == 32 else 4)  # truncation really exercised


def test_chunked_and_plain_tokenizer_paths_give_the_same_ids(minilm_tokenizer):
    from flip_ctr.data.text import tokenize_values

    class Plain:  # a tokenizer without a fast backend: the ``tokenizer(list)`` path
        is_fast = False

        def __call__(self, *args, **kwargs):
            return minilm_tokenizer(*args, **kwargs)

    values = TRICKY_VALUES * 3
    expected = minilm_tokenizer([f" {v}" for v in values], add_special_tokens=False)["input_ids"]
    for tok, chunk_size in [(minilm_tokenizer, 4), (minilm_tokenizer, 10_000), (Plain(), 5)]:
        flat, lengths = tokenize_values(values, tok, chunk_size=chunk_size)
        assert lengths.tolist() == [len(e) for e in expected]
        assert flat.tolist() == [t for e in expected for t in e]
    flat, lengths = tokenize_values([], minilm_tokenizer)
    assert flat.shape == lengths.shape == (0,)
