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


# -- written against mutation survivors (scripts/mutation.py preprocess; scripts/mutation_notes.md) --
import logging
import re
from pathlib import Path

from flip_ctr.data import cache as cache_module
from flip_ctr.data.preprocess import (
    CACHE_FORMAT_VERSION, Artifact, FeatureSpace, _schema_from_json, _schema_to_json, value_dictionary,
)
from flip_ctr.data.schema import DatasetSchema, Field, LoadedTable


@pytest.mark.parametrize("test, val", [(0.0, 0.1), (-0.1, 0.1), (1.0, 0.1), (1.5, 0.1), (0.1, 1.0), (0.1, 1.5), (0.1, -0.1)])
def test_split_fractions_out_of_range_are_refused(test, val):
    with pytest.raises(ValueError, match=rf"^bad split fractions: test={re.escape(str(test))}, val={re.escape(str(val))}$"):
        SplitConfig(test_fraction=test, val_fraction=val).sizes(100)


def test_split_sizes_by_hand():
    # floor(0.75 * 10) = 7 training rows, floor(7 * 0.3) = 2 of them validation
    assert SplitConfig(test_fraction=0.25, val_fraction=0.3).sizes(10) == (5, 2, 3)
    assert SplitConfig(test_fraction=0.25, val_fraction=0.0).sizes(10) == (7, 0, 3)  # no validation part: allowed


def _table(values: dict[str, list[str]], times=None, labels=None, rows=None, time_column="timestamp", name="hand"):
    n = len(next(iter(values.values())))
    data = {**values, "label": pl.Series(labels if labels is not None else [i % 2 for i in range(n)], dtype=pl.Int8),
            "row_in_source": pl.Series(rows if rows is not None else list(range(n)), dtype=pl.Int64)}
    if time_column:
        data["timestamp"] = pl.Series(times if times is not None else list(range(n)), dtype=pl.Int64)
    schema = DatasetSchema(name, tuple(Field(c, c.replace("_", " ")) for c in values), time_column=time_column)
    return LoadedTable(pl.DataFrame(data), schema)


def test_dictionary_by_hand():
    """Seen values most frequent first, ties by text; a value seen once is seen; test-only
    values after, by text; local ids from 1 (Int32)."""
    counts = pl.DataFrame({"value": ["b", "a", "c", "d", "z", "y"], "train_count": [3, 3, 5, 1, 0, 0]})
    dictionary, seen = value_dictionary(counts)
    assert dictionary["value"].to_list() == ["c", "a", "b", "d", "y", "z"]
    assert dictionary["local"].to_list() == [1, 2, 3, 4, 5, 6] and dictionary["local"].dtype == pl.Int32
    assert seen["value"].to_list() == ["c", "a", "b", "d"]


def test_build_artifact_by_hand():
    """A 10-row table written out: the split (7 train = 5 fit + 2 val, 3 test), the dictionaries,
    the local ids, the frequencies over the training part and the dtypes."""
    loaded = _table({"user": list("aabbbcaadd"), "item": list("xyxyxyxyzw")}, times=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
                    labels=[1, 0, 0, 1, 1, 0, 1, 0, 1, 1])
    parts = build_artifact(loaded, SplitConfig(test_fraction=0.25, val_fraction=0.3))
    # chronological order: reversed rows; training part = rows 9..3 = users d d a a c b b, items w z y x y x y
    np.testing.assert_array_equal(parts["row_in_source"], np.arange(9, -1, -1))
    assert (parts["num_fit"], parts["num_val"], parts["num_test"]) == (5, 2, 3)
    space = parts["space"]
    # user: a 2, b 2, d 2, c 1 seen (ties by text), none test-only; item: y 3, x 2, w 1, z 1
    assert space.values == [["unknown", "a", "b", "d", "c"], ["unknown", "y", "x", "w", "z"]]
    assert space.num_seen == [4, 4]
    assert space.field_offsets == [0, 5, 10] and space.num_features == 10
    users = [{"a": 1, "b": 2, "d": 3, "c": 4}[u] for u in "ddaacbbbaa"]
    items = [{"y": 1, "x": 2, "w": 3, "z": 4}[i] for i in "wzyxyxyxyx"]
    np.testing.assert_array_equal(parts["value_ids"], np.array([users, items]).T)
    assert parts["value_ids"].dtype == np.int32
    np.testing.assert_array_equal(parts["labels"], [1, 1, 0, 1, 0, 1, 1, 0, 0, 1])
    assert parts["labels"].dtype == np.int8 and parts["row_in_source"].dtype == np.int64
    np.testing.assert_array_equal(parts["feature_frequencies"], [0, 2, 2, 2, 1, 0, 3, 2, 1, 1])
    assert parts["feature_frequencies"].dtype == np.int64


def test_test_only_values_come_after_the_seen_ones_by_text():
    loaded = _table({"user": ["a", "a", "a", "a", "a", "a", "a", "a", "q", "p"]})
    parts = build_artifact(loaded, SplitConfig(test_fraction=0.2, val_fraction=0.0))
    assert parts["space"].values == [["unknown", "a", "p", "q"]] and parts["space"].num_seen == [1]
    np.testing.assert_array_equal(parts["value_ids"][:, 0], [1] * 8 + [3, 2])
    np.testing.assert_array_equal(parts["feature_frequencies"], [0, 8])


def test_a_table_without_time_column_keeps_file_order():
    loaded = _table({"user": list("abcdefghij")}, rows=[3, 1, 4, 0, 5, 9, 2, 6, 8, 7], time_column=None)
    parts = build_artifact(loaded, SplitConfig())
    np.testing.assert_array_equal(parts["row_in_source"], np.arange(10))
    assert [parts["space"].values[0][k] for k in parts["value_ids"][:, 0]] == list("dbgacehjif")


def test_the_smallest_splittable_table_and_one_too_small():
    parts = build_artifact(_table({"user": list("abcdefghij")}), SplitConfig(test_fraction=0.1, val_fraction=0.0))
    assert (parts["num_fit"], parts["num_val"], parts["num_test"]) == (9, 0, 1)  # one test row is enough
    with pytest.raises(ValueError, match=r"^dataset 'hand' has 1 rows: too few for a train/test split$"):
        build_artifact(_table({"user": ["a"]}), SplitConfig())


def test_lookup_by_hand_and_its_message():
    schema = DatasetSchema("hand", (Field("user", "user"), Field("item", "item")))
    space = FeatureSpace(schema, [["unknown", "a", "b", "t"], ["unknown", "x"]], [2, 1])  # "t": test-only
    ids = space.lookup(pl.DataFrame({"user": ["b", "t", None, "a", "nobody"], "item": ["x", "x", "x", "y", None]}))
    np.testing.assert_array_equal(ids, [[2, 4], [0, 4], [0, 4], [1, 3], [0, 3]])
    assert ids.dtype == np.int64
    with pytest.raises(KeyError) as err:
        space.lookup(pl.DataFrame({"user": ["a"]}))
    assert err.value.args == ("input lacks field column 'item'; expected columns ['user', 'item']",)


def test_artifact_feature_ids_by_hand():
    """Local ids above num_seen (test-only values) become the field's OOV id; the last seen value
    (local == num_seen) keeps its id."""
    schema = DatasetSchema("hand", (Field("user", "user"), Field("item", "item")))
    space = FeatureSpace(schema, [["unknown", "a", "b", "t"], ["unknown", "x", "u"]], [2, 1])
    value_ids = np.array([[1, 1], [2, 2], [3, 0], [0, 1]], dtype=np.int32)
    artifact = Artifact(Path("."), space, value_ids, np.zeros(4, np.int8), np.arange(4), np.zeros(5, np.int64), 2, 1, 1)
    np.testing.assert_array_equal(artifact.feature_ids(slice(None)), [[1, 4], [2, 3], [0, 3], [0, 4]])
    np.testing.assert_array_equal(artifact.feature_ids(np.array([1])), [[2, 3]])
    assert artifact.feature_ids(slice(None)).dtype == np.int64


@pytest.mark.parametrize("time_column", ["ts", None])
def test_schema_round_trip_keeps_every_attribute(time_column):
    schema = DatasetSchema("other", (Field("u", "user", "user"), Field("i", "item", "item")), label_column="clicked",
                           time_column=time_column)
    assert _schema_from_json(json.loads(json.dumps(_schema_to_json(schema)))) == schema


def test_artifact_round_trip_by_hand(tmp_path):
    """Everything written is read back: the arrays (the large ones memory-mapped), the values,
    the schema (no time column here), the split sizes and the source in the manifest."""
    loaded = _table({"user": list("aabbbcaadd"), "item": list("xyxyxyxyzw")}, time_column=None, name="handmade")
    parts = build_artifact(loaded, SplitConfig(test_fraction=0.25, val_fraction=0.3))
    write_artifact(parts, tmp_path / "a", source={"files": ["f.csv"]})
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["source"] == {"files": ["f.csv"]} and manifest["format_version"] == CACHE_FORMAT_VERSION
    assert (manifest["num_fit"], manifest["num_val"], manifest["num_test"], manifest["num_seen"]) == (5, 2, 3, [3, 2])
    artifact = read_artifact(tmp_path / "a")
    assert artifact.space == parts["space"] and artifact.space.schema == loaded.schema
    assert (artifact.num_fit, artifact.num_val, artifact.num_test) == (5, 2, 3)
    for name in ("value_ids", "labels", "row_in_source", "feature_frequencies"):
        np.testing.assert_array_equal(getattr(artifact, name), parts[name])
        assert getattr(artifact, name).dtype == parts[name].dtype
    for name in ("value_ids", "labels", "row_in_source"):
        assert isinstance(getattr(artifact, name), np.memmap), name  # not read into memory
    assert not isinstance(artifact.feature_frequencies, np.memmap)
    assert artifact.split_ranges == {"fit": (0, 5), "val": (5, 7), "test": (7, 10), "train": (0, 7)}


def test_write_keeps_a_copy_another_process_published(tmp_path, loaded_table, monkeypatch):
    """Parallel sweep jobs: when the rename loses to another job's finished entry (one with a
    manifest.json), that entry is kept and no error is raised."""
    import flip_ctr.atomic as atomic

    parts = build_artifact(loaded_table, SplitConfig())
    target = tmp_path / "entry"
    real_replace = atomic.os.replace

    def lose_the_race(src, dst):
        Path(dst).mkdir()
        (Path(dst) / "manifest.json").write_text("theirs")
        (Path(dst) / "x").write_text("")  # a non-empty directory: the rename fails
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", lose_the_race)
    write_artifact(parts, target)
    assert (target / "manifest.json").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]  # our temp copy removed


def test_stale_cache_messages(tmp_path, loaded_table):
    write_artifact(build_artifact(loaded_table, SplitConfig()), tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    (tmp_path / "a" / "values.json").write_text("[]")
    with pytest.raises(StaleCacheError, match=rf"^{re.escape(str(tmp_path / 'a' / 'values.json'))}: content does not match manifest digest$"):
        read_artifact(tmp_path / "a")
    (tmp_path / "a" / "manifest.json").write_text(json.dumps({**manifest, "format_version": 0}))
    with pytest.raises(StaleCacheError, match=rf"^{re.escape(str(tmp_path / 'a'))}: cache format 0 != {CACHE_FORMAT_VERSION}$"):
        read_artifact(tmp_path / "a")
    (tmp_path / "a" / "manifest.json").unlink()
    with pytest.raises(StaleCacheError, match=rf"^{re.escape(str(tmp_path / 'a'))}: unreadable cache \(\[Errno 2\] No such file"):
        read_artifact(tmp_path / "a")


class NamedSource(CountingSource):
    def __init__(self, files, dataset):
        super().__init__(files)
        self.dataset = dataset


def test_the_cache_entry_depends_on_dataset_and_split(tmp_path):
    src = tmp_path / "src.csv"
    src.write_text("x")
    toy, other = NamedSource([src], "toy"), NamedSource([src], "other")
    a = load_or_build(toy, SplitConfig(), tmp_path / "cache")
    b = load_or_build(other, SplitConfig(), tmp_path / "cache")  # another dataset name: its own entry
    assert len(other.calls) == 1 and a.path != b.path
    c = load_or_build(toy, SplitConfig(test_fraction=0.2), tmp_path / "cache")  # another split: its own entry
    assert len(toy.calls) == 2 and c.path != a.path and c.num_test == 40 and a.num_test == 20
    assert len(load_or_build(toy, SplitConfig(), tmp_path / "cache").labels) == 200 and len(toy.calls) == 2


def test_load_or_build_logs_and_hashes_each_file_once(tmp_path, caplog, monkeypatch):
    """The log lines of a build, of a cache hit and of a rebuild, with their numbers; a fresh
    build hashes each file once (into the manifest, not again to verify it), a hit once (to verify)."""
    src, src2 = tmp_path / "src.csv", tmp_path / "more.csv"
    src.write_text("x")
    src2.write_text("y")
    source = CountingSource([src, src2])
    hashed = []
    real_hash = cache_module.hash_file
    monkeypatch.setattr(cache_module, "hash_file", lambda p: hashed.append(Path(p).name) or real_hash(p))
    caplog.set_level(logging.INFO, logger="flip_ctr.data.preprocess")
    artifact = load_or_build(source, SplitConfig(), tmp_path / "cache")
    entry = artifact.path
    files = ["value_ids.npy", "labels.npy", "row_in_source.npy", "feature_frequencies.npy", "values.json"]
    assert sorted(h for h in hashed if h not in ("src.csv", "more.csv")) == sorted(files)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == f"preprocessing toy from {src}, {src2} (cached afterwards in {entry})"
    assert re.fullmatch(r"read 200 rows of toy \((\d+\.\d)s\); building the feature index", messages[1])
    found = re.fullmatch(rf"preprocessed toy: 162 fit / 18 val / 20 test rows, {artifact.space.num_features} features, "
                         rf"in (\d+\.\d)s → {re.escape(str(entry))}", messages[2])
    assert found and float(found.group(1)) < 600, messages[2]  # an elapsed time, not a clock reading
    assert float(re.search(r"\((\d+\.\d)s\)", messages[1]).group(1)) < 600
    assert len(messages) == 3
    assert json.loads((entry / "manifest.json").read_text())["source"]["files"][0]["path"] == str(src.resolve())

    caplog.clear()
    hashed.clear()
    load_or_build(source, SplitConfig(), tmp_path / "cache")
    assert [r.getMessage() for r in caplog.records] == [f"using cached preprocessed data {entry}"]
    assert sorted(h for h in hashed if h not in ("src.csv", "more.csv")) == sorted(files)

    caplog.clear()
    (entry / "values.json").write_text("[]")
    load_or_build(source, SplitConfig(), tmp_path / "cache")
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warning] == [
        f"rebuilding cache: {entry / 'values.json'}: content does not match manifest digest"]


def test_per_field_progress_reports_elapsed_time(loaded_table, caplog, monkeypatch):
    import flip_ctr.data.preprocess as preprocess

    caplog.set_level(logging.INFO, logger="flip_ctr.data.preprocess")
    monkeypatch.setattr(preprocess, "LONG_WORK_VALUES", 1)
    build_artifact(loaded_table, SplitConfig())
    lines = [r.getMessage() for r in caplog.records if "indexed field" in r.getMessage()]
    assert lines[0].startswith("indexed field 1/4 'user_id': 30 values (") and lines[0].endswith("s)")
    assert all(float(re.search(r"\((\d+\.\d)s\)$", line).group(1)) < 600 for line in lines), lines
