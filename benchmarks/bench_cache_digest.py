#!/usr/bin/env python
"""Benchmark: what the content-keyed preprocessing cache costs (flip_ctr.data.cache).

Not a test: it measures and writes ``results/benchmarks/cache_digest.{json,md}``.

1. **ML-1M** (the files the loader reads: ratings.reconstructed.dat.gz, users.dat, movies.dat):
   ``cache.locate`` with an empty digest memo (every file hashed, SHA-256) and with the memo
   of an earlier lookup (one ``stat`` per file); for scale, the rest of a cache hit
   (``read_artifact`` verifying the artifact's own arrays) and a cold preprocessing build.
2. **A large table**: one file of ``--large-gib`` GiB (random bytes: hashing cost does not depend
   on content), hashed from the page cache and, after ``posix_fadvise(DONTNEED)``, from disk;
   then the memo hit.

    python benchmarks/bench_cache_digest.py              # ~1 min; run it alone on the machine
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import busy_processes, finish_run, fmt_table, header_lines, machine_info, now, command_line  # noqa: E402

from flip_ctr.data import cache  # noqa: E402
from flip_ctr.data.preprocess import SplitConfig, load_or_build, read_artifact  # noqa: E402
from flip_ctr.data.sources import data_source  # noqa: E402


def timed(fn, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def ml1m_costs(data_dir: Path, repeats: int) -> dict:
    source = data_source("ml1m", data_dir=str(data_dir))
    files = list(source.files)
    split = asdict(SplitConfig())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fresh = iter(range(10**6))
        cold = timed(lambda: cache.locate(tmp / f"cold{next(fresh)}", "ml1m", source.kwargs, files, split), repeats)
        cache.locate(tmp / "warm", "ml1m", source.kwargs, files, split)
        warm = timed(lambda: cache.locate(tmp / "warm", "ml1m", source.kwargs, files, split), repeats)
        start = time.perf_counter()
        artifact = load_or_build(source, SplitConfig(), tmp / "warm")
        build_s = time.perf_counter() - start
        verify = timed(lambda: read_artifact(artifact.path, verify=True), max(3, repeats // 4))
        artifact_bytes = sum(p.stat().st_size for p in artifact.path.iterdir())
    return {
        "files": [{"path": str(p), "bytes": p.stat().st_size} for p in files],
        "bytes": sum(p.stat().st_size for p in files),
        "locate_cold_memo": cold,
        "locate_warm_memo": warm,
        "cold_build_s": build_s,
        "read_artifact_verify": verify,
        "artifact_bytes": artifact_bytes,
    }


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def large_costs(gib: float, work_dir: Path | None) -> dict:
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        big = Path(tmp) / "table.parquet"
        chunk = os.urandom(1 << 24)
        with open(big, "wb") as fh:
            for _ in range(int(gib * 64)):
                fh.write(chunk)
        size = big.stat().st_size
        start = time.perf_counter()
        cache.hash_file(big)
        page_cache_s = time.perf_counter() - start
        drop_from_page_cache(big)
        start = time.perf_counter()
        cache.hash_file(big)
        disk_s = time.perf_counter() - start
        memo = cache.DigestMemo(Path(tmp) / "c")
        memo.digest(big)
        warm = timed(lambda: memo.digest(big), 20)
    return {
        "bytes": size,
        "hash_page_cache_s": page_cache_s,
        "hash_page_cache_mb_s": size / 1e6 / page_cache_s,
        "hash_after_dontneed_s": disk_s,
        "hash_after_dontneed_mb_s": size / 1e6 / disk_s,
        "memo_hit": warm,
    }


def markdown(res: dict) -> str:
    ml, big = res["ml1m"], res["large"]
    ms = lambda s: f"{s * 1e3:.1f} ms" if s >= 1e-3 else f"{s * 1e6:.0f} µs"  # noqa: E731
    lines = header_lines("Cache key cost: content digests (flip_ctr.data.cache)", res)
    lines += [
        "",
        f"ML-1M: the 3 files the loader reads, {ml['bytes'] / 1e6:.1f} MB. Large table: one {big['bytes'] / 2**30:.1f} GiB file.",
        "",
        fmt_table(
            ["what", "time", "note"],
            [
                ["ML-1M cache key, empty digest memo (3 files hashed)", ms(ml["locate_cold_memo"]["median_s"]),
                 f"median of {ml['locate_cold_memo']['repeats']}, files in the page cache"],
                ["ML-1M cache key, memo hit (3 stats)", ms(ml["locate_warm_memo"]["median_s"]), "every later run"],
                ["ML-1M rest of a cache hit: read_artifact verifying its arrays", ms(ml["read_artifact_verify"]["median_s"]),
                 f"{ml['artifact_bytes'] / 1e6:.1f} MB of arrays"],
                ["ML-1M cold preprocessing build", f"{ml['cold_build_s']:.1f} s", "for scale"],
                ["large table hashed, from the page cache", f"{big['hash_page_cache_s']:.2f} s", f"{big['hash_page_cache_mb_s']:,.0f} MB/s"],
                ["large table hashed, after POSIX_FADV_DONTNEED", f"{big['hash_after_dontneed_s']:.2f} s",
                 f"{big['hash_after_dontneed_mb_s']:,.0f} MB/s (the host may still cache the file)"],
                ["large table, memo hit", ms(big["memo_hit"]["median_s"]), "a stat + a dict lookup"],
            ],
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ml1m", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--large-gib", type=float, default=1.0)
    parser.add_argument("--work-dir", type=Path, default=None, help="where the large file is written (default: $TMPDIR)")
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--out-name", default="cache_digest")
    args = parser.parse_args()
    t_start = time.perf_counter()
    res = {"command": command_line(), "date": now(), "machine": {**machine_info(), "busy_processes_start": busy_processes()}}
    res["ml1m"] = ml1m_costs(args.ml1m, args.repeats)
    res["large"] = large_costs(args.large_gib, args.work_dir)
    finish_run(res, t_start, markdown, args)


if __name__ == "__main__":
    main()
