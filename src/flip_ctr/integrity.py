"""SHA-256 digests of the artifacts other code loads: exported models (``serving.json``) and the
aligned checkpoint directory finetuning starts from (``checksums.json``).

A digest is recorded when a file is written and checked before the file is parsed, so a flipped
bit, a truncated copy or an edit is refused with one line (file, expected and found digest)
instead of loading silently or failing deep inside torch / onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from flip_ctr.atomic import atomic_write_text

log = logging.getLogger(__name__)

CHECKSUMS_FILE = "checksums.json"
_CHUNK = 1 << 20


class IntegrityError(ValueError):
    """A file does not hold what was recorded when it was written."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_digest(path: Path, found: str, expected: str | None, recorded_in: Path) -> None:
    if expected is None:
        raise IntegrityError(f"{path}: no SHA-256 recorded for it in {recorded_in}: refusing to load an unverified file")
    if found != expected:
        raise IntegrityError(
            f"{path}: SHA-256 mismatch: expected {expected} (recorded in {recorded_in}), found {found}; "
            "the file changed after it was written (corrupted, truncated or edited)"
        )


def read_verified(path: Path, expected: str | None, recorded_in: Path) -> bytes:
    """The file's bytes, once they match ``expected``: read once, so what is checked is what is parsed."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise IntegrityError(f"{path}: cannot read it ({err.strerror or err})") from None
    check_digest(Path(path), sha256_bytes(data), expected, recorded_in)
    return data


# -- a directory's checksums.json: {"sha256": {relative path: digest}} ------------------------------
def _manifest(directory: Path) -> dict[str, str] | None:
    path = directory / CHECKSUMS_FILE
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text())["sha256"])
    except (ValueError, KeyError, TypeError) as err:
        raise IntegrityError(f"{path}: unreadable checksums ({err}); the directory cannot be verified") from None


def _files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def record_tree(directory: str | Path, path: Path) -> None:
    """Records the SHA-256 of a file just written inside ``directory``, or of every file below a
    subdirectory just written (``plm/``; entries of files it no longer holds are dropped), in
    ``directory``/checksums.json."""
    directory, path = Path(directory), Path(path)
    prefix = path.relative_to(directory).as_posix()
    digests = {k: v for k, v in (_manifest(directory) or {}).items() if k != prefix and not k.startswith(prefix + "/")}
    for f in _files_under(path):
        digests[f.relative_to(directory).as_posix()] = sha256_file(f)
    atomic_write_text(directory / CHECKSUMS_FILE, json.dumps({"sha256": dict(sorted(digests.items()))}, indent=2))


def verify_tree(directory: str | Path, path: Path) -> None:
    """Checks a file, or every file below a subdirectory, against ``directory``/checksums.json:
    a mismatch, an unlisted file or a listed file that is gone is refused. A directory written
    before digests were recorded (no checksums.json) loads with a warning."""
    directory, path = Path(directory), Path(path)
    digests = _manifest(directory)
    manifest = directory / CHECKSUMS_FILE
    if digests is None:
        log.warning("%s: no %s (written before flip-ctr recorded digests): loading it unverified", directory, CHECKSUMS_FILE)
        return
    files = _files_under(path)
    listed = {f.relative_to(directory).as_posix() for f in files}
    prefix = path.relative_to(directory).as_posix() + "/"
    gone = sorted(k for k in digests if k.startswith(prefix) and k not in listed)
    if gone:
        raise IntegrityError(f"{directory / gone[0]}: missing, though {manifest} records it")
    for f in files:
        check_digest(f, sha256_file(f), digests.get(f.relative_to(directory).as_posix()), manifest)
