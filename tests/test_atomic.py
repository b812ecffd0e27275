"""flip_ctr.atomic: the one place caches, checkpoints, metrics and exported models are written."""

import os

import pytest

from flip_ctr import atomic


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir())


def test_directory_replaces_the_old_one_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic.atomic_directory(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert _siblings(target) == ["out"]


def test_failed_directory_write_keeps_the_old_one(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="half way"):
        with atomic.atomic_directory(target) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("half way")
    assert (target / "old.txt").read_text() == "old" and not (target / "new.txt").exists()
    assert _siblings(target) == ["out"]


@pytest.mark.parametrize("marker", [None, "manifest.json"])
def test_losing_the_rename_race(tmp_path, monkeypatch, marker):
    # Another process publishes its complete copy between our removal of the old directory and
    # our rename: with a published_marker (a shared cache) theirs is kept, otherwise it is an error.
    target = tmp_path / "cache"
    real_replace = os.replace

    def replace_after_a_rival(src, dst):
        os.makedirs(dst, exist_ok=True)
        (target / "manifest.json").write_text("theirs")
        real_replace(src, dst)  # a non-empty directory: OSError

    monkeypatch.setattr(atomic.os, "replace", replace_after_a_rival)
    if marker is None:
        with pytest.raises(OSError):
            with atomic.atomic_directory(target) as tmp:
                (tmp / "manifest.json").write_text("ours")
    else:
        with atomic.atomic_directory(target, published_marker=marker) as tmp:
            (tmp / "manifest.json").write_text("ours")
    assert (target / "manifest.json").read_text() == "theirs"
    assert _siblings(target) == ["cache"]  # our temp copy is gone either way


def test_file_write_is_all_or_nothing(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    atomic.atomic_write_text(path, "first")
    with pytest.raises(ValueError):
        with atomic.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise ValueError("killed")
    assert path.read_text() == "first" and _siblings(path) == ["metrics.json"]
    atomic.atomic_write_text(path, "second")
    assert path.read_text() == "second" and _siblings(path) == ["metrics.json"]
