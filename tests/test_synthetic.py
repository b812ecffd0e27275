"""Synthetic GoodReads-shaped generator and the streaming (large-table) preprocessing path.

The streaming path (:mod:`flip_ctr.data.preprocess_large`) must build exactly the artifact of
the in-memory path (``load_table`` + ``build_artifact`` + ``write_artifact``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from flip_ctr.data.preprocess import SplitConfig, build_artifact, read_artifact, write_artifact
from flip_ctr.data.preprocess_large import load_or_build_large, preprocess_large
from flip_ctr.data.schema import DataError
from flip_ctr.data.sources.table import load_table, read_table_schema
from flip_ctr.data.synthetic import FIELDS, SyntheticSpec, expected_distinct, generate, power_law_cdf, sample_cdf

SMALL = dict(num_users=3000, num_books=5000, num_authors=2000, num_publishers=800, num_shelves=300)
ARRAYS = ("value_ids", "labels", "row_in_source", "feature_frequencies")


def small_spec(rows: int = 20_000, **kw) -> SyntheticSpec:
    return SyntheticSpec(num_rows=rows, block_rows=7_000, **{**SMALL, **kw})


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("synthetic")
    generate(d, small_spec(), chunk_rows=6_000)
    return d


def assert_same_artifact(reference: dict, artifact) -> None:
    for name in ARRAYS:
        expected = reference[name]
        got = np.asarray(getattr(artifact, name))
        assert got.dtype == expected.dtype, name
        np.testing.assert_array_equal(got, expected, err_msg=name)
    space = reference["space"]
    assert artifact.space.values == space.values
    assert artifact.space.num_seen == space.num_seen
    assert artifact.space.schema == space.schema
    assert (artifact.num_fit, artifact.num_val, artifact.num_test) == (reference["num_fit"], reference["num_val"], reference["num_test"])


def in_memory(table: Path, schema: Path, split: SplitConfig | None = None) -> dict:
    return build_artifact(load_table(table, schema), split or SplitConfig())


# ------------------------------------------------------------------------------------------
# generator
# ------------------------------------------------------------------------------------------
def test_generator_shape_is_deterministic_and_heavy_tailed(synthetic_dir, tmp_path):
    df = pl.read_parquet(synthetic_dir / "table.parquet")
    assert df.height == 20_000
    assert df.columns == [c for c, _, _ in FIELDS] + ["timestamp", "label"]
    assert df["timestamp"].dtype == pl.Int64 and df["label"].dtype == pl.Int8
    assert 0.3 < df["label"].mean() < 0.8
    # the same rows whatever the chunking
    generate(tmp_path, small_spec(), chunk_rows=20_000)
    assert pl.read_parquet(tmp_path / "table.parquet").equals(df)
    # power-law popularity: the most frequent user/book is far above the median one
    for column in ("user_id", "book_id"):
        counts = df[column].value_counts()["count"].to_numpy()
        assert counts.max() > 20 * np.median(counts)
    # book attributes are functions of the book; some are missing (null or empty)
    assert df.group_by("book_id").agg(pl.col("title").n_unique())["title"].max() == 1
    assert df["publisher"].null_count() > 0 and (df["publisher"] == "").sum() > 0
    spec = read_table_schema(synthetic_dir / "schema.yaml")
    assert [f["column"] for f in spec["fields"]] == [c for c, _, _ in FIELDS] and spec["time_column"] == "timestamp"


def test_power_law_sampling_matches_expected_distinct():
    rng = np.random.default_rng(0)
    cdf = power_law_cdf(10_000, 1.0, 10.0)
    draws = sample_cdf(cdf, 50_000, rng)
    assert draws.min() >= 0 and draws.max() < 10_000
    expected = expected_distinct(10_000, 1.0, 10.0, 50_000)
    assert abs(len(np.unique(draws)) - expected) < 0.03 * expected


# ------------------------------------------------------------------------------------------
# streaming preprocessing == in-memory preprocessing
# ------------------------------------------------------------------------------------------
def test_streaming_path_equals_in_memory_path(synthetic_dir, tmp_path):
    table, schema = synthetic_dir / "table.parquet", synthetic_dir / "schema.yaml"
    reference = in_memory(table, schema)
    summary = preprocess_large(table, schema, tmp_path / "large")
    artifact = read_artifact(tmp_path / "large", verify=True)  # same files and manifest format
    assert_same_artifact(reference, artifact)
    assert summary["num_features"] == reference["space"].num_features
    # values first seen in the test part exist (text side) and map to OOV on the ID side
    assert any(len(v) - 1 > s for v, s in zip(artifact.space.values, artifact.space.num_seen))
    # the in-memory writer gives byte-identical array files
    write_artifact(reference, tmp_path / "mem")
    for name in ARRAYS:
        assert (tmp_path / "mem" / f"{name}.npy").read_bytes() == (tmp_path / "large" / f"{name}.npy").read_bytes()


def test_streaming_path_ties_and_split_fractions(synthetic_dir, tmp_path):
    # coarse timestamps: many ties, which must keep file order (row_in_source) in both paths
    df = pl.read_parquet(synthetic_dir / "table.parquet").with_columns(pl.col("timestamp") // (86_400 * 30) * 1000)
    df.write_parquet(tmp_path / "ties.parquet")
    split = SplitConfig(test_fraction=0.2, val_fraction=0.05)
    reference = in_memory(tmp_path / "ties.parquet", synthetic_dir / "schema.yaml", split)
    preprocess_large(tmp_path / "ties.parquet", synthetic_dir / "schema.yaml", tmp_path / "out", split)
    assert_same_artifact(reference, read_artifact(tmp_path / "out"))


def test_directory_of_parquet_files_counts_rows_across_files(synthetic_dir, tmp_path):
    df = pl.read_parquet(synthetic_dir / "table.parquet")
    parts = tmp_path / "parts"
    parts.mkdir()
    df[:7_000].write_parquet(parts / "part-0.parquet")
    df[7_000:].write_parquet(parts / "part-1.parquet")
    reference = in_memory(synthetic_dir / "table.parquet", synthetic_dir / "schema.yaml")
    preprocess_large(parts, synthetic_dir / "schema.yaml", tmp_path / "out")
    assert_same_artifact(reference, read_artifact(tmp_path / "out"))


def test_threshold_label_drop_equal_datetime_and_non_text_fields(tmp_path):
    rng = np.random.default_rng(1)
    n = 3_000
    start = np.datetime64("2015-01-01T00:00:00", "ms")
    table = pl.DataFrame(
        {
            "user": rng.integers(0, 200, n),  # integer field: cast to text
            "city": rng.choice(["Paris", "Lyon", "", None, "Nice"], n).tolist(),
            "price": np.round(rng.normal(10, 3, n), 1),  # float field
            "stars": rng.integers(1, 6, n),
            "when": pl.Series(start + rng.integers(0, 10**9, n).astype("timedelta64[ms]") // 1000 * 1000),
        }
    )
    table.write_parquet(tmp_path / "t.parquet")
    (tmp_path / "s.yaml").write_text(
        "name: shop\nfields:\n  - {column: user, name: user, side: user}\n  - {column: city, name: city}\n"
        "  - {column: price, name: price, side: item}\nlabel: {column: stars, threshold: 3, drop_equal: true}\n"
        "time_column: when\n"
    )
    reference = in_memory(tmp_path / "t.parquet", tmp_path / "s.yaml")
    summary = preprocess_large(tmp_path / "t.parquet", tmp_path / "s.yaml", tmp_path / "out")
    artifact = read_artifact(tmp_path / "out")
    assert_same_artifact(reference, artifact)
    assert summary["rows"] < summary["rows_in_files"] == n  # rating-3 rows dropped
    assert "unknown" in artifact.space.values[1]


def test_streaming_path_errors_name_the_problem(synthetic_dir, tmp_path):
    df = pl.read_parquet(synthetic_dir / "table.parquet")
    schema = synthetic_dir / "schema.yaml"
    df.with_columns(pl.when(pl.int_range(pl.len()) == 41).then(2).otherwise(pl.col("label")).cast(pl.Int8).alias("label")).write_parquet(
        tmp_path / "bad_label.parquet"
    )
    with pytest.raises(DataError, match=r"data row 42: label column 'label': expected 0/1"):
        preprocess_large(tmp_path / "bad_label.parquet", schema, tmp_path / "o1")
    df.drop("shelf").write_parquet(tmp_path / "no_shelf.parquet")
    with pytest.raises(DataError, match=r"column 'shelf' not found"):
        preprocess_large(tmp_path / "no_shelf.parquet", schema, tmp_path / "o2")
    df.with_columns(pl.lit("2017-01-01T00:00:00").alias("timestamp")).write_parquet(tmp_path / "iso.parquet")
    with pytest.raises(DataError, match=r"ISO-8601"):
        preprocess_large(tmp_path / "iso.parquet", schema, tmp_path / "o3")
    with pytest.raises(DataError, match=r"no Parquet file"):
        preprocess_large(tmp_path / "missing.parquet", schema, tmp_path / "o4")
    assert not any(p.name.startswith((".o", "o")) for p in tmp_path.iterdir() if p.is_dir())  # nothing half-written


def test_load_or_build_large_caches_and_rebuilds_corrupt(synthetic_dir, tmp_path, monkeypatch):
    import flip_ctr.data.preprocess_large as mod

    calls = []
    real = mod.preprocess_large

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, "preprocess_large", counting)
    table, schema = synthetic_dir / "table.parquet", synthetic_dir / "schema.yaml"
    first = load_or_build_large(table, schema, cache_dir=tmp_path)
    second = load_or_build_large(table, schema, cache_dir=tmp_path)
    assert len(calls) == 1
    np.testing.assert_array_equal(np.asarray(first.value_ids), np.asarray(second.value_ids))
    labels = first.path / "labels.npy"
    data = bytearray(labels.read_bytes())
    data[-1] ^= 1
    labels.write_bytes(bytes(data))
    load_or_build_large(table, schema, cache_dir=tmp_path)
    assert len(calls) == 2


def test_datamodule_batches_from_a_streaming_artifact(synthetic_dir, tmp_path):
    import torch

    from flip_ctr.data.datamodule import BatchBuilder

    preprocess_large(synthetic_dir / "table.parquet", synthetic_dir / "schema.yaml", tmp_path / "out")
    artifact = read_artifact(tmp_path / "out")
    rows = torch.arange(artifact.num_fit, artifact.num_fit + 64)
    batch = BatchBuilder(artifact, None)(rows)
    np.testing.assert_array_equal(batch["feature_ids"].numpy(), artifact.feature_ids(rows.numpy()))
