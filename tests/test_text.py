import pytest
import torch

from flip_ctr.data.preprocess import SplitConfig, build_artifact
from flip_ctr.data.text import TextPieces, render_sentence


NAMES = ["occupation", "movie title", "genre"]
VALUES = [
    ["unknown", "college/grad student", "writer"],
    ["unknown", "Toy Story (1995)", "Heat"],
    ["unknown", "Animation, Children's, Comedy", "Drama"],
]


def _pieces(tokenizer, max_length=256):
    return NAMES, VALUES, TextPieces(NAMES, VALUES, tokenizer, max_length=max_length)


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


# -- text pieces stored with the artifact (cached_text_pieces) ---------------------------------
def _cached(tmp_path, tokenizer, values=None, max_value_tokens=32, names=None):
    from flip_ctr.data.text import cached_text_pieces

    return cached_text_pieces(tmp_path, names or NAMES, values or VALUES, tokenizer, max_length=256, max_value_tokens=max_value_tokens)


def _assert_same_batches(a: TextPieces, b: TextPieces, num_values=(3, 3, 3)):
    generator = torch.Generator().manual_seed(0)
    local = torch.stack([torch.randint(0, n, (64,), generator=generator) for n in num_values], 1)
    x, y = a.assemble(local), b.assemble(local)
    for name in ("input_ids", "attention_mask", "token_field_ids", "value_token_mask"):
        assert torch.equal(getattr(x, name), getattr(y, name)), name
    assert torch.equal(a.token_ids(), b.token_ids())


def test_stored_pieces_are_memory_mapped_and_assemble_the_same_batches(tmp_path, minilm_tokenizer):
    import numpy as np

    names, values, fresh = _pieces(minilm_tokenizer)
    stored = _cached(tmp_path, minilm_tokenizer)
    _assert_same_batches(fresh, stored)
    (directory,) = (tmp_path / "text_pieces").iterdir()
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        ["pieces.json"] + [f"field{f}_{a}.npy" for f in range(3) for a in ("tokens", "lengths", "value_lengths")]
    )
    # the tensors are views of the files (copy-on-write maps), not copies in RAM
    tokens = stored.fields[1].tokens
    mapped = np.load(directory / "field1_tokens.npy", mmap_mode="r")
    assert torch.equal(tokens, torch.from_numpy(np.array(mapped)))
    with open("/proc/self/maps") as fh:
        assert str(directory / "field1_tokens.npy") in fh.read()


def test_second_run_reads_the_stored_pieces_without_tokenizing(tmp_path, minilm_tokenizer, monkeypatch, caplog):
    import flip_ctr.data.text as text

    first = _cached(tmp_path, minilm_tokenizer)

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again although the pieces are stored")

    monkeypatch.setattr(text, "tokenize_values", no_tokenizing)
    with caplog.at_level("INFO", logger="flip_ctr.data.text"):
        second = _cached(tmp_path, minilm_tokenizer)
    assert "using cached text pieces" in caplog.text
    _assert_same_batches(first, second)


def test_what_changes_the_pieces_changes_the_stored_entry(tmp_path, minilm_tokenizer):
    from transformers import BertTokenizerFast

    _cached(tmp_path, minilm_tokenizer)
    _cached(tmp_path, minilm_tokenizer, max_value_tokens=2)
    _cached(tmp_path, minilm_tokenizer, names=["job", "movie title", "genre"])
    # a tokenizer with another vocabulary (the same class) must not reuse MiniLM's ids
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "is", ".", "unknown", "writer", "heat", "drama"]))
    other = BertTokenizerFast(vocab_file=str(vocab))
    short = _cached(tmp_path, other)
    assert len(list((tmp_path / "text_pieces").iterdir())) == 4
    assert int(short.token_ids().max()) < 11


@pytest.mark.parametrize("damage", ["flip_a_byte", "remove_a_file", "old_format"])
def test_damaged_stored_pieces_are_rebuilt_with_a_warning(tmp_path, minilm_tokenizer, damage, caplog):
    import json

    first = _cached(tmp_path, minilm_tokenizer)
    (directory,) = (tmp_path / "text_pieces").iterdir()
    if damage == "flip_a_byte":
        path = directory / "field1_tokens.npy"
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "remove_a_file":
        (directory / "field2_lengths.npy").unlink()
    else:
        meta = json.loads((directory / "pieces.json").read_text())
        (directory / "pieces.json").write_text(json.dumps({**meta, "format": 0}))
    with caplog.at_level("WARNING", logger="flip_ctr.data.text"):
        rebuilt = _cached(tmp_path, minilm_tokenizer)
    assert "rebuilding text pieces" in caplog.text
    _assert_same_batches(first, rebuilt)


def test_unwritable_cache_trains_from_memory(tmp_path, minilm_tokenizer, caplog):
    (tmp_path / "text_pieces").write_text("a file where the directory should go")
    with caplog.at_level("WARNING", logger="flip_ctr.data.text"):
        pieces = _cached(tmp_path, minilm_tokenizer)
    assert "could not store text pieces" in caplog.text
    _assert_same_batches(_pieces(minilm_tokenizer)[2], pieces)
