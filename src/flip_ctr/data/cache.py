"""The preprocessing cache: which entry a dataset maps to, when an entry is stale, and cleaning up.

An entry is the artifact directory ``<cache_dir>/<dataset>-<key>/`` of
:mod:`flip_ctr.data.preprocess`. ``key`` digests

- the **request**: the dataset (loader), the loader's options (not the arguments that only say
  where files are), the split fractions and the paths of the files the loader reads (``flip_ctr.data.sources.FILES``: never the rest of the data
  folder, so run or cache folders beside a table change nothing);
- the **content**: the SHA-256 of each of those files, so any edit (even one that keeps a file's
  size and mtime) gives a new entry.

Hashing is the cost of a cache hit (see results/benchmarks/cache_digest.json). It is skipped for a
file whose (path, size, mtime, ctime, inode) are exactly those recorded with a digest in
``<cache_dir>/digests.json``; the ctime changes on every write and on every mtime change
(``touch -d``, ``os.utime``), so a restored mtime does not hide an edit.

When an entry is built, the entries of the same request with other content are superseded and
removed. ``flip-ctr cache list`` shows the entries, ``flip-ctr cache clean`` removes stale ones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from flip_ctr.atomic import atomic_write_text

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 2
MEMO_FILE = "digests.json"
MANIFEST = "manifest.json"
# a temporary build directory older than this is a leftover of a killed build
STALE_TEMP_SECONDS = 3600


def hash_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def short_hash(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class DigestMemo:
    """File digests recorded in ``<cache_dir>/digests.json``, keyed by resolved path and valid for
    one exact (size, mtime, ctime, inode)."""

    def __init__(self, cache_dir: Path) -> None:
        self.path = Path(cache_dir) / MEMO_FILE
        self.entries: dict[str, dict] = self._read()
        self.changed = False

    def _read(self) -> dict:
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return entries if isinstance(entries, dict) else {}

    def digest(self, path: Path) -> str:
        key, stamp = str(Path(path).resolve()), _stamp(path)
        known = self.entries.get(key)
        if isinstance(known, dict) and known.get("stamp") == stamp:
            return known["sha256"]
        digest = hash_file(path)
        self.entries[key] = {"stamp": stamp, "sha256": digest}
        self.changed = True
        return digest

    def forget_missing(self) -> None:
        for key in [k for k in self.entries if not Path(k).is_file()]:
            del self.entries[key]
            self.changed = True

    def save(self) -> None:
        """Atomic; parallel jobs may overwrite each other's additions, which only costs a re-hash."""
        if self.changed:
            atomic_write_text(self.path, json.dumps(self.entries, indent=0))
            self.changed = False


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    request_key: str
    source: dict  # stored in the manifest: what the entry was built from


def _plain(value: object) -> object:
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def locate(cache_dir: Path, dataset: str, options: dict, files: list[Path], split: dict) -> CacheEntry:
    """The entry of this dataset, loader options, split and file content (see the module docstring)."""
    memo = DigestMemo(cache_dir)
    files_info = [{"path": str(Path(p).resolve()), "size": Path(p).stat().st_size, "sha256": memo.digest(Path(p))} for p in files]
    memo.save()
    request = {
        "format": CACHE_FORMAT_VERSION,
        "dataset": dataset,
        "options": {k: _plain(v) for k, v in sorted(options.items())},
        "split": split,
        "files": [f["path"] for f in files_info],
    }
    request_key = short_hash(request)
    key = short_hash({"request": request_key, "sha256": [f["sha256"] for f in files_info]})
    source = {**request, "request_key": request_key, "files": files_info}
    return CacheEntry(Path(cache_dir) / f"{dataset}-{key}", request_key, source)


def _manifest(entry_dir: Path) -> dict | None:
    try:
        manifest = json.loads((entry_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


# <dataset>-<16 hex digits> (locate): other folders in the cache dir are not artifacts (generated
# synthetic tables, converted GoodReads tables) and are neither listed nor cleaned as such.
_ENTRY_NAME = re.compile(r"^[^.].*-[0-9a-f]{16}$")


def _entry_dirs(cache_dir: Path) -> list[Path]:
    if not Path(cache_dir).is_dir():
        return []
    return sorted(p for p in Path(cache_dir).iterdir() if p.is_dir() and _ENTRY_NAME.match(p.name))


def prune_superseded(entry: CacheEntry) -> list[Path]:
    """Removes the other entries of ``entry``'s request (same dataset, options, split and file
    paths, older content). Returns what was removed."""
    removed = []
    for other in _entry_dirs(entry.path.parent):
        manifest = _manifest(other)
        if other != entry.path and manifest and (manifest.get("source") or {}).get("request_key") == entry.request_key:
            shutil.rmtree(other, ignore_errors=True)
            removed.append(other)
            log.info("removed superseded cache entry %s (its source files changed)", other)
    return removed


def entry_state(manifest: dict | None, memo: DigestMemo) -> str:
    """"current", or why the entry can no longer be used."""
    if manifest is None:
        return "unreadable"
    if manifest.get("format_version") != CACHE_FORMAT_VERSION:
        return f"old format {manifest.get('format_version')}"
    for f in (manifest.get("source") or {}).get("files", []):
        path = Path(f["path"])
        if not path.is_file():
            return f"source missing: {path}"
        if memo.digest(path) != f["sha256"]:
            return f"source changed: {path}"
    return "current"


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def list_entries(cache_dir: Path) -> list[dict]:
    """One dict per entry: name, dataset (the schema's name), rows, bytes, built (epoch s), state."""
    memo = DigestMemo(cache_dir)
    rows = []
    for entry_dir in _entry_dirs(cache_dir):
        manifest = _manifest(entry_dir)
        counts = [(manifest or {}).get(k) or 0 for k in ("num_fit", "num_val", "num_test")]
        rows.append({
            "name": entry_dir.name,
            "dataset": ((manifest or {}).get("schema") or {}).get("name", "?"),
            "rows": sum(counts),
            "bytes": _size(entry_dir),
            "built": (entry_dir / MANIFEST).stat().st_mtime if (entry_dir / MANIFEST).is_file() else entry_dir.stat().st_mtime,
            "state": entry_state(manifest, memo),
        })
    memo.save()
    return rows


def clean(cache_dir: Path, everything: bool = False) -> list[Path]:
    """Removes entries that are not current (or all, with ``everything``) and leftovers of killed
    builds; returns what was removed."""
    cache_dir = Path(cache_dir)
    removed = [cache_dir / r["name"] for r in list_entries(cache_dir) if everything or r["state"] != "current"]
    if cache_dir.is_dir():
        now = time.time()
        removed += [p for p in cache_dir.iterdir() if p.name.startswith(".") and p.is_dir() and now - p.stat().st_mtime > STALE_TEMP_SECONDS]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    memo = DigestMemo(cache_dir)
    if everything:
        memo.entries, memo.changed = {}, True
    memo.forget_missing()
    if cache_dir.is_dir():
        memo.save()
    return removed


# ------------------------------------------------------------------------------------------
# flip-ctr cache list|clean
# ------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """The ``paths.cache_dir`` of conf/paths/default.yaml: $FLIP_CTR_CACHE_DIR, else <root>/.cache/flip_ctr."""
    if os.environ.get("FLIP_CTR_CACHE_DIR"):
        return Path(os.environ["FLIP_CTR_CACHE_DIR"])
    return Path(os.environ.get("FLIP_CTR_ROOT") or os.getcwd()) / ".cache" / "flip_ctr"


def _print_table(rows: list[dict]) -> None:
    print(f"{'entry':<34} {'dataset':<16} {'rows':>10} {'MiB':>8}  {'built':<16}  state")
    for r in rows:
        built = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["built"]))
        print(f"{r['name']:<34} {r['dataset']:<16} {r['rows']:>10,} {r['bytes'] / 2**20:>8.1f}  {built:<16}  {r['state']}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="flip-ctr cache", description="The preprocessed-data cache.")
    sub = parser.add_subparsers(dest="action", required=True)
    for name, text in (("list", "show the entries and whether each is current"), ("clean", "remove entries that are not current")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--cache-dir", type=Path, default=None, help="default: $FLIP_CTR_CACHE_DIR, else ./.cache/flip_ctr")
    sub.choices["clean"].add_argument("--all", action="store_true", help="remove every entry")
    args = parser.parse_args(argv)
    cache_dir = args.cache_dir or default_cache_dir()
    if args.action == "list":
        rows = list_entries(cache_dir)
        _print_table(rows) if rows else print(f"no cache entries in {cache_dir}")
        return
    removed = clean(cache_dir, everything=args.all)
    print(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} from {cache_dir}" + "".join(f"\n  {p.name}" for p in removed))


__all__ = ["CACHE_FORMAT_VERSION", "CacheEntry", "DigestMemo", "clean", "entry_state", "hash_file", "list_entries", "locate", "prune_superseded"]
