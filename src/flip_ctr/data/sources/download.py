"""Where the data lives, and downloading the GroupLens MovieLens archives.

``resolve_data_dir(cfg_value)`` finds the data root, in this order:

1. the explicit config value (``data.data_dir``), when not empty;
2. the environment variable ``FLIP_CTR_DATA_DIR``;
3. ``<repo>/../shared/data`` when that folder exists (this workplace's read-only copies);
4. otherwise a DataError that says how to set one, or to download.

Nothing is ever downloaded at import time or by default: ``download_movielens(name, root)``
(or ``resolve_data_dir(..., download="ml-1m")``) must be called explicitly. A download is
streamed to a temporary file in the destination folder, its MD5 (GroupLens publishes MD5
sums) — or SHA-256 when one is given — is verified, and only then is it renamed into place
(atomic on one file system) and extracted into a temporary folder that is renamed in turn,
so an interrupted run never leaves a half-written archive or dataset behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from flip_ctr.atomic import atomic_path
from flip_ctr.data.schema import DataError

log = logging.getLogger(__name__)

ENV_VAR = "FLIP_CTR_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parents[4]
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class Archive:
    url: str
    md5: str | None = None
    sha256: str | None = None
    folder: str = ""  # the top-level folder inside the zip (and the dataset folder name)


ARCHIVES: dict[str, Archive] = {
    "ml-1m": Archive(
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        md5="c4d9eecfca2ab87c1945afe126590906",
        folder="ml-1m",
    ),
    "ml-100k": Archive(
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        md5="0e33842e24a9c977be4e0107933c0723",
        folder="ml-100k",
    ),
}
# dataset names of the loader registry → archive names
ALIASES = {"ml1m": "ml-1m", "ml100k": "ml-100k"}

Opener = Callable[[str], IO[bytes]]
_CHUNK = 1 << 20


def resolve_data_dir(cfg_value: str | os.PathLike | None = None, *, download: str | None = None) -> Path:
    """The data root (see the module docstring for the order).

    ``download``: a dataset name ("ml-1m", "ml-100k", "ml1m", "ml100k"); when given and the
    resolved root (or, with no root found, ``~/.cache/flip-ctr/data``) lacks that dataset, it
    is downloaded there. Never downloads unless asked.
    """
    root: Path | None = None
    source = ""
    if cfg_value not in (None, ""):
        root, source = Path(str(cfg_value)).expanduser(), "the config value data_dir"
    elif os.environ.get(ENV_VAR):
        root, source = Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"
    elif SHARED_DATA_DIR.is_dir():
        root, source = SHARED_DATA_DIR, "the shared data folder next to the repository"

    if download is not None:
        name = ALIASES.get(download, download)
        if name not in ARCHIVES:
            raise DataError(f"no download known for {download!r}; downloadable: {', '.join(ARCHIVES)}")
        if root is None:
            root, source = Path.home() / ".cache" / "flip-ctr" / "data", "the default download folder"
        if not (root / ARCHIVES[name].folder).is_dir() and not (root.name == ARCHIVES[name].folder):
            download_movielens(name, root)

    if root is None:
        raise DataError(
            "no data directory: set data.data_dir in the config (e.g. data.data_dir=/path/to/data), "
            f"or the environment variable {ENV_VAR}, or download MovieLens with "
            "`python -c \"from flip_ctr.data.sources.download import download_movielens; "
            "download_movielens('ml-1m', '/path/to/data')\"`"
        )
    if not root.is_dir():
        raise DataError(f"{root}: data directory (from {source}) does not exist")
    log.info("data directory %s (from %s)", root, source)
    return root


def _hash_ok(path: Path, archive: Archive) -> tuple[bool, str]:
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            md5.update(chunk)
            sha.update(chunk)
    if archive.sha256 is not None and sha.hexdigest() != archive.sha256.lower():
        return False, f"sha256 {sha.hexdigest()} != expected {archive.sha256}"
    if archive.md5 is not None and md5.hexdigest() != archive.md5.lower():
        return False, f"md5 {md5.hexdigest()} != expected {archive.md5}"
    return True, ""


def fetch(url: str, dest: Path, archive: Archive, *, opener: Opener | None = None) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying its checksum; returns ``dest``.

    An existing ``dest`` with the right checksum is reused. On a checksum mismatch nothing is
    left at ``dest`` and DataError is raised.
    """
    dest = Path(dest)
    if archive.md5 is None and archive.sha256 is None:
        raise DataError(f"{url}: refusing to download without a checksum to verify")
    if dest.is_file():
        ok, _ = _hash_ok(dest, archive)
        if ok:
            log.info("%s already present with the right checksum", dest)
            return dest
        log.warning("%s exists but its checksum is wrong; downloading again", dest)
    opener = opener or (lambda u: urllib.request.urlopen(u, timeout=60))  # noqa: S310 - fixed https URLs
    with atomic_path(dest) as tmp:
        log.info("downloading %s → %s", url, dest)
        try:
            with open(tmp, "wb") as out, opener(url) as response:
                shutil.copyfileobj(response, out, _CHUNK)
        except OSError as err:
            raise DataError(f"{url}: download failed ({err}); check the network or download it by hand into {dest.parent}") from err
        ok, why = _hash_ok(tmp, archive)
        if not ok:
            raise DataError(f"{url}: checksum mismatch ({why}); the download is corrupt or the file changed upstream")
    return dest


def extract_zip(archive_path: Path, root: Path, folder: str) -> Path:
    """Extract ``archive_path`` into ``root`` so that ``root/folder`` appears atomically."""
    target = root / folder
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}.", dir=root))
    try:
        with zipfile.ZipFile(archive_path) as zf:
            for member in zf.namelist():
                resolved = (staging / member).resolve()
                if not resolved.is_relative_to(staging.resolve()):
                    raise DataError(f"{archive_path}: unsafe path {member!r} in the archive")
            zf.extractall(staging)
        inner = staging / folder
        if not inner.is_dir():  # archive without the top folder
            inner = staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(inner, target)
    except zipfile.BadZipFile as err:
        raise DataError(f"{archive_path}: not a valid zip archive ({err})") from err
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def download_movielens(
    name: str,
    root: str | os.PathLike,
    *,
    force: bool = False,
    opener: Opener | None = None,
    archive: Archive | None = None,
) -> Path:
    """Download and extract a GroupLens MovieLens archive ("ml-1m" or "ml-100k") under ``root``.

    Returns the dataset folder (``root/ml-1m``). An already extracted folder is reused unless
    ``force``. ``opener``/``archive`` exist for tests and mirrors (an opener takes a URL and
    returns a readable binary stream, e.g. for ``file://`` URLs).
    """
    key = ALIASES.get(name, name)
    if archive is None:
        if key not in ARCHIVES:
            raise DataError(f"no download known for {name!r}; downloadable: {', '.join(ARCHIVES)}")
        archive = ARCHIVES[key]
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    target = root / archive.folder
    if target.is_dir() and any(target.iterdir()) and not force:
        log.info("%s already present", target)
        return target
    zip_path = fetch(archive.url, root / f"{archive.folder}.zip", archive, opener=opener)
    out = extract_zip(zip_path, root, archive.folder)
    log.info("extracted %s into %s", zip_path, out)
    return out


__all__ = ["ARCHIVES", "Archive", "ENV_VAR", "download_movielens", "extract_zip", "fetch", "resolve_data_dir"]
