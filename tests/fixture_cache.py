"""An opt-in on-disk cache for expensive test fixtures (a trained run directory), for mutation testing.

Off by default: without ``FLIP_CTR_TEST_FIXTURE_CACHE`` every test session builds its fixtures
afresh in its temp dir, as before. ``scripts/mutation.py`` sets it, so that each mutant's test
session reuses one trained run instead of training again (minutes per mutant otherwise).

An entry is ``<cache>/<name>-<key>/``. The key is a SHA-256 of everything the entry is built
from, given by the caller (the input files, the command) plus the code that builds it: every
Python file of the imported ``flip_ctr`` package except the ``exclude``d modules (the module
under test, which the fixture must not depend on), every file of the Hydra ``conf/``, and the
versions of Python and the libraries. Any change there gives a new key, so a stale entry is never used.

Built under an exclusive lock (``<entry>.lock``) in place (a run directory records its own
absolute paths, so it cannot be built elsewhere and renamed); ``manifest.json`` (the SHA-256 of
every file) is written last, through a temp file renamed into place: an entry without one is
half-built and is removed and built again. A hit is checked file by file against the manifest;
a damaged entry is rebuilt. Users of an entry must not write into it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

ENV = "FLIP_CTR_TEST_FIXTURE_CACHE"
MANIFEST = "manifest.json"
LIBRARIES = ("torch", "lightning", "polars", "numpy", "omegaconf", "hydra", "torchmetrics")


def cache_root() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def code_digest(exclude: Iterable[str] = (), package: Path | None = None, conf: Path | None = None) -> str:
    """SHA-256 of the imported flip_ctr package's .py files (minus ``exclude``: paths relative to the package,
    e.g. "serving.py"), of the conf/ its CLI reads, and of the Python and library versions.
    ``package`` and ``conf`` replace the two folders (tests of this module)."""
    import importlib.metadata as md

    if package is None:
        import flip_ctr

        package = Path(flip_ctr.__file__).resolve().parent
    if conf is None:
        from flip_ctr.cli import config_dir

        conf = Path(config_dir()).resolve()
    skip = set(exclude)
    h = hashlib.sha256()
    for root, label in ((Path(package), "flip_ctr"), (Path(conf), "conf")):
        for path in _files(root):
            rel = path.relative_to(root).as_posix()
            # the package's Python files only: mutmut keeps its bookkeeping (serving.py.meta, which
            # changes with every mutant judged) beside the module it mutates
            if label == "flip_ctr" and (rel in skip or path.suffix != ".py"):
                continue
            h.update(f"{label}/{rel}\0".encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    h.update(f"python {platform.python_version()} {sys.platform}\0".encode())
    for lib in LIBRARIES:
        try:
            version = md.version(lib)
        except md.PackageNotFoundError:
            version = "-"
        h.update(f"{lib} {version}\0".encode())
    return h.hexdigest()


def tree_digest(folder: Path) -> str:
    """SHA-256 of a directory's files (relative names and contents)."""
    h = hashlib.sha256()
    for path in _files(folder):
        h.update(f"{path.relative_to(folder).as_posix()}\0".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _manifest(entry: Path) -> dict[str, str]:
    return {p.relative_to(entry).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in _files(entry) if p.name != MANIFEST}


def _intact(entry: Path) -> bool:
    try:
        recorded = json.loads((entry / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    for rel, digest in recorded.items():
        path = entry / rel
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return False
    return True


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_entry(name: str, key: str, build: Callable[[Path], None], root: Path | None = None) -> tuple[Path, bool]:
    """(entry directory, whether it was built now). ``build(entry)`` fills the empty entry."""
    root = root if root is not None else cache_root()
    assert root is not None, f"{ENV} is not set"
    entry = Path(root).resolve() / f"{name}-{key[:24]}"
    with _locked(entry.with_name(entry.name + ".lock")):
        if _intact(entry):
            return entry, False
        shutil.rmtree(entry, ignore_errors=True)  # half-built or damaged
        entry.mkdir(parents=True)
        build(entry)
        tmp = entry / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps({"key": key, "files": _manifest(entry)}, indent=1))
        os.replace(tmp, entry / MANIFEST)
        return entry, True
