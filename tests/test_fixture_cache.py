"""tests/fixture_cache.py, the opt-in cache of expensive fixtures used by mutation testing:
the key follows the code (but not the excluded module under test), an entry is published only
when complete, and a half-built or damaged entry is rebuilt."""

from __future__ import annotations

import hashlib
import json

import pytest

import fixture_cache


def _tree(tmp_path):
    package, conf = tmp_path / "pkg", tmp_path / "conf"
    (package / "data").mkdir(parents=True)
    conf.mkdir()
    (package / "serving.py").write_text("x = 1\n")
    (package / "data" / "preprocess.py").write_text("y = 1\n")
    (conf / "train.yaml").write_text("a: 1\n")
    return package, conf


def test_the_key_follows_the_code_but_not_the_excluded_module(tmp_path):
    package, conf = _tree(tmp_path)

    def key():
        return fixture_cache.code_digest(exclude=["serving.py"], package=package, conf=conf)

    first = key()
    assert key() == first
    (package / "serving.py").write_text("x = 2\n")  # the module under test: same key
    assert key() == first
    (package / "data" / "preprocess.py").write_text("y = 2\n")  # code training runs: new key
    second = key()
    assert second != first
    (conf / "train.yaml").write_text("a: 2\n")  # a config: new key
    third = key()
    assert third not in (first, second)
    (package / "serving.py.meta").write_text("{}")  # not Python (mutmut's bookkeeping): same key
    assert key() == third
    (package / "new.py").write_text("")  # a new module: new key
    assert key() not in (first, second, third)
    # the real package and conf: serving.py left out, the rest in
    assert fixture_cache.code_digest(exclude=["serving.py"]) != fixture_cache.code_digest()


def test_an_entry_is_built_once_and_rebuilt_when_damaged_or_half_built(tmp_path):
    builds = []

    def build(entry):
        builds.append(entry)
        (entry / "run").mkdir()
        (entry / "run" / "best.ckpt").write_bytes(b"weights")

    entry, built = fixture_cache.cached_entry("run", "ab" * 32, build, root=tmp_path)
    assert built and len(builds) == 1 and (entry / "run" / "best.ckpt").read_bytes() == b"weights"
    assert json.loads((entry / "manifest.json").read_text())["files"] == {"run/best.ckpt": hashlib.sha256(b"weights").hexdigest()}
    assert fixture_cache.cached_entry("run", "ab" * 32, build, root=tmp_path) == (entry, False)
    assert len(builds) == 1
    # a damaged file: rebuilt
    (entry / "run" / "best.ckpt").write_bytes(b"weightz")
    assert fixture_cache.cached_entry("run", "ab" * 32, build, root=tmp_path) == (entry, True)
    assert (entry / "run" / "best.ckpt").read_bytes() == b"weights" and len(builds) == 2
    # a missing file: rebuilt
    (entry / "run" / "best.ckpt").unlink()
    assert fixture_cache.cached_entry("run", "ab" * 32, build, root=tmp_path)[1] and len(builds) == 3
    # half-built (no manifest, a leftover file): removed and rebuilt
    (entry / "manifest.json").unlink()
    (entry / "leftover").write_text("")
    assert fixture_cache.cached_entry("run", "ab" * 32, build, root=tmp_path)[1] and len(builds) == 4
    assert not (entry / "leftover").exists()
    # another key: another entry
    other, built = fixture_cache.cached_entry("run", "cd" * 32, build, root=tmp_path)
    assert built and other != entry


def test_a_failed_build_publishes_nothing(tmp_path):
    def build(entry):
        (entry / "half").write_text("")
        raise RuntimeError("training failed")

    with pytest.raises(RuntimeError, match="^training failed$"):
        fixture_cache.cached_entry("run", "ef" * 32, build, root=tmp_path)
    entry = tmp_path.resolve() / f"run-{'ef' * 12}"
    assert entry.is_dir() and not (entry / "manifest.json").exists()
    calls = []
    entry2, built = fixture_cache.cached_entry("run", "ef" * 32, lambda e: calls.append(e), root=tmp_path)
    assert built and calls == [entry] and not (entry / "half").exists()


def test_off_unless_the_variable_is_set(monkeypatch, tmp_path):
    monkeypatch.delenv(fixture_cache.ENV, raising=False)
    assert fixture_cache.cache_root() is None
    monkeypatch.setenv(fixture_cache.ENV, str(tmp_path))
    assert fixture_cache.cache_root() == tmp_path
