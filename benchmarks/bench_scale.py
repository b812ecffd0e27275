#!/usr/bin/env python
"""Benchmark: preprocessing at GoodReads scale (synthetic, 20M rows x 15 fields, ~4.5M features).

Not a test: it measures and writes ``results/benchmarks/scale.{json,md}``.

Phases, each in its own child process whose process tree is watched for peak RSS (psutil,
sampled every 50 ms, plus the child's own kernel-tracked peak ``VmHWM``):

1. ``generate``: :func:`flip_ctr.data.synthetic.generate` writes ``<data-dir>/table.parquet``
   (+ ``schema.yaml``) in 1M-row row groups (skipped when a table with the same spec exists).
2. ``large``: :func:`flip_ctr.data.preprocess_large.preprocess_large` → the artifact
   (chronological 90/10 split, per-field vocabularies with OOV slot, frequencies, memory-mapped
   ``value_ids.npy``), then a check that it reads back with ``read_artifact`` (digests verified).
3. ``compare`` (``--compare-rows N``, default 2M): on an N-row table with the same vocabulary
   shape, the in-memory path (``load_table`` + ``build_artifact`` + ``write_artifact``, what
   ``preprocess.py`` does) and the streaming path side by side, with a check that both produce
   identical arrays.
4. ``text`` (``--text``): :class:`flip_ctr.data.text.TextPieces` over the 20M artifact's
   vocabulary (every distinct value tokenized once) and batch assembly throughput from it.

    python benchmarks/bench_scale.py                       # 20M rows (~10-15 min on 2 busy cores)
    python benchmarks/bench_scale.py --rows 2000000 --compare-rows 500000 --out-name scale_small
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    finish_run,
    busy_processes,
    command_line,
    fmt_table,
    header_lines,
    loadavg,
    machine_info,
    now,
    run_monitored,
    vm_hwm_mib,
    write_results,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20_000_000)
    p.add_argument("--data-dir", default="/tmp/flip_ctr_synthetic", help="where the synthetic tables and artifacts go")
    p.add_argument("--compare-rows", type=int, default=2_000_000, help="rows of the in-memory vs streaming comparison (0: skip)")
    p.add_argument("--text", action="store_true", help="also build TextPieces over the big vocabulary")
    p.add_argument("--threads", type=int, default=1, help="torch threads (text phase)")
    p.add_argument("--keep", action="store_true", help="keep the artifacts (tables are always kept for reuse)")
    p.add_argument("--out-name", default="scale")
    p.add_argument("--out-dir", default=None, help="default: results/benchmarks")
    p.add_argument("--render", default=None, metavar="JSON", help="only re-write the .md next to a results .json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-args", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# child processes (each prints one JSON line last)
# ----------------------------------------------------------------------------------------------
def child_generate(a: dict) -> dict:
    from flip_ctr.data.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(num_rows=a["rows"])
    return generate(a["dir"], spec, log=lambda m: print(m, flush=True))


def child_large(a: dict) -> dict:
    from flip_ctr.data.preprocess import read_artifact
    from flip_ctr.data.preprocess_large import preprocess_large

    summary = preprocess_large(a["table"], a["schema"], a["out"], progress=lambda m: print("  " + m, flush=True))
    t0 = time.perf_counter()
    art = read_artifact(Path(a["out"]), verify=True)
    summary["read_artifact_verify_s"] = time.perf_counter() - t0
    n_train = art.num_fit + art.num_val
    assert art.value_ids.shape == (summary["rows"], summary["num_fields"])
    assert int(art.feature_frequencies.sum()) == n_train * summary["num_fields"]
    summary["value_ids_mib"] = art.value_ids.nbytes / 2**20
    summary["values_json_mib"] = (Path(a["out"]) / "values.json").stat().st_size / 2**20
    summary["positive_rate"] = float(art.labels.mean())
    return summary


def child_inmemory(a: dict) -> dict:
    from flip_ctr.data.preprocess import build_artifact, SplitConfig, write_artifact
    from flip_ctr.data.sources.table import load_table

    t0 = time.perf_counter()
    loaded = load_table(a["table"], a["schema"])
    t1 = time.perf_counter()
    parts = build_artifact(loaded, SplitConfig())
    t2 = time.perf_counter()
    write_artifact(parts, Path(a["out"]))
    t3 = time.perf_counter()
    return {"load_table_s": t1 - t0, "build_artifact_s": t2 - t1, "write_artifact_s": t3 - t2, "seconds": t3 - t0,
            "rows": int(len(parts["labels"])), "num_features": parts["space"].num_features}


def child_text(a: dict) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(a["threads"])
    from flip_ctr.data.preprocess import read_artifact
    from flip_ctr.data.text import TextPieces
    from flip_ctr.models.plm import load_tokenizer

    art = read_artifact(Path(a["out"]), verify=False)
    tok = load_tokenizer("minilm_l6")
    t0 = time.perf_counter()
    pieces = TextPieces(art.space.schema.field_names, art.space.values, tok, max_length=256)
    build_s = time.perf_counter() - t0
    piece_mib = sum(f.tokens.numel() * 8 + f.lengths.numel() * 16 for f in pieces.fields) / 2**20
    rng = np.random.default_rng(0)
    lengths, n, t0 = [], 0, time.perf_counter()
    while time.perf_counter() - t0 < 20 and n < 200_000:
        rows = np.sort(rng.integers(0, art.num_fit, 1024))
        batch = pieces.assemble(torch.from_numpy(np.asarray(art.value_ids[rows], dtype=np.int64)))
        lengths.append(batch.input_ids.shape[1])
        n += 1024
    assemble_s = time.perf_counter() - t0
    return {"distinct_values": int(sum(len(v) for v in art.space.values)), "text_pieces_build_s": build_s,
            "piece_tensors_mib": piece_mib, "assembled_samples": n, "assemble_samples_per_s": n / assemble_s,
            "batch": 1024, "mean_padded_length": float(np.mean(lengths)), "num_long_values": pieces.num_long_values}


CHILDREN = {"generate": child_generate, "large": child_large, "inmemory": child_inmemory, "text": child_text}


# ----------------------------------------------------------------------------------------------
def table_ready(d: Path, rows: int) -> bool:
    from flip_ctr.data.synthetic import SyntheticSpec

    spec_file = d / "spec.json"
    return (d / "table.parquet").is_file() and spec_file.is_file() and json.loads(spec_file.read_text()) == asdict(SyntheticSpec(num_rows=rows))


def run_phase(name: str, args_dict: dict, log) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--child-args", json.dumps(args_dict)]
    log(f"[{name}] load {loadavg()}")
    la0 = loadavg()
    r = run_monitored(cmd)
    r["loadavg_before"], r["loadavg_after"] = la0, loadavg()
    if r["rc"] != 0 or "child" not in r:
        raise SystemExit(f"phase {name} failed (rc={r['rc']})")
    log(f"[{name}] {r['wall_s']:.1f}s wall, peak tree RSS {r['peak_tree_rss_mib']:.0f} MiB, child VmHWM {r['child']['vm_hwm_mib']:.0f} MiB")
    return r


def ensure_table(d: Path, rows: int, log) -> dict | None:
    if table_ready(d, rows):
        log(f"[generate] reusing {d / 'table.parquet'}")
        return None
    d.mkdir(parents=True, exist_ok=True)
    return run_phase("generate", {"rows": rows, "dir": str(d)}, log)


def markdown(res: dict) -> str:
    parts = header_lines("Scale benchmark: synthetic GoodReads-shaped table, streaming preprocessing", res)
    L = res["large"]
    c = L["child"]
    parts += [
        "",
        f"Table: {c['rows']:,} rows x {c['num_fields']} fields (+ timestamp, label), "
        f"Parquet {res['table_bytes'] / 2**30:.2f} GiB (zstd), generated by `flip_ctr.data.synthetic` "
        f"(`SyntheticSpec(num_rows={res['args']['rows']})`). Peak RSS = the sum over the child process and "
        "its descendants, sampled every 50 ms (psutil); `VmHWM` = the child's own kernel-tracked peak RSS. "
        "RSS includes resident pages of the memory-mapped output (`value_ids.npy`).",
        "",
        "## Streaming preprocessing (`flip_ctr.data.preprocess_large`)",
        "",
        fmt_table(
            ["what", "value"],
            [
                ["rows (fit / val / test)", f"{c['rows']:,} ({c['num_fit']:,} / {c['num_val']:,} / {c['num_test']:,})"],
                ["features (sum of per-field vocab incl. OOV slots)", f"{c['num_features']:,}"],
                ["per-field seen values", ", ".join(f"{n:,}" for n in c["num_seen"])],
                ["wall time (preprocess_large)", f"{c['seconds']:.1f} s"],
                ["  keys + chronological order", f"{c['phases']['keys_and_order_s']:.1f} s"],
                ["  vocabularies (15 streaming group-bys)", f"{c['phases']['vocabulary_s']:.1f} s"],
                ["  encoding (15 streaming joins → memmap)", f"{c['phases']['encode_s']:.1f} s"],
                ["  write labels/rows/frequencies + digests + manifest", f"{c['phases']['write_s']:.1f} s"],
                ["child process total (start, imports, build, read-back check)", f"{L['wall_s']:.1f} s ({L['child_cpu_s']:.0f} CPU-s)"],
                ["read_artifact with digest verification", f"{c['read_artifact_verify_s']:.1f} s"],
                ["**peak RSS, process tree**", f"**{L['peak_tree_rss_mib'] / 1024:.2f} GiB**"],
                ["peak RSS, child VmHWM (kernel high-water mark)", f"{c['vm_hwm_mib'] / 1024:.2f} GiB"],
                ["artifact on disk", f"{c['artifact_bytes'] / 2**30:.2f} GiB (value_ids {c['value_ids_mib']:.0f} MiB, values.json {c['values_json_mib']:.0f} MiB)"],
                ["load average before / after", f"{L['loadavg_before']} / {L['loadavg_after']}"],
            ],
        ),
    ]
    if res.get("generate"):
        g = res["generate"]
        parts += ["", f"Generation: {g['child']['seconds']:.0f} s wall, peak tree RSS {g['peak_tree_rss_mib'] / 1024:.2f} GiB, "
                  f"Parquet written in {res['args']['rows'] // 1_000_000 or 1} row group(s) of up to 1M rows."]
    if res.get("compare"):
        cm = res["compare"]
        rows = []
        for key, label in (("inmemory", "in-memory (`load_table` + `build_artifact` + `write_artifact`)"), ("large", "streaming (`preprocess_large`)")):
            r = cm[key]
            rows.append([label, f"{r['child']['seconds']:.1f}", f"{r['peak_tree_rss_mib']:.0f}", f"{r['child']['vm_hwm_mib']:.0f}"])
        parts += [
            "",
            f"## In-memory vs streaming on {cm['rows']:,} rows (same shape of vocabulary)",
            "",
            fmt_table(["path", "build s", "peak tree RSS MiB", "VmHWM MiB"], rows),
            "",
            f"Identical artifacts (value_ids, labels, row_in_source, frequencies, vocabularies): **{cm['identical']}**. "
            f"Peak RSS (VmHWM) ratio in-memory / streaming: {cm['inmemory']['child']['vm_hwm_mib'] / cm['large']['child']['vm_hwm_mib']:.2f}x.",
        ]
    if res.get("text"):
        t = res["text"]["child"]
        parts += [
            "",
            "## Text pieces over the big vocabulary",
            "",
            fmt_table(
                ["what", "value"],
                [
                    ["distinct values tokenized (incl. OOV rows)", f"{t['distinct_values']:,}"],
                    ["TextPieces build", f"{t['text_pieces_build_s']:.1f} s"],
                    ["piece tensors", f"{t['piece_tensors_mib']:.0f} MiB"],
                    ["peak tree RSS (read artifact + tokenizer + pieces + assembly)", f"{res['text']['peak_tree_rss_mib'] / 1024:.2f} GiB"],
                    ["batch assembly (batch 1024, 15 fields)", f"{t['assemble_samples_per_s']:,.0f} samples/s, mean padded length {t['mean_padded_length']:.0f}"],
                ],
            ),
        ]
    parts += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(parts) + "\n"


NOTES = [
    "The synthetic table has the shape of GoodReads (row count, 15 fields, power-law user/book popularity, "
    "~4.5M distinct values), not its content; values are pseudo-words and ids.",
    "Polars runs its own thread pool (all cores) in preprocessing; the machine had 2 cores shared with other jobs.",
    "The in-memory path is not run at 20M rows: it holds the whole string table (and a sorted copy) in memory, "
    "which the comparison row shows growing with the row count.",
]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        out = CHILDREN[args.child](json.loads(args.child_args))
        out["vm_hwm_mib"] = vm_hwm_mib()
        print(json.dumps(out, default=str), flush=True)
        return
    if args.render:
        res = json.loads(Path(args.render).read_text())
        res["notes"] = NOTES
        Path(args.render).write_text(json.dumps(res, indent=1, default=str) + "\n")
        Path(args.render).with_suffix(".md").write_text(markdown(res))
        return
    t_start = time.perf_counter()

    def log(msg):
        print(msg, flush=True)

    import torch

    torch.set_num_threads(args.threads)
    machine = machine_info()
    machine["busy_processes_start"] = busy_processes()
    log(f"machine: {machine['cpu_count']} CPUs, load {machine['loadavg_start']}, busy: {[p['cmdline'][:60] for p in machine['busy_processes_start']]}")
    root = Path(args.data_dir)
    res: dict = {"command": command_line(), "date": now(), "args": vars(args), "machine": machine, "notes": NOTES}

    big = root / f"rows_{args.rows}"
    res["generate"] = ensure_table(big, args.rows, log)
    res["table_bytes"] = (big / "table.parquet").stat().st_size
    out_large = root / f"artifact_large_{args.rows}"
    res["large"] = run_phase("large", {"table": str(big / "table.parquet"), "schema": str(big / "schema.yaml"), "out": str(out_large)}, log)

    if args.text:
        res["text"] = run_phase("text", {"out": str(out_large), "threads": args.threads}, log)

    if args.compare_rows:
        small = root / f"rows_{args.compare_rows}"
        ensure_table(small, args.compare_rows, log)
        a_mem, a_large = root / f"artifact_inmemory_{args.compare_rows}", root / f"artifact_large_{args.compare_rows}"
        kw = {"table": str(small / "table.parquet"), "schema": str(small / "schema.yaml")}
        cm = {"rows": args.compare_rows}
        cm["inmemory"] = run_phase("inmemory", {**kw, "out": str(a_mem)}, log)
        cm["large"] = run_phase("large", {**kw, "out": str(a_large)}, log)
        import numpy as np

        from flip_ctr.data.preprocess import read_artifact

        x, y = read_artifact(a_mem, verify=False), read_artifact(a_large, verify=False)
        cm["identical"] = bool(
            all(np.array_equal(np.asarray(getattr(x, k)), np.asarray(getattr(y, k))) for k in ("value_ids", "labels", "row_in_source", "feature_frequencies"))
            and x.space.values == y.space.values and x.space.num_seen == y.space.num_seen
            and (x.num_fit, x.num_val, x.num_test) == (y.num_fit, y.num_val, y.num_test)
        )
        del x, y
        res["compare"] = cm
        if not args.keep:
            shutil.rmtree(a_mem, ignore_errors=True)
            shutil.rmtree(a_large, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(out_large, ignore_errors=True)

    finish_run(res, t_start, markdown, args)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
