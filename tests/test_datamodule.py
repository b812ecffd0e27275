"""CTRDataModule on a small ML-100K fixture in the raw on-disk formats (original and atomic).

The fixture (``write_ml100k_fixture``) is also used by test_stages.py and test_cli.py: a few
hundred ratings written by the writers of tests/fixtures_data.py, labels learnable from
(user, genre), shuffled file order (the chronological sort matters), one movie rated only at
the very end (a value unseen in training: OOV for the ID side, real text for the PLM side).
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

import fixtures_data as fx
from flip_ctr.data.datamodule import CTRDataModule
from flip_ctr.data.sources.movielens import load_ml100k
from flip_ctr.data.text import render_sentence

NUM_RATINGS = 480
LATE_MOVIE = 21  # rated only by the last ratings in time: never seen in training
_OCCUPATIONS = ["technician", "other", "writer", "educator", "student", "programmer", "librarian", "doctor"]
_WORDS = ["Heat", "Casino", "Babe", "Clueless", "Sabrina", "Nixon", "Balto", "Othello", "Persuasion", "Jumanji",
          "Restoration", "Carrington", "Sense and Sensibility", "Twelve Monkeys", "City of Lost Children, The",
          "Dead Man Walking", "Brothers McMullen, The"]


def fixture_rows(seed: int = 0) -> tuple[list, list, list]:
    """(users, items, ratings) in the tuple layouts of fixtures_data.ML100K_*."""
    rng = np.random.default_rng(seed)
    users = [
        (u, int(rng.integers(18, 70)), "MF"[u % 2], _OCCUPATIONS[u % len(_OCCUPATIONS)], f"{rng.integers(10000, 99999)}")
        for u in range(1, 16)
    ]
    items = list(fx.ML100K_ITEMS)  # 4 hand-written movies (accents, no year, no genre)
    for k, word in enumerate(_WORDS[: LATE_MOVIE - 4], start=5):
        genres = sorted(rng.choice(19, size=int(rng.integers(1, 4)), replace=False).tolist())
        items.append((k, f"{word} ({1970 + int(rng.integers(0, 28))})", "01-Jan-1995", genres))
    assert items[-1][0] == LATE_MOVIE
    drama = {mid for mid, _, _, genres in items if 8 in genres or 5 in genres}
    times = 874_000_000 + np.sort(rng.choice(10_000_000, size=NUM_RATINGS, replace=False))
    ratings = []
    for n, t in enumerate(times):
        late = n >= NUM_RATINGS - 6
        u = int(rng.integers(1, 16))
        i = LATE_MOVIE if late else int(rng.integers(1, LATE_MOVIE))
        likes = (u % 2 == 0) == (i in drama)
        if rng.random() < 0.15:
            likes = not likes
        r = 3 if rng.random() < 0.15 else (int(rng.integers(4, 6)) if likes else int(rng.integers(1, 3)))
        if late:  # keep the late rows labelled (rating 3 would be dropped)
            r = 5 if n % 2 else 1
        ratings.append((u, i, r, int(t)))
    order = rng.permutation(len(ratings))  # file order is not chronological
    ratings = [ratings[j] for j in order]
    # two ratings sharing a timestamp: the split must keep their file order
    ratings[10] = (*ratings[10][:3], ratings[11][3])
    return users, items, ratings


def write_ml100k_fixture(folder: Path, fmt: str = "original", seed: int = 0) -> Path:
    """The larger fixture written by fixtures_data's own ML-100K writers (exact raw formats)."""
    users, items, ratings = fixture_rows(seed)
    writer = {"original": fx.write_ml100k_original, "atomic": fx.write_ml100k_atomic}[fmt]
    with mock.patch.multiple(fx, ML100K_USERS=users, ML100K_ITEMS=items, ML100K_RATINGS=ratings):
        return writer(Path(folder))


def make_dm(data_dir: Path, cache_dir: Path, tokenizer=None, **kw) -> CTRDataModule:
    dm = CTRDataModule(dataset="ml100k", data_dir=str(data_dir), cache_dir=str(cache_dir), tokenizer=tokenizer,
                       max_length=kw.pop("max_length", 256), **kw)
    dm.prepare_data()
    dm.setup()
    return dm


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=["original", "atomic"])
def data_dir(request, tmp_path_factory) -> Path:
    return write_ml100k_fixture(tmp_path_factory.mktemp(f"ml100k_{request.param}") / "ml-100k", request.param)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def loaded(data_dir):
    return load_ml100k(data_dir)


@pytest.fixture(scope="module")
def dm(data_dir, cache_dir, minilm_tokenizer) -> CTRDataModule:
    return make_dm(data_dir, cache_dir, minilm_tokenizer, batch_size=64, eval_batch_size=16)


def rows_of(loader) -> list[dict]:
    return list(iter(loader))


# ----------------------------------------------------------------------------- the fixture itself


def test_fixture_is_big_enough_with_both_labels_in_every_split(dm, loaded):
    art = dm.artifact
    n = art.labels.shape[0]
    assert n == loaded.table.height >= 300
    assert art.num_val > 0 and art.num_test > 0
    assert art.num_test == n - int(np.floor(0.9 * n))
    for split, (start, stop) in art.split_ranges.items():
        assert set(np.unique(art.labels[start:stop]).tolist()) == {0, 1}, split


def test_original_and_atomic_formats_give_the_same_artifact(tmp_path, minilm_tokenizer):
    a = make_dm(write_ml100k_fixture(tmp_path / "o" / "ml-100k", "original"), tmp_path / "c1")
    b = make_dm(write_ml100k_fixture(tmp_path / "a" / "ml-100k", "atomic"), tmp_path / "c2")
    assert a.artifact.space.values == b.artifact.space.values
    np.testing.assert_array_equal(a.artifact.value_ids, b.artifact.value_ids)
    np.testing.assert_array_equal(a.artifact.labels, b.artifact.labels)


# ----------------------------------------------------------------------------- batches


def test_batch_keys_shapes_dtypes(dm):
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {
        "feature_ids", "labels", "row_ids", "input_ids", "attention_mask", "token_field_ids", "value_token_mask", "text_value_ids"
    }
    b, f = batch["feature_ids"].shape
    # the text side's local value ids: the same row's values, unseen ones kept (not OOV-mapped)
    np.testing.assert_array_equal(batch["text_value_ids"].numpy(), np.asarray(dm.artifact.value_ids)[batch["row_ids"].numpy()])
    assert b == dm.batch_size and f == dm.num_fields == len(dm.space.schema.fields)
    assert batch["feature_ids"].dtype == torch.long and batch["row_ids"].dtype == torch.long
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (b,)
    assert set(batch["labels"].unique().tolist()) <= {0.0, 1.0}
    length = batch["input_ids"].shape[1]
    for key in ("input_ids", "attention_mask", "token_field_ids", "value_token_mask"):
        assert batch[key].shape == (b, length), key
    assert batch["input_ids"].dtype == torch.long and batch["token_field_ids"].dtype == torch.long
    assert batch["value_token_mask"].dtype == torch.bool
    # dynamic padding: the longest row fills the batch, attention is a prefix of ones
    am = batch["attention_mask"]
    assert int(am.sum(1).max()) == length
    assert torch.equal(am, (torch.arange(length) < am.sum(1, keepdim=True)).to(am.dtype))
    # labels and row ids agree with the artifact
    rows = batch["row_ids"].numpy()
    np.testing.assert_array_equal(batch["labels"].numpy(), dm.artifact.labels[rows].astype(np.float32))


def test_feature_ids_inside_field_ranges_and_oov_for_unseen(dm):
    space, art = dm.space, dm.artifact
    offsets = torch.tensor(space.field_offsets)
    movie = space.schema.field_columns.index("movie_id")
    late_seen = False
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for batch in loader:
            ids = batch["feature_ids"]
            assert ((ids >= offsets[:-1]) & (ids < offsets[1:])).all()
            assert (ids < space.mask_feature_id).all()
            np.testing.assert_array_equal(ids.numpy(), art.feature_ids(batch["row_ids"].numpy()))
            # a movie rated only in the test part: OOV id on the ID side, its real title on the text side
            local = art.value_ids[batch["row_ids"].numpy(), movie]
            late = space.values[movie][1:].index(str(LATE_MOVIE)) + 1
            hit = torch.from_numpy(local == late)
            if hit.any():
                late_seen = True
                assert late > space.num_seen[movie]
                assert (ids[hit, movie] == space.field_offsets[movie]).all()
    assert late_seen


def test_text_matches_each_rows_raw_values(dm, loaded, minilm_tokenizer):
    tok = minilm_tokenizer
    space, art = dm.space, dm.artifact
    names, columns = space.schema.field_names, space.schema.field_columns
    by_source = {r["row_in_source"]: r for r in loaded.table.iter_rows(named=True)}
    batch = next(iter(dm.val_dataloader()))
    some_template_token = False
    for i, row in enumerate(batch["row_ids"].tolist()):
        values = [space.values[f][art.value_ids[row, f]] for f in range(space.num_fields)]
        # the text describes the very row the labels/ids come from (raw file values)
        source = by_source[int(art.row_in_source[row])]
        assert values == [source[c] for c in columns]
        n = int(batch["attention_mask"][i].sum())
        ids = batch["input_ids"][i, :n]
        assert ids.tolist() == tok(render_sentence(names, values))["input_ids"]
        fields, value_mask = batch["token_field_ids"][i], batch["value_token_mask"][i]
        assert fields[0] == -1 and fields[n - 1] == -1 and (fields[n:] == -1).all()
        assert not value_mask[n:].any() and not value_mask[fields < 0].any()
        for f in range(space.num_fields):
            in_value = (fields == f) & value_mask
            expected = tok(f" {values[f]}", add_special_tokens=False)["input_ids"][: dm.max_value_tokens]
            assert batch["input_ids"][i][in_value].tolist() == expected, (f, values[f])
            assert tok.decode(batch["input_ids"][i][in_value]) == tok.decode(expected)
            sentence = batch["input_ids"][i][fields == f].tolist()
            assert sentence == tok(f"{names[f]} is {values[f]}.", add_special_tokens=False)["input_ids"]
            template = batch["input_ids"][i][(fields == f) & ~value_mask].tolist()
            assert template == tok(f"{names[f]} is", add_special_tokens=False)["input_ids"] + tok(".", add_special_tokens=False)["input_ids"]
            some_template_token |= bool(template)
    assert some_template_token


def test_truncation_keeps_cls_sep_and_consistent_masks(data_dir, cache_dir, minilm_tokenizer):
    short = make_dm(data_dir, cache_dir, minilm_tokenizer, max_length=24, eval_batch_size=32)
    batch = next(iter(short.val_dataloader()))
    assert batch["input_ids"].shape[1] <= 24
    n = batch["attention_mask"].sum(1)
    rows = torch.arange(n.numel())
    assert (batch["input_ids"][:, 0] == minilm_tokenizer.cls_token_id).all()
    assert (batch["input_ids"][rows, n - 1] == minilm_tokenizer.sep_token_id).all()
    full = next(iter(make_dm(data_dir, cache_dir, minilm_tokenizer, eval_batch_size=32).val_dataloader()))
    # the truncated body is the prefix of the full body
    for i in range(n.numel()):
        k = int(n[i]) - 1
        assert torch.equal(batch["input_ids"][i, :k], full["input_ids"][i, :k])
        assert torch.equal(batch["token_field_ids"][i, 1:k], full["token_field_ids"][i, 1:k])
        assert torch.equal(batch["value_token_mask"][i, :k], full["value_token_mask"][i, :k])


# ----------------------------------------------------------------------------- splits


def test_splits_are_chronological_disjoint_and_cover_all_rows(dm, loaded):
    art = dm.artifact
    ranges = art.split_ranges
    n = art.labels.shape[0]
    (a0, a1), (b0, b1), (c0, c1) = ranges["fit"], ranges["val"], ranges["test"]
    assert a0 == 0 and a1 == b0 and b1 == c0 and c1 == n and a1 > a0 and b1 > b0 and c1 > c0
    assert ranges["train"] == (0, b1)
    # what the loaders actually yield: every row exactly once, in the right split
    seen = {}
    for split, loader in (("fit", dm.train_dataloader()), ("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        rows = torch.cat([b["row_ids"] for b in loader]).tolist()
        assert sorted(rows) == list(range(*ranges[split])), split
        seen[split] = set(rows)
    assert not (seen["fit"] & seen["val"]) and not (seen["val"] & seen["test"]) and not (seen["fit"] & seen["test"])
    assert len(seen["fit"] | seen["val"] | seen["test"]) == n
    # chronological: artifact row order is (timestamp, file position) order of the raw rows
    time_of = dict(zip(loaded.table["row_in_source"].to_list(), loaded.table["timestamp"].to_list()))
    times = np.array([time_of[int(r)] for r in art.row_in_source])
    expected = loaded.table.sort(["timestamp", "row_in_source"])["row_in_source"].to_numpy()
    np.testing.assert_array_equal(art.row_in_source, expected)
    assert times[:a1].max() <= times[b0:b1].min() and times[:b1].max() <= times[c0:].min()


def test_feature_frequencies_count_the_training_part_only(dm):
    art = dm.artifact
    _, stop = art.split_ranges["train"]
    counts = np.bincount(art.feature_ids(slice(0, stop)).ravel(), minlength=dm.num_features)
    np.testing.assert_array_equal(art.feature_frequencies, counts)
    assert art.feature_frequencies.shape == (dm.num_features,)


# ----------------------------------------------------------------------------- loaders


def test_two_workers_yield_identical_batches(data_dir, cache_dir, dm, minilm_tokenizer, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    parallel = make_dm(data_dir, cache_dir, minilm_tokenizer, batch_size=64, eval_batch_size=16, num_workers=2)
    assert parallel.artifact.path == dm.artifact.path  # the cache is shared, not rebuilt
    serial_batches = rows_of(dm.val_dataloader())
    loader = parallel.val_dataloader()
    assert loader.num_workers == 2
    parallel_batches = rows_of(loader)
    assert len(serial_batches) == len(parallel_batches) > 1
    for s, p in zip(serial_batches, parallel_batches):
        assert s.keys() == p.keys()
        for key in s:
            assert s[key].dtype == p[key].dtype and torch.equal(s[key], p[key]), key


def test_without_tokenizer_no_text_keys_and_same_ids(data_dir, cache_dir, dm):
    plain = make_dm(data_dir, cache_dir, None, eval_batch_size=16)
    assert plain.text is None
    for a, b in zip(plain.val_dataloader(), dm.val_dataloader()):
        assert set(a) == {"feature_ids", "labels", "row_ids"}
        for key in a:
            assert torch.equal(a[key], b[key])


def test_empty_split_and_bad_train_split_are_refused(data_dir, cache_dir):
    with pytest.raises(ValueError, match="train_split"):
        CTRDataModule(dataset="ml100k", data_dir=str(data_dir), cache_dir=str(cache_dir), train_split="all")
    no_val = make_dm(data_dir, cache_dir, None, val_fraction=0.0)
    with pytest.raises(ValueError, match="empty"):
        no_val.val_dataloader()
    assert len(no_val.train_dataloader().dataset) == no_val.artifact.num_fit > 0


def test_fixture_raw_file_is_shuffled_in_time(data_dir, loaded):
    # guards the fixture: the chronological sort is exercised only if the file order is not chronological
    times = loaded.table.sort("row_in_source")["timestamp"].to_numpy()
    assert (np.diff(times) < 0).any()
    assert loaded.table["timestamp"].is_duplicated().any()


def test_resumable_sampler_draws_what_randomsampler_draws_and_replays_a_saved_epoch():
    """The training order (and so every recorded number) is RandomSampler's under the same global
    seed; a resume point replays the rest of a saved epoch without touching the global generator."""
    from torch.utils.data import RandomSampler

    from flip_ctr.data.datamodule import ResumableRandomSampler

    torch.manual_seed(0)
    plain = [list(RandomSampler(range(500))) for _ in range(3)]
    after_plain = torch.rand(1)
    torch.manual_seed(0)
    sampler = ResumableRandomSampler(range(500))
    ours = []
    for _ in range(3):
        ours.append(list(sampler))
        if len(ours) == 2:
            second_seed = sampler.epoch_seed
    assert ours == plain and torch.equal(torch.rand(1), after_plain)
    state = torch.get_rng_state()
    replay = ResumableRandomSampler(range(500), resume_point=(second_seed, 123))
    assert list(replay) == plain[1][123:]
    assert torch.equal(torch.get_rng_state(), state)  # no draw for the replayed epoch
    assert list(replay) != plain[1][123:] and len(list(replay)) == 500  # later epochs draw afresh
