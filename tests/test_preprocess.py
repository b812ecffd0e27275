import json

import numpy as np
import polars as pl
import pytest

from flip_ctr.data.preprocess import SplitConfig, build_artifact, load_or_build, read_artifact, StaleCacheError, write_artifact
from flip_ctr.data.schema import DataError

from conftest import make_loaded_table


def test_split_sizes_reproduce_paper_ml1m_test_set():
    fit, val, test = SplitConfig(test_fraction=0.1, val_fraction=0.1).sizes(739_012)
    assert test == 73_902
    assert fit + val == 665_110
    assert val == 66_511


def test_chronological_split_and_tie_break(loaded_table):
    parts = build_artifact(loaded_table, SplitConfig(0.1, 0.1))
    table = loaded_table.table
    order = table.sort(["timestamp", "row_in_source"])["row_in_source"].to_numpy()
    np.testing.assert_array_equal(parts["row_in_source"], order)
    times = table["timestamp"].to_numpy()[parts["row_in_source"]]
    n_train = parts["num_fit"] + parts["num_val"]
    # every test row is at least as late as every training row; validation is the end of train
    assert times[:n_train].max() <= times[n_train:].min()
    assert times[: parts["num_fit"]].max() <= times[parts["num_fit"] : n_train].min()
    assert parts["num_test"] == 200 - int(np.floor(200 * 0.9))


def test_equal_timestamps_keep_file_order():
    loaded = make_loaded_table(num_rows=50)
    loaded.table = loaded.table.with_columns(pl.lit(7, dtype=pl.Int64).alias("timestamp"))
    parts = build_artifact(loaded, SplitConfig())
    np.testing.assert_array_equal(parts["row_in_source"], np.arange(50))


def test_unseen_test_values_map_to_oov_but_keep_text():
    loaded = make_loaded_table(num_rows=100, shuffle_time=False)
    # last row (chronologically the test set) gets a movie never seen in training
    loaded.table = loaded.table.with_columns(
        pl.when(pl.col("row_in_source") == 99).then(pl.lit("Brand New Movie")).otherwise(pl.col("movie_id")).alias("movie_id")
    )
    parts = build_artifact(loaded, SplitConfig())
    space = parts["space"]
    field = loaded.schema.field_columns.index("movie_id")
    last_local = parts["value_ids"][-1, field]
    assert last_local > space.num_seen[field]  # not in the ID vocabulary
    assert space.values[field][last_local] == "Brand New Movie"  # text side still has it
    # lookup (serving path) maps it to the field's OOV id
    ids = space.lookup(pl.DataFrame({c: ["Brand New Movie"] for c in loaded.schema.field_columns}))
    assert ids[0, field] == space.field_offsets[field]
    assert parts["feature_frequencies"][space.field_offsets[field]] == 0


def test_frequencies_count_training_part_only(loaded_table):
    parts = build_artifact(loaded_table, SplitConfig())
    space = parts["space"]
    n_train = parts["num_fit"] + parts["num_val"]
    assert parts["feature_frequencies"].sum() == n_train * space.num_fields
    assert len(parts["feature_frequencies"]) == space.num_features
    # global ids of the training rows reproduce the frequency table
    local = parts["value_ids"][:n_train].astype(np.int64)
    global_ids = local + np.asarray(space.field_offsets[:-1])
    counts = np.bincount(global_ids.ravel(), minlength=space.num_features)
    np.testing.assert_array_equal(counts, parts["feature_frequencies"])


class CountingSource:
    """A DataSource stand-in: the toy table, keyed by ``files``; counts its loads."""

    def __init__(self, files):
        self.dataset, self.options, self.files, self.calls = "toy", {}, tuple(files), []

    def load(self):
        self.calls.append(1)
        return make_loaded_table()


def test_cache_roundtrip_and_corruption_rebuild(tmp_path, loaded_table):
    src = tmp_path / "src.csv"
    src.write_text("x")
    source = CountingSource([src])
    calls = source.calls
    first = load_or_build(source, SplitConfig(), tmp_path / "cache")
    second = load_or_build(source, SplitConfig(), tmp_path / "cache")
    assert len(calls) == 1
    np.testing.assert_array_equal(first.value_ids, second.value_ids)
    # corrupt one array: detected through the manifest digest and rebuilt
    victim = first.path / "labels.npy"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(StaleCacheError):
        read_artifact(first.path)
    third = load_or_build(source, SplitConfig(), tmp_path / "cache")
    assert len(calls) == 2
    expected = make_loaded_table().table.sort(["timestamp", "row_in_source"])["label"].to_numpy()
    np.testing.assert_array_equal(third.labels, expected)
    # a changed source file gives a different cache entry
    src.write_text("xy")
    load_or_build(source, SplitConfig(), tmp_path / "cache")
    assert len(calls) == 3


def test_write_is_atomic_on_failure(tmp_path, loaded_table, monkeypatch):
    parts = build_artifact(loaded_table, SplitConfig())
    target = tmp_path / "cache" / "entry"
    import flip_ctr.data.preprocess as pp

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pp.json, "dump", boom)
    with pytest.raises(OSError):
        write_artifact(parts, target)
    assert not target.exists()
    assert list((tmp_path / "cache").iterdir()) == []


def test_validate_rejects_bad_labels(loaded_table):
    loaded_table.table = loaded_table.table.with_columns(pl.lit(2, dtype=pl.Int8).alias("label"))
    with pytest.raises(DataError, match="label"):
        build_artifact(loaded_table, SplitConfig())


def test_large_tables_report_progress_per_field(loaded_table, caplog, monkeypatch):
    import logging

    import flip_ctr.data.preprocess as preprocess

    caplog.set_level(logging.INFO, logger="flip_ctr.data.preprocess")
    build_artifact(loaded_table, SplitConfig())
    assert not [r for r in caplog.records if "indexed field" in r.getMessage()]  # a toy table: quiet
    monkeypatch.setattr(preprocess, "LONG_WORK_VALUES", loaded_table.table.height)
    build_artifact(loaded_table, SplitConfig())
    fields = loaded_table.schema.field_columns
    lines = [r.getMessage() for r in caplog.records if "indexed field" in r.getMessage()]
    assert [m.split(":")[0] for m in lines] == [f"indexed field {i}/{len(fields)} {c!r}" for i, c in enumerate(fields, 1)]


def test_frequencies_read_back_writable(tmp_path, loaded_table):
    """torch.as_tensor of a read-only memmap warns (once per process, in every pretraining run)."""
    import warnings

    import torch

    write_artifact(build_artifact(loaded_table, SplitConfig()), tmp_path / "a")
    artifact = read_artifact(tmp_path / "a")
    assert artifact.feature_frequencies.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.as_tensor(artifact.feature_frequencies, dtype=torch.float)
