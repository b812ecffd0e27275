"""Atomic writes: a reader, or a rerun after a kill, sees the old file or directory or the new one,
never half of one.

Both helpers write to a temporary sibling (same filesystem, so the final rename is atomic) and
remove it when anything fails. Caches, checkpoints, metrics, predictions and exported models all
go through here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary file path beside ``path``; write it, and on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextmanager
def atomic_directory(path: str | Path, published_marker: str | None = None) -> Iterator[Path]:
    """Yields an empty temporary directory beside ``path``; fill it, and on success it replaces
    ``path`` (an existing one is removed first).

    ``published_marker``: for directories that concurrent processes may build with identical
    content (a preprocessing cache shared by parallel sweep jobs). When the rename loses to another
    process's copy that holds this file, that copy is kept instead of failing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path, ignore_errors=published_marker is not None)
        try:
            os.replace(tmp, path)
        except OSError:
            if published_marker is None or not (path / published_marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
