#!/usr/bin/env python
"""Writes ``results/benchmarks.md`` (the summary) from the JSON results in ``results/benchmarks/``:
``id_models.json`` (bench_id_models.py), ``data.json`` (bench_data.py), ``plm.json``
(bench_plm.py), ``scale.json`` (bench_scale.py) and ``serving.json`` (bench_serving.py). Missing files are reported as missing.

    python benchmarks/write_report.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, RESULTS_DIR, fmt_table  # noqa: E402


def load(name: str, d: Path) -> dict | None:
    p = d / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


PIPELINES = {"ours": "ours (TextPieces)", "per-sample": "per-sample tokenization in `__getitem__`",
             "batched-collate": "batched tokenization in `collate_fn`"}
ID_LABELS = {"ours": "flip_ctr DCNv2", "dcnmix": "deepctr DCNMix", "dcn_matrix": "deepctr DCN(matrix)",
             "dcnmix_field_vocab": "deepctr DCNMix, per-field vocab"}


def id_throughput(ids: dict) -> list[dict]:
    """bench_id_models.py's flat records → one row per (model, batch) with the ratios to ours."""
    table: dict = {}
    for t in ids.get("throughput", []):
        if t["metric"] == "loader":
            continue
        row = table.setdefault((t["model"], t["batch_size"]), {"model": t["model"], "label": ID_LABELS.get(t["model"], t["model"]), "batch": t["batch_size"]})
        row[t["metric"]] = t["samples_per_s"]
        row[t["metric"] + "_cpu"] = t["samples_per_cpu_s"]
    rows = list(table.values())
    for r in rows:
        ours = table.get(("ours", r["batch"]), {})
        for k in ("e2e", "compute", "e2e_cpu"):
            r["ours_over_" + k] = ours.get(k, float("nan")) / r[k] if r.get(k) else float("nan")
    return rows


def id_epochs(ids: dict) -> list[dict]:
    eps = ids.get("epoch", [])
    ours = next((e for e in eps if e["model"] == "ours"), None)
    return [{**e, "label": ID_LABELS.get(e["model"], e["model"]), "ours_over_speed": ours["samples_per_s"] / e["samples_per_s"] if ours else float("nan"),
             "ours_auc": ours["test_auc"] if ours else float("nan")} for e in eps]


def machine_line(res: dict, name: str) -> str:
    m = res["machine"]
    busy = m.get("busy_processes_start") or []
    return (f"| `{name}` | {res['date']} | {res['total_s'] / 60:.1f} min | {m.get('loadavg_start')} → {m.get('loadavg_end')} | "
            f"{len(busy)} other busy process(es) at start | `{res['command']}` |")


def _best(runs: list[dict], **match) -> dict:
    runs = [r for r in runs if all(r.get(k) == v for k, v in match.items())]
    return max(runs, key=lambda r: r["rows_per_s"]) if runs else {}


def serving_headlines(serving: dict) -> list[list]:
    rows = []
    for threads in serving["args"]["threads"]:
        r = _best(serving["end_to_end"], input="parquet", threads=threads)
        if r:
            rows.append([f"`flip-ctr predict`, {r['rows']:,} ML-1M raw rows (Parquet), DCNv2 ONNX, {threads} thread(s), end to end",
                         f"{r['rows_per_s']:,.0f} rows/s wall (best of {serving['args']['repeats']}, load {r['loadavg_before']}), "
                         f"{r['rows_per_cpu_s']:,.0f} per CPU-s", "bench_serving"])
    return rows


def serving_section(serving: dict) -> list[str]:
    m = serving["machine"]
    out = ["## 5. Serving: `flip-ctr predict` (ONNX + onnxruntime)", "",
           f"**Another machine than the sections above**: {m['cpu_model']}, {m['cpu_count']} vCPUs, shared. "
           f"From `results/benchmarks/serving.md` ({serving['date']}, `{serving['command']}`, load "
           f"{serving['machine']['loadavg_start']} → {serving['machine'].get('loadavg_end')}): DCNv2 (`conf/id_model/dcnv2.yaml`) "
           f"exported in {serving['export']['export_s']:.1f} s; {serving['args']['rows']:,} raw rows; every run listed with the "
           "load average before it.", ""]
    rows = [[r["input"], r["threads"], f"{r['rows_per_s']:,.0f}", f"{r['rows_per_cpu_s']:,.0f}", f"{r['wall_s']:.1f}",
             str(r["loadavg_before"])] for r in serving["end_to_end"]]
    out += [fmt_table(["input", "threads", "rows/s (wall)", "rows per CPU-s", "wall s", "load avg before"], rows), ""]
    for stage in serving.get("stages", []):
        if stage.get("torchscript"):
            ts = stage["torchscript"]
            ours = [r["rows_per_cpu_s"] for r in ts["runs"] if r["predict"] != "torchscript"]
            old = [r["rows_per_cpu_s"] for r in ts["runs"] if r["predict"] == "torchscript"]
            out += [f"Side by side in one process (decode + lookup + model on the same {ts['rows']:,} rows, alternating): "
                    f"{min(ours):,.0f}–{max(ours):,.0f} rows per CPU-s, against {min(old):,.0f}–{max(old):,.0f} for the "
                    f"TorchScript predict of `{ts['rev']}` ({min(ours) / max(old):.1f}–{max(ours) / min(old):.1f}x).", ""]
    return out


def text_pieces_section(res: dict) -> list[str]:
    r = res["text_pieces"]
    b, a = r["before"], r["after"]
    return ["### TextPieces build: batched tokenizer calls + array fill (`bench_text_pieces.py`)", "",
            f"{r['values']:,} distinct GoodReads-shaped values (32-hex user ids, numeric book ids, titles) in one field, "
            f"MiniLM WordPiece tokenizer, best of {r['repeats']}; load average {r['loadavg_before']} before, "
            f"{r['loadavg_after']} after (shared machine: absolute times pessimistic, the ratio is one process's). "
            f"Before and after give identical matrices: {r['equal']}.", "",
            fmt_table(["stage", "before (s)", "after (s)", "speed-up"],
                      [[k, f"{b[k + '_s']:.2f}", f"{a[k + '_s']:.2f}", f"{b[k + '_s'] / max(a[k + '_s'], 1e-9):.1f}x"]
                       for k in ("tokenize", "fill", "total")]), ""]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results-dir", default=str(RESULTS_DIR))
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "benchmarks.md"))
    args = p.parse_args(argv)
    d = Path(args.results_dir)
    ids, data, plm, scale = (load(n, d) for n in ("id_models", "data", "plm", "scale"))
    recheck = load("id_models_recheck", d)
    serving = load("serving", d)
    any_res = next(r for r in (data, plm, scale, ids) if r)
    m = any_res["machine"]
    out = [
        "# Speed and scale benchmarks",
        "",
        "Everything below was measured on **cpu2**: " + f"{m['cpu_model']} ({', '.join(m.get('cpu_flags', [])) or 'AVX2/FMA'}), "
        f"{m['cpu_count']} vCPUs (AMD Zen 2, KVM), {m.get('memory_gib', m.get('memory_gb'))} GiB RAM, torch {m['torch']} (CPU wheel), "
        f"polars {m['polars']}, python {m['python']}. **No GPU was available to this session**: every GPU number is a "
        "**PROJECTION** from FLOP counts and the H100 spec sheet, never a measurement.",
        "",
        "**The machine was shared** with other workers (4 other sessions' jobs) during all measurements (load averages below, 2 cores). Torch ran with "
        "1 thread (the matmul microbenchmark also at 2). Wall-clock rates are therefore pessimistic and noisy; the tables also give "
        "rates per CPU-second of the benchmark process (what one core does while it is scheduled), and the side-by-side ratios "
        "come from one process, alternating the contenders.",
        "",
        "| benchmark | date | runtime | load average 1/5/15 min (start → end) | sharing | command |",
        "|---|---|---|---|---|---|",
    ]
    for name, res in (("bench_data.py", data), ("bench_plm.py", plm), ("bench_scale.py", scale), ("bench_id_models.py", ids),
                      ("bench_id_models.py (re-check)", recheck), ("bench_serving.py", serving)):
        if res:
            out.append(machine_line(res, name))
    out += ["", "Full tables: `results/benchmarks/{data,plm,scale,id_models}.md`" + (", `serving.md`" if serving else "") + "; every number with its settings in the `.json` next to them.", ""]

    # ---------------------------------------------------------------- headline numbers
    out += ["## Headline numbers", ""]
    rows = []
    if data:
        pre = {r["dataset"]: r for r in data.get("preprocess", [])}
        if "ml1m" in pre:
            r = pre["ml1m"]
            rows.append(["ML-1M preprocessing (cold build, 739,012 rows)", f"{r['cold_build_s']:.2f} s wall ({r['cold_build_cpu_s']:.2f} CPU-s), peak RSS {r['vm_hwm_mib']:.0f} MiB (after imports {r['vm_hwm_after_imports_mib']:.0f})", "bench_data"])
        for r in data["datamodule"]:
            rows.append([f"datamodule alone, {r['kind']}, batch {r['batch']}", f"{r['batches_per_s']:.1f} batches/s = {r['samples_per_s']:,.0f} samples/s ({r['samples_per_cpu_s']:,.0f} per CPU-s)", "bench_data"])
        for r in data["side_by_side"]:
            if r["pipeline"] != "ours":
                rows.append([f"**ratio: our text pipeline / {PIPELINES[r['pipeline']]}**, batch {r['batch']}", f"**{r['ours_over_this']:.1f}x** wall ({r['ours_over_this_cpu']:.1f}x per CPU-s)", "bench_data"])
    if ids:
        for t in id_throughput(ids):
            if t["model"] == "ours":
                rows.append([f"DCNv2 (flip_ctr) training, batch {t['batch']}", f"{t['e2e']:,.0f} samples/s end to end ({t['e2e_cpu']:,.0f} per CPU-s)", "bench_id_models"])
        rc = {(t["model"], t["batch"]): t for t in id_throughput(recheck)} if recheck else {}
        for t in id_throughput(ids):
            if t["model"] in ("dcnmix", "dcn_matrix"):
                again = rc.get((t["model"], t["batch"]))
                extra = (f"; re-check in this session: {again['ours_over_e2e']:.2f}x end to end ({again['ours_over_e2e_cpu']:.2f}x per CPU-s)"
                         if again else "")
                rows.append([f"**ratio: flip_ctr DCNv2 / {t['label']}**, batch {t['batch']}",
                             f"**{t['ours_over_e2e']:.2f}x** end to end ({t['ours_over_e2e_cpu']:.2f}x per CPU-s), {t['ours_over_compute']:.2f}x compute only{extra}",
                             "bench_id_models"])
        for e in id_epochs(ids):
            if e["model"] in ("dcnmix", "dcn_matrix"):
                rows.append([f"ratio: 1 ML-1M epoch, flip_ctr DCNv2 / {e['label']} (batch {e['batch_size']})",
                             f"{e['ours_over_speed']:.2f}x (test AUC {e['ours_auc']:.4f} vs {e['test_auc']:.4f})", "bench_id_models"])
    if plm:
        pr = plm["projection"]
        rows.append(["FLOPs per pretraining sample (MiniLM-L6 full, ML-1M, L≈%.0f, [text; masked text] x fwd+bwd)" % pr["length_pretrain"],
                     f"{pr['pretrain_per_sample']['train'] / 1e9:.2f} GFLOP ({pr['pretrain_per_sample_L128']['train'] / 1e9:.2f} at L=128)", "bench_plm"])
        rows.append(["FLOPs per finetuning sample (FLIP joint)", f"{pr['finetune_per_sample']['train'] / 1e9:.2f} GFLOP", "bench_plm"])
        rows.append(["achievable fp32 matmul, 1 core", f"{plm['cpu_achievable_gflops']:.1f} GFLOP/s", "bench_plm"])
        best6 = [r for r in plm["steps"] if r["keep_layers"] == 6 and r["stage"] == "pretrain" and r["length_kind"] == "natural"]
        if best6:
            b = max(best6, key=lambda r: r["samples_per_cpu_s"])
            rows.append([f"CPU pretraining, 6 layers, batch {b['batch']}, L={b['length']}",
                         f"{b['samples_per_s']:.2f} samples/s wall, {b['samples_per_cpu_s']:.2f} per CPU-s = {b['achieved_over_ceiling_cpu_s']:.0%} of the 1-core FLOP ceiling ({b['ceiling_samples_per_s']:.2f})", "bench_plm"])
        h = pr["h100"]["bf16"]["rows"]
        mfus = f"100% / {h[1]['mfu']:.0%} / {h[2]['mfu']:.0%} MFU"
        rows.append([f"**PROJECTION** H100 bf16: pretraining samples/s at {mfus}",
                     " / ".join(f"{r['pretrain_samples_per_s']:,.0f}" for r in h[:3]), "bench_plm"])
        rows.append(["**PROJECTION** ML-1M paper protocol (30 pretraining epochs + FLIP_PLM + FLIP finetuning) on one H100",
                     " / ".join(f"{r['total_hours'] * 60:.0f} min" for r in h[:3]) + f" at {mfus}", "bench_plm"])
    if scale:
        c = scale["large"]["child"]
        rows.append([f"**{c['rows'] / 1e6:.0f}M-row synthetic GoodReads-shaped table → artifact** ({c['rows']:,} rows, 15 fields, {c['num_features']:,} features)",
                     f"**{c['seconds']:.0f} s** wall, **peak RSS {scale['large']['peak_tree_rss_mib'] / 1024:.2f} GiB** (process tree; VmHWM {c['vm_hwm_mib'] / 1024:.2f} GiB)", "bench_scale"])
    if serving:
        rows += serving_headlines(serving)
    out += [fmt_table(["what", "value", "from"], rows), ""]

    # ---------------------------------------------------------------- sections
    if data:
        out += ["## 1. Data pipeline (ML-1M)", ""]
        out += [fmt_table(["dataset", "rows", "cold build s", "CPU-s", "peak RSS MiB (VmHWM)", "warm prepare_data + setup ms"],
                          [[r["dataset"], f"{r['rows']:,}", f"{r['cold_build_s']:.2f}", f"{r['cold_build_cpu_s']:.2f}", f"{r['vm_hwm_mib']:.0f}",
                            f"{(r['warm_prepare_data_s'] + r['warm_setup_s']) * 1e3:.0f}"] for r in data.get("preprocess", [])]), ""]
        out += ["Datamodule alone (`dm.train_dataloader()`, shuffled fit split, `num_workers=0`, 1 thread):", "",
                fmt_table(["batch kind", "batch", "batches/s", "samples/s", "samples/CPU-s", "mean padded length"],
                          [[r["kind"], r["batch"], f"{r['batches_per_s']:.1f}", f"{r['samples_per_s']:,.0f}", f"{r['samples_per_cpu_s']:,.0f}",
                            f"{r['mean_padded_length']:.1f}" if r.get("mean_padded_length") else "-"] for r in data["datamodule"]]), ""]
        tp = data["text_pieces"]
        out += ["### Side by side: text pipeline vs per-sample tokenization", "",
                "Same process, same rows (ML-1M fit split, shuffled), alternating repeats, median. `ours` = every distinct value tokenized "
                f"once at setup ({tp['distinct_values']:,} values, {tp['setup_s_incl_text_pieces']:.1f} s incl. the artifact) and batches "
                "assembled with tensor ops, including the token → field map field-level masking needs. Per-sample tokenization = the "
                "reference implementation's pattern: the sentence is rendered at init (here "
                f"{tp['baseline_render_s']:.0f} s for {tp['fit_rows']:,} rows), `__getitem__` calls the tokenizer on it, the collate pads with "
                "`tokenizer.pad` (to the longest sequence of the batch, giving the same shapes as ours; the reference pads to a fixed "
                "max length). Batched tokenization = one tokenizer call per batch in the collate function (stronger than the reference). Ids identical "
                f"to ours: {data['ids_identical']}.", "",
                fmt_table(["pipeline", "batch", "samples/s", "samples/CPU-s", "ours / this (wall)", "ours / this (CPU-s)"],
                          [[PIPELINES[r["pipeline"]], r["batch"], f"{r['samples_per_s']:,.0f}", f"{r['samples_per_cpu_s']:,.0f}", f"**{r['ours_over_this']:.1f}x**",
                            f"{r['ours_over_this_cpu']:.1f}x"] for r in data["side_by_side"]]), ""]
    if ids:
        out += ["## 2. ID-model training: flip_ctr DCNv2 vs deepctr-torch", "",
                f"From `results/benchmarks/id_models.md` ({ids['date']}, `{ids['command']}`, load {ids['machine']['loadavg_start']} → "
                f"{ids['machine'].get('loadavg_end')}): same artifact and feature ids, embedding 32, DNN (300, 300, 128), 3 cross layers, Adam 1e-3, 1 thread.", "",
                fmt_table(["model", "batch", "e2e samples/s", "compute samples/s", "e2e samples/CPU-s", "ours / this e2e", "ours / this compute"],
                          [[t["label"], t["batch"], f"{t['e2e']:,.0f}", f"{t['compute']:,.0f}", f"{t['e2e_cpu']:,.0f}", f"**{t['ours_over_e2e']:.2f}**",
                            f"{t['ours_over_compute']:.2f}"] for t in id_throughput(ids)]), ""]
        if recheck:
            rc = {(t["model"], t["batch"]): t for t in id_throughput(recheck)}
            out += [f"Re-measured in this session (throughput only, `{recheck['command']}`, {recheck['date']}, load "
                    f"{recheck['machine']['loadavg_start']} → {recheck['machine'].get('loadavg_end')}):", "",
                    fmt_table(["model", "batch", "e2e samples/s", "e2e samples/CPU-s", "ours / this e2e (re-check)", "ours / this per CPU-s (re-check)",
                               "ours / this e2e (first run)"],
                              [[t["label"], t["batch"], f"{t['e2e']:,.0f}", f"{t['e2e_cpu']:,.0f}", f"**{t['ours_over_e2e']:.2f}**", f"{t['ours_over_e2e_cpu']:.2f}",
                                next((f"{o['ours_over_e2e']:.2f}" for o in id_throughput(ids) if (o["model"], o["batch"]) == k), "-")]
                               for k, t in rc.items()]),
                    "", "The re-check ran at a load average of 8-11 on 2 cores (wall-clock ratios swing with it; the per-CPU-second "
                    "ratios agree better with the first run). DeepCTR's `DCN(matrix)` at batch 4096 is the one peer that comes close "
                    "(its compute-only rate was above ours in the first run).", ""]
        if ids.get("epoch"):
            out += [fmt_table(["model (1 epoch on the fit split)", "batch", "epoch s", "samples/s", "ours / this", "test AUC", "test logloss"],
                              [[e["label"], e["batch_size"], f"{e['wall_s']:.1f}", f"{e['samples_per_s']:,.0f}", f"{e['ours_over_speed']:.2f}",
                                f"{e['test_auc']:.4f}", f"{e['test_logloss']:.4f}"] for e in id_epochs(ids)]), ""]
    if plm:
        pr = plm["projection"]
        out += ["## 3. PLM pretraining / finetuning on CPU, and the FLOP limit", "",
                "Real ML-1M batches, all-MiniLM-L6-v2 (first `k` layers) + DCNv2, `AlignmentPretrainModule.compute_losses` + backward + "
                f"AdamW (pretraining) and FLIP joint finetuning + Adam; {plm['args']['warmup']} warm-up + {plm['args']['steps']} timed steps per row, "
                "1 thread. GFLOP/sample from the analytic model (`benchmarks/flops.py`), which matches `torch.utils.flop_counter` "
                f"to {max(abs(c['analytic_over_counted'] - 1) for c in plm['flop_checks']):.1%} on the real modules. Ceiling = "
                f"{plm['cpu_achievable_gflops']:.1f} GFLOP/s (best encoder-shaped fp32 GEMM, 1 core) / GFLOP per sample.", "",
                fmt_table(["stage", "k", "batch", "length", "samples/s", "samples/CPU-s", "GFLOP/sample", "ceiling samples/s", "achieved / ceiling (CPU-s)"],
                          [[r["stage"], r["keep_layers"], r["batch"], f"{r['length']} ({r['length_kind']})", f"{r['samples_per_s']:.2f}", f"{r['samples_per_cpu_s']:.2f}",
                            f"{r['flops_per_sample'] / 1e9:.2f}", f"{r['ceiling_samples_per_s']:.2f}", f"{r['achieved_over_ceiling_cpu_s']:.0%}"] for r in plm["steps"]]), ""]
        pre, ft = pr["pretrain_per_sample"], pr["finetune_per_sample"]
        out += ["### FLOPs per sample (configured protocol: MiniLM-L6, 6 layers, ML-1M, max_length 128 with dynamic padding)", "",
                fmt_table(["term", "GFLOP per sample"],
                          [["encoder forward, one sequence of L=%.1f (dense %.3f + attention %.3f)" % (pr["length_pretrain"], pr["encoder_forward_L"]["dense"] / 1e9, pr["encoder_forward_L"]["attention"] / 1e9),
                            f"{pr['encoder_forward_L']['total'] / 1e9:.3f}"],
                           ["pretraining forward: PLM on [text; masked text] (2 sequences)", f"{pre['plm_forward'] / 1e9:.3f}"],
                           [f"+ MLM head ({pr['masked_tokens_per_sample']:.2f} masked tokens) + MTM + ICL + ID model x2",
                            f"{(pre['mlm_forward'] + pre['mtm_forward'] + pre['icl_forward'] + pre['id_forward']) / 1e9:.3f}"],
                           ["**pretraining train step (x3 for forward + backward)**", f"**{pre['train'] / 1e9:.2f}**"],
                           ["pretraining at the cap L=128", f"{pr['pretrain_per_sample_L128']['train'] / 1e9:.2f}"],
                           ["finetuning train step (FLIP joint, L=%.1f)" % pr["length_finetune"], f"{ft['train'] / 1e9:.2f}"]]), ""]
        proto = pr["protocol"]
        out += ["### PROJECTION: the ML-1M paper protocol on one H100 (not measured: no GPU in this session)", "",
                f"Protocol: pretraining 30 epochs x {proto['fit_rows']:,} rows at batch 1024 (+ validation each epoch), FLIP_PLM and FLIP "
                f"finetuning 3 epochs each at batch 256 (+ validation, + test) = {proto['total_flops'] / 1e15:.0f} PFLOP. "
                "H100 SXM dense peak: 989 TFLOP/s bf16 (`trainer=gpu` uses bf16 autocast), 494 TFLOP/s TF32. 100% MFU is the hard "
                "ceiling; 40% and 20% are assumptions for a small (H=384, ~70-token) encoder.", "",
                fmt_table(["precision", "MFU (assumed)", "pretraining samples/s", "finetuning samples/s", "protocol wall time"],
                          [[prec, f"{r['mfu']:.0%}", f"{r['pretrain_samples_per_s']:,.0f}", f"{r['finetune_samples_per_s']:,.0f}",
                            f"**{r['total_hours'] * 60:.0f} min** (PROJECTION)"] for prec in ("bf16", "tf32") for r in pr["h100"][prec]["rows"]]), ""]
        if "cpu_one_core" in pr:
            c = pr["cpu_one_core"]
            out += [f"The same protocol on this CPU at the measured {c['achieved_gflops']:.0f} GFLOP per CPU-second: about "
                    f"**{c['total_days']:.0f} core-days** ({c['ceiling_total_days']:.0f} at the matmul ceiling) — why `scale=cpu` keeps "
                    "its first PLM layer, a frozen PLM during pretraining and a share of an epoch per PLM stage (conf/scale/cpu.yaml).", ""]
        ld = pr["loader"]
        out += [f"Input pipeline vs the projection: at {plm['args']['mfu'][0]:.0%} MFU the H100 would consume "
                f"{ld['h100_pretrain_samples_per_s_at_first_mfu']:,.0f} pretraining samples/s; our text datamodule assembles "
                f"{ld['text_loader_samples_per_cpu_s']:,.0f} samples per CPU-second at batch 1024, so ~{max(1, round(ld['loader_cores_needed'] + 0.49))} "
                "loader worker(s) keep it fed. The per-sample tokenization baseline (section 1) would need "
                + (f"~{ld['h100_pretrain_samples_per_s_at_first_mfu'] / next(r['samples_per_cpu_s'] for r in data['side_by_side'] if r['pipeline'] == 'per-sample' and r['batch'] == max(x['batch'] for x in data['side_by_side'])):.0f} cores."
                   if data else "many cores."), ""]
    if scale:
        c = scale["large"]["child"]
        L = scale["large"]
        out += [f"## 4. Scale: {c['rows'] / 1e6:.0f}M-row synthetic GoodReads-shaped table", "",
                f"`flip_ctr.data.synthetic.generate` → Parquet ({scale['table_bytes'] / 2**30:.2f} GiB, zstd, 1M-row row groups): "
                f"{c['rows']:,} rows, 15 fields (user id as 32-hex strings, book id, title, author, publisher, ... as in the GoodReads loader), "
                "power-law user/book popularity, a timestamp and a label. `flip_ctr.data.preprocess_large.preprocess_large` (polars "
                "streaming scans, one column at a time; id-encoded output written into a memory-mapped `value_ids.npy`) → the same artifact "
                "format as `preprocess.py` (chronological 90/10 split + 10% validation, per-field vocabularies with an OOV slot, training-part "
                "frequencies; equivalence with `build_artifact` is tested in `tests/test_synthetic.py`).", "",
                fmt_table(["what", "value"], [
                    ["rows fit / val / test", f"{c['num_fit']:,} / {c['num_val']:,} / {c['num_test']:,}"],
                    ["features (ID vocabularies: values seen in training + one OOV slot per field)", f"{c['num_features']:,}"]]
                    + ([["distinct values incl. test-only ones (text side)", f"{scale['text']['child']['distinct_values']:,}"]] if scale.get("text") else []) + [
                    ["**preprocessing wall time**", f"**{c['seconds']:.0f} s** (keys + sort {c['phases']['keys_and_order_s']:.0f} s, vocabularies "
                     f"{c['phases']['vocabulary_s']:.0f} s, encoding {c['phases']['encode_s']:.0f} s, write {c['phases']['write_s']:.0f} s); "
                     f"{L['child_cpu_s']:.0f} CPU-s"],
                    ["**peak RSS**", f"**{L['peak_tree_rss_mib'] / 1024:.2f} GiB** (process tree, sampled every 50 ms); VmHWM {c['vm_hwm_mib'] / 1024:.2f} GiB"],
                    ["artifact", f"{c['artifact_bytes'] / 2**30:.2f} GiB; read back with digest check in {c['read_artifact_verify_s']:.1f} s"],
                    ["load average before → after", f"{L['loadavg_before']} → {L['loadavg_after']}"],
                ]), ""]
        if scale.get("generate"):
            g = scale["generate"]
            out += [f"Generating the table took {g['child']['seconds']:.0f} s (peak RSS {g['peak_tree_rss_mib'] / 1024:.2f} GiB).", ""]
        if scale.get("compare"):
            cm = scale["compare"]
            out += [f"In-memory (`load_table` + `build_artifact` + `write_artifact`) vs streaming on {cm['rows']:,} rows of the same shape "
                    f"(identical artifacts: {cm['identical']}):", "",
                    fmt_table(["path", "build s", "peak RSS MiB (VmHWM)"],
                              [["in-memory (preprocess.py)", f"{cm['inmemory']['child']['seconds']:.1f}", f"{cm['inmemory']['child']['vm_hwm_mib']:.0f}"],
                               ["streaming (preprocess_large.py)", f"{cm['large']['child']['seconds']:.1f}", f"{cm['large']['child']['vm_hwm_mib']:.0f}"]]), "",
                    f"The in-memory path holds every field as a string column (and a sorted copy); its peak grows with the row count. "
                    f"Linear EXTRAPOLATION (not run) to {c['rows']:,} rows: up to ~{(cm['inmemory']['child']['vm_hwm_mib'] * c['rows'] / cm['rows']) / 1024:.0f} GiB "
                    "— not attempted on a 24 GiB machine shared with other jobs.", ""]
        if scale.get("text"):
            t = scale["text"]["child"]
            out += [f"Text side at this scale: `TextPieces` tokenizes the {t['distinct_values']:,} distinct values once in "
                    f"{t['text_pieces_build_s']:.0f} s ({t['piece_tensors_mib']:.0f} MiB of piece tensors; peak RSS "
                    f"{scale['text']['peak_tree_rss_mib'] / 1024:.2f} GiB with the artifact), then assembles "
                    f"{t['assemble_samples_per_s']:,.0f} samples/s at batch 1024 (15 fields, mean padded length {t['mean_padded_length']:.0f} tokens). "
                    "The one-off `TextPieces` build (a Python loop over the values of each field in `data/text.py`) is the slowest step at "
                    "this scale and the memory peak; vectorising it is a follow-up.", ""]
    text_pieces = load("text_pieces", d)
    if text_pieces:
        out += text_pieces_section(text_pieces)
    if serving:
        out += serving_section(serving)
    out += ["## Reproduce", "", "```bash",
            ".venv/bin/python benchmarks/bench_data.py        # preprocessing, datamodule, text pipeline side by side (~5 min)",
            ".venv/bin/python benchmarks/bench_plm.py         # matmul, PLM steps, FLOP limit, H100 projection (< 10 min)",
            ".venv/bin/python benchmarks/bench_scale.py --text   # 20M-row synthetic table + streaming preprocessing (~20 min)",
            ".venv/bin/python benchmarks/bench_id_models.py   # DCNv2 vs deepctr-torch (~12 min; needs deepctr-torch)",
            ".venv/bin/python benchmarks/bench_serving.py     # flip-ctr predict on 1M ML-1M raw rows, ONNX (~5 min; serving extra)",
            ".venv/bin/python benchmarks/write_report.py      # this file", "```", ""]
    Path(args.out).write_text("\n".join(out))
    print("\n".join(out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
