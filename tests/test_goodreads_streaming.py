"""``data=goodreads data.engine=streaming`` (issue 13, item 3): the real GoodReads files through the
scale path. :func:`goodreads_table` converts the JSON lines chunk by chunk into Parquet; the
artifact must equal the in-memory loader's, and errors must name the same lines."""

from __future__ import annotations

import numpy as np
import pytest

import fixtures_data as fx
from flip_ctr.data.datamodule import CTRDataModule
from flip_ctr.data.schema import DataError
from flip_ctr.data.sources import goodreads
from flip_ctr.data.sources.goodreads import goodreads_table, load_goodreads

ROWS = 240
SMALL_CHUNKS = 2_000  # bytes: the 240 fixture lines (~250 bytes each) become ~30 chunks


def make_dm(data, cache, engine):
    dm = CTRDataModule(dataset="goodreads", data_dir=str(data), cache_dir=str(cache), engine=engine, batch_size=32)
    dm.prepare_data()
    dm.setup()
    return dm


@pytest.fixture
def data(tmp_path):
    return fx.write_goodreads(tmp_path / "goodreads", interactions=fx.goodreads_training_interactions(ROWS))


def test_streamed_goodreads_artifact_equals_the_in_memory_one(tmp_path, data):
    table, schema = goodreads_table(data, cache_dir=tmp_path / "cache", chunk_bytes=SMALL_CHUNKS)
    assert len(list(table.glob("part-*.parquet"))) > 10  # really converted in many chunks
    memory, streaming = make_dm(data, tmp_path / "cache", "memory"), make_dm(data, tmp_path / "cache", "streaming")
    assert memory.artifact.path != streaming.artifact.path
    for name in ("value_ids", "labels", "row_in_source", "feature_frequencies"):
        assert np.array_equal(getattr(memory.artifact, name), getattr(streaming.artifact, name)), name
    assert memory.space.values == streaming.space.values
    assert memory.space.schema.field_names == streaming.space.schema.field_names
    assert (memory.artifact.num_fit, memory.artifact.num_test) == (streaming.artifact.num_fit, streaming.artifact.num_test)
    for a, b in zip(memory.val_dataloader(), streaming.val_dataloader()):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_the_conversion_runs_once_per_file_content(tmp_path, data, monkeypatch):
    first = goodreads_table(data, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(goodreads, "_ndjson_chunks", lambda *a, **k: pytest.fail("converted again"))
    assert goodreads_table(data, cache_dir=tmp_path / "cache") == first
    monkeypatch.undo()
    fx.write_goodreads(data, interactions=fx.goodreads_training_interactions(ROWS - 2))  # new content, new table
    second = goodreads_table(data, cache_dir=tmp_path / "cache")
    assert second != first


def _bad_date_line(rows: list[dict], line: int) -> list[dict]:
    rows = [dict(r) for r in rows]
    rows[line - 1]["date_added"] = "yesterday"
    return rows


@pytest.mark.parametrize("line", [3, 200])  # in the first chunk, and many chunks in
def test_errors_name_the_same_line_as_the_in_memory_loader(tmp_path, line):
    data = fx.write_goodreads(tmp_path / "g", interactions=_bad_date_line(fx.goodreads_training_interactions(ROWS), line))
    with pytest.raises(DataError) as memory_error:
        load_goodreads(data)
    with pytest.raises(DataError) as streaming_error:
        goodreads_table(data, cache_dir=tmp_path / "cache", chunk_bytes=SMALL_CHUNKS)
    assert f"line {line}: key 'date_added'" in str(memory_error.value)
    assert str(streaming_error.value) == str(memory_error.value)
    assert not list((tmp_path / "cache" / "goodreads_tables").glob("*/schema.yaml"))  # nothing half-written published


def test_missing_book_and_truncated_file_are_refused_by_line(tmp_path):
    rows = fx.goodreads_training_interactions(ROWS)
    rows[150] = {**rows[150], "book_id": "424242"}
    data = fx.write_goodreads(tmp_path / "g", interactions=rows)
    with pytest.raises(DataError, match=r"line 151: book_id '424242' does not appear in"):
        goodreads_table(data, cache_dir=tmp_path / "cache", chunk_bytes=SMALL_CHUNKS)
    truncated = fx.write_goodreads(tmp_path / "t", interactions=fx.goodreads_training_interactions(ROWS))
    path = truncated / "goodreads_interactions_poetry.json.gz"
    import gzip

    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-40]))
    with pytest.raises(DataError, match=rf"line {ROWS}: the file does not end with a newline"):
        goodreads_table(truncated, cache_dir=tmp_path / "cache2", chunk_bytes=SMALL_CHUNKS)
