"""The preprocessing cache (flip_ctr.data.cache): keyed by the content of exactly the files each
loader reads, a digest memo that cannot be fooled by a restored mtime, pruning of superseded
entries, and `flip-ctr cache list|clean`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import fixtures_data as fx
from flip_ctr.data import cache
from flip_ctr.data.datamodule import CTRDataModule
from flip_ctr.data.sources import data_source
from test_datamodule import write_ml100k_fixture


def entries(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def artifact_of(data: Path, cache_dir: Path, **kw):
    dm = CTRDataModule(dataset="ml100k", data_dir=str(data), cache_dir=str(cache_dir), **kw)
    dm.prepare_data()
    dm.setup()
    return dm.artifact


def rewrite_keeping_size_and_mtime(path: Path, old: bytes, new: bytes) -> None:
    assert len(old) == len(new)
    before = path.stat()
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_unrelated_files_change_nothing_and_a_same_size_same_mtime_edit_rebuilds(tmp_path, caplog):
    data = write_ml100k_fixture(tmp_path / "ml-100k")
    cache_dir = tmp_path / "ml-100k" / ".cache"  # the cache inside the data folder, as a user may put it
    first = artifact_of(data, cache_dir)
    # run folders, notes, an unused GroupLens file: not read by the loader, not in the key
    (data / "outputs" / "run1").mkdir(parents=True)
    (data / "outputs" / "run1" / "metrics.json").write_text("{}")
    (data / "u.genre").write_text("unknown|0\n")
    with caplog.at_level(logging.INFO, logger="flip_ctr.data.preprocess"):
        second = artifact_of(data, cache_dir)
    assert second.path == first.path and "preprocessing" not in caplog.text
    assert entries(cache_dir) == [first.path.name]
    # a rating edited in place, size and mtime restored (5 → 1 flips a label): a new entry, the old one pruned
    fields = next(ln.split(b"\t") for ln in (data / "u.data").read_bytes().splitlines() if ln.split(b"\t")[2] == b"5")
    edited = [*fields[:2], b"1", fields[3]]
    rewrite_keeping_size_and_mtime(data / "u.data", b"\t".join(fields) + b"\n", b"\t".join(edited) + b"\n")
    third = artifact_of(data, cache_dir)
    assert third.path != first.path and entries(cache_dir) == [third.path.name]
    assert int(third.labels.sum()) == int(first.labels.sum()) - 1


def test_digest_memo_skips_rehashing_only_for_the_exact_stamp(tmp_path, monkeypatch):
    target = tmp_path / "ratings.dat"
    target.write_bytes(b"1::1::5::1\n")
    hashed = []
    real = cache.hash_file
    monkeypatch.setattr(cache, "hash_file", lambda p: hashed.append(Path(p).name) or real(p))
    key = lambda: cache.locate(tmp_path / "c", "toy", {}, [target], {}).path  # noqa: E731
    first = key()
    assert key() == first and hashed == ["ratings.dat"]  # second lookup: stat only
    # same size, mtime restored: the ctime moved, so the file is hashed again and the key changes
    rewrite_keeping_size_and_mtime(target, b"5", b"4")
    assert key() != first and hashed == ["ratings.dat"] * 2


def test_other_splits_are_kept_not_pruned(tmp_path):
    data = write_ml100k_fixture(tmp_path / "ml-100k")
    a = artifact_of(data, tmp_path / "c")
    b = artifact_of(data, tmp_path / "c", test_fraction=0.2)
    assert a.path != b.path and entries(tmp_path / "c") == sorted([a.path.name, b.path.name])


@pytest.mark.parametrize(
    "dataset, write",
    [
        ("ml1m", lambda p: fx.write_ml1m(p / "ml-1m")),
        ("ml100k", lambda p: fx.write_ml100k_atomic(p / "ml-100k")),
        ("bookcrossing", lambda p: fx.write_bookcrossing(p / "bx")),
        ("goodreads", lambda p: fx.write_goodreads(p / "gr")),
    ],
)
def test_keyed_files_are_exactly_the_files_read(tmp_path, dataset, write):
    folder = write(tmp_path)
    (folder / "README").write_text("not data")
    source = data_source(dataset, data_dir=str(folder))
    assert sorted(source.files) == sorted(source.load().source_files)
    assert folder / "README" not in source.files


def test_cache_list_and_clean(tmp_path, capsys):
    data = write_ml100k_fixture(tmp_path / "ml-100k")
    cache_dir = tmp_path / "c"
    kept = artifact_of(data, cache_dir)
    other = write_ml100k_fixture(tmp_path / "copy" / "ml-100k", seed=1)
    gone = artifact_of(other, cache_dir)
    (other / "u.item").unlink()
    (cache_dir / ".ml100k-x.tmp").mkdir()  # a build killed long ago
    os.utime(cache_dir / ".ml100k-x.tmp", (0, 0))
    # tables that live in the cache dir but are not artifacts: neither listed nor removed
    for table in ("synthetic_goodreads/rows100_seed0", "goodreads_tables/0123456789abcdef"):
        (cache_dir / table).mkdir(parents=True)
    states = {r["name"]: r["state"] for r in cache.list_entries(cache_dir)}
    assert states[kept.path.name] == "current" and states[gone.path.name].startswith("source missing")
    cache.main(["list", "--cache-dir", str(cache_dir)])
    out = capsys.readouterr().out
    assert kept.path.name in out and "ml100k" in out and "source missing" in out
    cache.main(["clean", "--cache-dir", str(cache_dir)])
    assert "removed 2 entries" in capsys.readouterr().out
    tables = ["goodreads_tables", "synthetic_goodreads"]
    assert entries(cache_dir) == sorted([kept.path.name, *tables]) and not (cache_dir / ".ml100k-x.tmp").exists()
    assert cache.clean(cache_dir, everything=True) == [kept.path]
    assert entries(cache_dir) == tables
    assert (cache_dir / "synthetic_goodreads" / "rows100_seed0").is_dir() and (cache_dir / "goodreads_tables").is_dir()


def test_loader_options_and_the_format_version_are_in_the_key(tmp_path, monkeypatch):
    target = tmp_path / "ratings.dat"
    target.write_bytes(b"1::1::5::1\n")
    key = lambda options: cache.locate(tmp_path / "c", "toy", options, [target], {}).path  # noqa: E731
    assert key({"threshold": 4}) == key({"threshold": 4})
    assert key({"threshold": 4}) != key({"threshold": 3}) != key({})  # a loader option changes what is loaded
    assert key({"a": 1, "b": 2}) == key({"b": 2, "a": 1})  # not the order they were given in
    before = key({})
    monkeypatch.setattr(cache, "CACHE_FORMAT_VERSION", cache.CACHE_FORMAT_VERSION + 1)
    assert key({}) != before  # a new cache format never reads an old entry


def test_an_entry_of_an_older_format_is_rebuilt(tmp_path, caplog):
    import json

    data = write_ml100k_fixture(tmp_path / "ml-100k")
    first = artifact_of(data, tmp_path / "c")
    manifest = first.path / "manifest.json"
    stale = json.loads(manifest.read_text())
    stale["format_version"] = cache.CACHE_FORMAT_VERSION - 1
    manifest.write_text(json.dumps(stale))
    with caplog.at_level(logging.WARNING, logger="flip_ctr.data.preprocess"):
        again = artifact_of(data, tmp_path / "c")
    assert "cache format" in caplog.text and "rebuilding" in caplog.text
    assert json.loads((again.path / "manifest.json").read_text())["format_version"] == cache.CACHE_FORMAT_VERSION
    assert (again.value_ids == first.value_ids).all()
