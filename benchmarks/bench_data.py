#!/usr/bin/env python
"""Benchmark: preprocessing and the data pipeline alone (no model), ML-1M, CPU.

Not a test: it measures and writes ``results/benchmarks/data.{json,md}``.

1. **Preprocessing**: a cold build of the ML-1M (and ML-100K) artifact
   (``CTRDataModule.prepare_data()`` into an empty cache) in a child process: wall time and
   peak RSS (the child's kernel high-water mark ``VmHWM`` and the sampled RSS of its process
   tree); then warm (cached) ``prepare_data()`` + ``setup()`` and the ``TextPieces`` build.
2. **Datamodule throughput**: batches/s of ``dm.train_dataloader()`` (shuffled fit split,
   ``num_workers=0``) for ID-only batches and for paired text + ID batches (MiniLM tokenizer,
   ``max_length=128``: input ids, attention mask, token → field map, value-token mask).
3. **Text pipeline side by side** (same process, same rows, alternating repeats): ours
   (every distinct value tokenized once, batches assembled with tensor ops) vs per-sample
   tokenization in ``Dataset.__getitem__`` as the reference FLIP-style implementations do
   (the row's sentence is pre-rendered at init; ``__getitem__`` calls the tokenizer on it;
   the collate function pads with ``tokenizer.pad`` and stacks the ID lists), and, as a
   stronger baseline, one batched tokenizer call per batch in the collate function. The
   baselines produce input ids and attention mask only (no token → field map): less output
   than ours. The ids are checked to be identical to ours.

    python benchmarks/bench_data.py             # ~5 min on 2 busy cores, 1 torch thread
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-length", type=int, default=128, help="data.max_length (conf/data/ml1m.yaml: 128)")
    p.add_argument("--id-batch-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--text-batch-sizes", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--min-seconds", type=float, default=4.0, help="per throughput measurement (at least 5 batches)")
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats of the side-by-side (median reported)")
    p.add_argument("--skip-preprocess", action="store_true")
    p.add_argument("--out-name", default="data")
    p.add_argument("--out-dir", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# 1. preprocessing (child process)
# ----------------------------------------------------------------------------------------------
def child_preprocess(spec: dict) -> dict:
    from flip_ctr.data.datamodule import CTRDataModule

    dm = CTRDataModule(spec["dataset"], data_subdir=spec["subdir"], cache_dir=spec["cache"])
    hwm0 = vm_hwm_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    dm.prepare_data()
    return {"cold_build_s": time.perf_counter() - t0, "cold_build_cpu_s": time.process_time() - c0,
            "vm_hwm_after_imports_mib": hwm0, "vm_hwm_mib": vm_hwm_mib(), "data_dir": str(dm.resolved_data_dir())}


def bench_preprocess(args, log) -> list[dict]:
    out = []
    for dataset, subdir in (("ml1m", "ml-1m"), ("ml100k", "ml-100k")):
        cache = tempfile.mkdtemp(prefix="flip_bench_pre_")
        try:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps({"dataset": dataset, "subdir": subdir, "cache": cache})]
            la = loadavg()
            r = run_monitored(cmd, echo=False)
            if r["rc"] != 0 or "child" not in r:
                raise SystemExit(f"preprocessing child failed for {dataset}")
            from flip_ctr.data.datamodule import CTRDataModule

            t0 = time.perf_counter()
            dm = CTRDataModule(dataset, data_subdir=subdir, cache_dir=cache)
            dm.prepare_data()
            t1 = time.perf_counter()
            dm.setup()
            t2 = time.perf_counter()
            row = {"dataset": dataset, **r["child"], "child_total_s": r["wall_s"], "peak_tree_rss_mib": r["peak_tree_rss_mib"],
                   "warm_prepare_data_s": t1 - t0, "warm_setup_s": t2 - t1, "rows": int(len(dm.artifact.labels)),
                   "num_features": dm.num_features, "num_fields": dm.num_fields, "loadavg": la,
                   "artifact_mib": sum(f.stat().st_size for f in Path(dm.artifact.path).iterdir()) / 2**20}
            out.append(row)
            log(f"  {dataset}: cold {row['cold_build_s']:.2f}s, VmHWM {row['vm_hwm_mib']:.0f} MiB, warm setup {row['warm_setup_s'] * 1e3:.0f} ms")
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------------------------
# baselines: per-sample tokenization in __getitem__, and batched tokenization in collate
# ----------------------------------------------------------------------------------------------
class PerSampleTextDataset:
    """Reference-style dataset: sentences rendered at init, tokenized one by one in __getitem__."""

    def __init__(self, artifact, start: int, stop: int, tokenizer, max_length: int) -> None:
        import numpy as np

        from flip_ctr.data.text import render_sentence

        space = artifact.space
        names = space.schema.field_names
        local = np.asarray(artifact.value_ids[start:stop])
        self.texts = [render_sentence(names, [space.values[f][k] for f, k in enumerate(row)]) for row in local.tolist()]
        self.ctr = artifact.feature_ids(slice(start, stop)).tolist()
        self.labels = np.asarray(artifact.labels[start:stop], dtype=np.float32).tolist()
        self.tok, self.max_length = tokenizer, max_length

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict:
        enc = self.tok(self.texts[i], truncation=True, max_length=self.max_length, padding=False,
                       return_attention_mask=False, return_token_type_ids=False)
        return {"text": enc, "ctr": self.ctr[i], "label": self.labels[i]}


class PerSampleCollate:
    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer

    def __call__(self, items: list[dict]) -> dict:
        import torch

        batch = self.tok.pad([it["text"] for it in items], padding="longest", return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                "feature_ids": torch.tensor([it["ctr"] for it in items]), "labels": torch.tensor([it["label"] for it in items])}


class RawRows:
    """Dataset of (sentence, ids, label) without tokenization, for the batched-collate baseline."""

    def __init__(self, base: PerSampleTextDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return self.base.texts[i], self.base.ctr[i], self.base.labels[i]


class BatchedCollate:
    def __init__(self, tokenizer, max_length: int) -> None:
        self.tok, self.max_length = tokenizer, max_length

    def __call__(self, items) -> dict:
        import torch

        texts, ctr, labels = zip(*items)
        enc = self.tok(list(texts), truncation=True, max_length=self.max_length, padding="longest", return_tensors="pt",
                       return_token_type_ids=False)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "feature_ids": torch.tensor(ctr), "labels": torch.tensor(labels)}


# ----------------------------------------------------------------------------------------------
def time_loader(loader, min_seconds: float, min_batches: int = 5, warmup_batches: int = 2) -> dict:
    """Iterates ``loader`` (again from the start when exhausted, as epochs do) until
    ``min_seconds`` and ``min_batches`` have passed, after ``warmup_batches`` untimed batches.
    Building the loader (and its collate function) is a once-per-fit cost and is not timed."""
    it = iter(loader)
    for _ in range(warmup_batches):
        next(it)
    n_batches = n_samples = 0
    lengths = []
    t0, c0 = time.perf_counter(), time.process_time()
    while n_batches < min_batches or time.perf_counter() - t0 < min_seconds:
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        n_batches += 1
        n_samples += len(b["labels"])
        if "input_ids" in b:
            lengths.append(b["input_ids"].shape[1])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {"batches": n_batches, "samples": n_samples, "wall_s": wall, "cpu_s": cpu, "batches_per_s": n_batches / wall,
           "samples_per_s": n_samples / wall, "samples_per_cpu_s": n_samples / cpu if cpu else None, "loadavg": loadavg()}
    if lengths:
        out["mean_padded_length"] = sum(lengths) / len(lengths)
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child_preprocess(json.loads(args.child))), flush=True)
        return
    t_start = time.perf_counter()
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass

    def log(msg):
        print(msg, flush=True)

    machine = machine_info()
    machine["busy_processes_start"] = busy_processes()
    log(f"machine: load {machine['loadavg_start']}, busy {[p['cmdline'][:50] for p in machine['busy_processes_start']]}")
    res: dict = {"command": command_line(), "date": now(), "args": vars(args), "machine": machine}

    if not args.skip_preprocess:
        log("[1/3] preprocessing (cold build in a child process)")
        res["preprocess"] = bench_preprocess(args, log)

    from flip_ctr.data.datamodule import CTRDataModule
    from flip_ctr.models.plm import load_tokenizer

    cache = tempfile.mkdtemp(prefix="flip_bench_dm_")
    try:
        tok = load_tokenizer("minilm_l6")
        dm_id = CTRDataModule("ml1m", data_subdir="ml-1m", cache_dir=cache)
        dm_id.prepare_data()
        dm_id.setup()
        dm_text = CTRDataModule("ml1m", data_subdir="ml-1m", cache_dir=cache, tokenizer=tok, max_length=args.max_length)
        t0 = time.perf_counter()
        dm_text.setup()
        text_setup_s = time.perf_counter() - t0
        a = dm_text.artifact
        start, stop = a.split_ranges["fit"]
        res["text_pieces"] = {"setup_s_incl_text_pieces": text_setup_s, "distinct_values": int(sum(len(v) for v in a.space.values)),
                              "fit_rows": stop - start}
        log(f"[2/3] datamodule throughput (TextPieces setup {text_setup_s:.2f}s)")
        loader_rows = []
        for kind, dm, sizes in (("ID only", dm_id, args.id_batch_sizes), ("text + ID", dm_text, args.text_batch_sizes)):
            for bs in sizes:
                dm.batch_size = bs
                r = time_loader(dm.train_dataloader(), args.min_seconds)
                r.update(kind=kind, batch=bs)
                loader_rows.append(r)
                log(f"  {kind} batch {bs}: {r['batches_per_s']:.1f} batches/s = {r['samples_per_s']:,.0f} samples/s (load {r['loadavg'][0]})")
        res["datamodule"] = loader_rows

        log("[3/3] text pipeline side by side")
        t0 = time.perf_counter()
        base = PerSampleTextDataset(a, start, stop, tok, args.max_length)
        render_s = time.perf_counter() - t0
        res["text_pieces"]["baseline_render_s"] = render_s
        # identical ids on the same rows
        rows = list(range(0, 512))
        ours = dm_text._loader("fit", False, 512)
        ob = next(iter(ours))
        bb = PerSampleCollate(tok)([base[i] for i in rows])
        cb = BatchedCollate(tok, args.max_length)([RawRows(base)[i] for i in rows])
        same = bool(torch.equal(ob["input_ids"], bb["input_ids"]) and torch.equal(ob["attention_mask"], bb["attention_mask"])
                    and torch.equal(ob["input_ids"], cb["input_ids"]) and torch.equal(ob["feature_ids"], bb["feature_ids"]))
        res["ids_identical"] = same
        log(f"  ids identical on 512 rows: {same}; baseline render {render_s:.1f}s")
        side = []
        for bs in args.text_batch_sizes:
            dm_text.batch_size = bs
            makers = {
                "ours": dm_text.train_dataloader(),
                "per-sample": DataLoader(base, batch_size=bs, shuffle=True, collate_fn=PerSampleCollate(tok)),
                "batched-collate": DataLoader(RawRows(base), batch_size=bs, shuffle=True, collate_fn=BatchedCollate(tok, args.max_length)),
            }
            runs = {k: [] for k in makers}
            for rep in range(args.repeats):
                for k, loader in makers.items():
                    runs[k].append(time_loader(loader, args.min_seconds))
            for k, rs in runs.items():
                med = statistics.median(r["samples_per_s"] for r in rs)
                med_cpu = statistics.median(r["samples_per_cpu_s"] for r in rs)
                side.append({"pipeline": k, "batch": bs, "samples_per_s": med, "samples_per_cpu_s": med_cpu,
                             "runs": rs, "mean_padded_length": rs[0].get("mean_padded_length")})
                log(f"  batch {bs} {k}: {med:,.0f} samples/s ({med_cpu:,.0f}/CPU-s)")
        for r in side:
            ours_r = next(x for x in side if x["pipeline"] == "ours" and x["batch"] == r["batch"])
            r["ours_over_this"] = ours_r["samples_per_s"] / r["samples_per_s"]
            r["ours_over_this_cpu"] = ours_r["samples_per_cpu_s"] / r["samples_per_cpu_s"]
        res["side_by_side"] = side
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    finish_run(res, t_start, markdown, args)


PIPELINE_LABELS = {"ours": "ours (TextPieces)", "per-sample": "per-sample tokenization in `__getitem__`",
                   "batched-collate": "batched tokenization in `collate_fn`"}


def markdown(res: dict) -> str:
    parts = header_lines("Data pipeline benchmark (ML-1M, CPU, no model)", res)
    if res.get("preprocess"):
        rows = [
            [p["dataset"], f"{p['rows']:,}", f"{p['num_features']:,}", f"{p['cold_build_s']:.2f} s ({p['cold_build_cpu_s']:.2f} CPU-s)",
             f"{p['vm_hwm_mib']:.0f} (after imports {p['vm_hwm_after_imports_mib']:.0f})", f"{p['peak_tree_rss_mib']:.0f}",
             f"{p['warm_prepare_data_s'] * 1e3:.0f} / {p['warm_setup_s'] * 1e3:.0f}", f"{p['artifact_mib']:.1f}"]
            for p in res["preprocess"]
        ]
        parts += ["", "## Preprocessing (cold build of the cached artifact)", "",
                  fmt_table(["dataset", "rows", "features", "cold build", "peak RSS VmHWM MiB", "peak tree RSS MiB (sampled)",
                             "warm prepare_data / setup ms", "artifact MiB"], rows)]
    tp = res["text_pieces"]
    parts += ["", "## Datamodule alone: `dm.train_dataloader()` (shuffled fit split, num_workers=0)", "",
              f"`setup()` with the MiniLM tokenizer (incl. `TextPieces`: {tp['distinct_values']:,} distinct values tokenized once): "
              f"{tp['setup_s_incl_text_pieces']:.2f} s. Text batches: max_length {res['args']['max_length']}, dynamic padding.", "",
              fmt_table(["batch kind", "batch", "batches/s", "samples/s", "samples/CPU-s", "mean padded length", "load (1 min)"],
                        [[r["kind"], r["batch"], f"{r['batches_per_s']:.1f}", f"{r['samples_per_s']:,.0f}", f"{r['samples_per_cpu_s']:,.0f}",
                          f"{r['mean_padded_length']:.1f}" if r.get("mean_padded_length") else "", r["loadavg"][0]] for r in res["datamodule"]])]
    parts += ["", "## Text pipeline side by side (same rows, same process, alternating repeats; median)", "",
              f"Per-sample baseline init: rendering the {tp['fit_rows']:,} fit-split sentences took {tp['baseline_render_s']:.1f} s "
              f"(not in its throughput). Input ids and attention masks identical to ours on 512 rows: **{res['ids_identical']}**.", "",
              fmt_table(["pipeline", "batch", "samples/s", "samples/CPU-s", "**ours / this** (wall)", "ours / this (CPU-s)"],
                        [[PIPELINE_LABELS[r["pipeline"]], r["batch"], f"{r['samples_per_s']:,.0f}", f"{r['samples_per_cpu_s']:,.0f}",
                          f"**{r['ours_over_this']:.1f}x**", f"{r['ours_over_this_cpu']:.1f}x"] for r in res["side_by_side"]])]
    parts += ["", "## Notes", "",
              "- `ours`: `BatchBuilder` = gather of per-field local ids + `TextPieces.assemble` (input ids, attention mask, "
              "token → field map, value-token mask) + ID feature ids + labels.",
              "- `per-sample`: the reference FLIP-style dataset: `tokenizer(sentence)` per sample in `__getitem__` "
              "(fast Rust tokenizer, truncation at max_length), `tokenizer.pad(padding='longest')` in the collate function, "
              "ID lists stacked with `torch.tensor`. It has no token → field map, which field-level masking needs.",
              "- `batched-collate`: one `tokenizer(list_of_sentences)` call per batch (a stronger baseline than the reference).",
              "- Tokenizer parallelism off (`TOKENIZERS_PARALLELISM=false`), 1 torch thread, `num_workers=0` for all.",
              "- `samples/CPU-s` divides by this process's CPU time: it discounts the time the shared machine did not run us."]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    main()
