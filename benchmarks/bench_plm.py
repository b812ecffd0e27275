#!/usr/bin/env python
"""Benchmark: PLM pretraining / finetuning samples/s on CPU, the FLOP-based limit, and an H100
PROJECTION of the paper protocol. Not a test: it writes ``results/benchmarks/plm.{json,md}``.

1. **Matmul microbenchmark**: fp32 ``torch.matmul`` GFLOP/s on this CPU (square and the
   encoder's GEMM shapes) at 1 thread (and ``--matmul-threads``): the achievable compute rate.
2. **FLOPs per sample**: the analytic model of ``benchmarks/flops.py`` (encoder + the stacked
   [text; masked text] double pass of ``stages/pretrain.py`` + heads + ID model, x3 for
   forward + backward), at the ML-1M sequence length measured from the datamodule, checked
   against ``torch.utils.flop_counter.FlopCounterMode`` on a real training step.
3. **Timed training steps** (real ML-1M batches, all-MiniLM-L6-v2 with ``keep_layers`` 2 and 6,
   DCNv2 ID model): ``AlignmentPretrainModule.compute_losses`` + backward + AdamW step
   (pretraining) and FLIP joint finetuning (``FinetuneJointModule``: fused/ID/PLM BCE + Adam),
   at several batch sizes and sequence lengths (a batch is cut or right-padded to the length:
   every position costs the same in a BERT encoder), ``--warmup`` untimed + ``--steps`` timed steps.
4. **Limit**: ceiling samples/s = achievable GFLOP/s / FLOPs per sample; achieved / ceiling.
5. **PROJECTION (no GPU measured)**: ceiling and assumed-MFU samples/s on one H100
   (989 TFLOP/s dense bf16, spec sheet) and the wall time of the paper protocol on ML-1M.

    python benchmarks/bench_plm.py          # ~5-8 min on 2 busy cores at 1 thread
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import busy_processes, command_line, finish_run, fmt_table, header_lines, loadavg, machine_info, now, write_results  # noqa: E402
from flops import EncoderShape, encoder_forward, finetune_per_sample, pretrain_per_sample  # noqa: E402

H100_BF16_DENSE = 989e12  # FLOP/s, NVIDIA H100 SXM spec sheet, dense (no sparsity)
H100_TF32_DENSE = 494e12

# (stage, keep_layers, batch, length or None = natural dynamic padding)
DEFAULT_GRID = [
    ("pretrain", 2, 16, None), ("pretrain", 2, 64, None), ("pretrain", 2, 16, 32), ("pretrain", 2, 16, 128), ("pretrain", 2, 16, 256),
    ("pretrain", 6, 8, None), ("pretrain", 6, 32, None), ("pretrain", 6, 8, 32), ("pretrain", 6, 8, 128), ("pretrain", 6, 8, 256),
    ("finetune", 2, 16, None), ("finetune", 2, 64, None), ("finetune", 2, 16, 256),
    ("finetune", 6, 8, None), ("finetune", 6, 32, None), ("finetune", 6, 8, 256),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--matmul-threads", type=int, nargs="+", default=[1, 2], help="thread counts of the matmul microbenchmark")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a tiny grid (smoke check)")
    p.add_argument("--mfu", type=float, nargs="+", default=[0.4, 0.2], help="assumed H100 model-FLOP utilisations for the projection")
    p.add_argument("--out-name", default="plm")
    p.add_argument("--out-dir", default=None)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
def matmul_bench(threads: int, reps: int = 10) -> list[dict]:
    """GFLOP/s per shape: best and median over ``reps`` by wall time, and best by this process's
    CPU time (at 1 thread: the rate of the core while it is scheduled, immune to time slices
    taken by other jobs on the shared machine)."""
    import torch

    torch.set_num_threads(threads)
    shapes = [("square 1024", 1024, 1024, 1024), ("square 2048", 2048, 2048, 2048),
              ("QKV/out proj [4096x384]x[384x384]", 4096, 384, 384),
              ("FFN up [4096x384]x[384x1536]", 4096, 384, 1536), ("FFN down [4096x1536]x[1536x384]", 4096, 1536, 384)]
    out = []
    for name, m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        c = torch.empty(m, n)
        torch.matmul(a, b, out=c)
        walls, cpus = [], []
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            torch.matmul(a, b, out=c)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        flops = 2 * m * k * n
        out.append({"shape": name, "threads": threads, "gflops_best": flops / min(walls) / 1e9,
                    "gflops_median": flops / statistics.median(walls) / 1e9,
                    "gflops_per_cpu_s_best": flops / max(min(cpus), 1e-9) / 1e9, "loadavg": loadavg()})
    return out


def resize(batch: dict, length: int | None, pad_id: int) -> dict:
    """Cut or right-pad a text batch to ``length`` positions (padding: [PAD], mask 0, field -1)."""
    import torch

    if length is None:
        return batch
    cur = batch["input_ids"].shape[1]
    out = dict(batch)
    if length <= cur:
        for k in ("input_ids", "attention_mask", "token_field_ids", "value_token_mask"):
            out[k] = batch[k][:, :length].contiguous()
        return out
    extra = length - cur
    B = batch["input_ids"].shape[0]
    fill = {"input_ids": pad_id, "attention_mask": 0, "token_field_ids": -1, "value_token_mask": False}
    for k, v in fill.items():
        out[k] = torch.cat([batch[k], torch.full((B, extra), v, dtype=batch[k].dtype)], 1)
    return out


class Runner:
    """Builds the pretraining and finetuning modules for one keep_layers and times steps."""

    def __init__(self, keep_layers: int, dm) -> None:
        import torch

        from flip_ctr.models.id import build_id_model
        from flip_ctr.models.plm import PLMEncoder
        from flip_ctr.stages.finetune import FinetuneJointModule
        from flip_ctr.stages.pretrain import AlignmentPretrainModule

        torch.manual_seed(0)
        a = dm.artifact
        plm = PLMEncoder.from_pretrained("minilm_l6", keep_layers=keep_layers)
        self.enc = EncoderShape.from_config(plm.config, layers=plm.num_layers)
        id_model = build_id_model("dcnv2", num_features=dm.num_features, num_fields=dm.num_fields)
        self.id_dim, self.num_fields = id_model.representation_dim, id_model.num_fields
        self.pre = AlignmentPretrainModule(
            copy.deepcopy(id_model), copy.deepcopy(plm), torch.as_tensor(a.feature_frequencies, dtype=torch.float), a.space.field_offsets,
            lr=5e-5, id_lr=1e-3,
        ).train()
        self.ft = FinetuneJointModule(id_model, plm).train()
        # AdamW groups as AlignmentPretrainModule.configure_optimizers (no trainer here)
        groups: dict = {}
        for name, p in self.pre.named_parameters():
            is_plm, no_decay = name.startswith("plm."), p.ndim < 2 or "norm" in name.lower()
            groups.setdefault((is_plm, no_decay), []).append(p)
        self.pre_opt = torch.optim.AdamW([{"params": ps, "lr": 5e-5 if plm_ else 1e-3, "weight_decay": 0.0 if nd else 0.01}
                                          for (plm_, nd), ps in groups.items()])
        self.ft_opt = self.ft.configure_optimizers()
        self.step_no = 0

    def id_forward_flops(self, batch) -> float:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        fc = FlopCounterMode(display=False)
        with fc, torch.no_grad():
            self.ft.id_model(batch["feature_ids"])
        return fc.get_total_flops() / batch["feature_ids"].shape[0]

    def step(self, stage: str, batch: dict) -> None:
        import torch

        self.step_no += 1
        if stage == "pretrain":
            loss = self.pre.compute_losses(batch, torch.Generator().manual_seed(self.step_no))["loss"]
            opt = self.pre_opt
        else:
            fused, id_logit, plm_logit = self.ft.logits(batch)
            y = batch["labels"]
            loss = self.ft.bce(fused, y) + self.ft.bce(id_logit, y) + self.ft.bce(plm_logit, y)
            opt = self.ft_opt
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def counted_flops(self, stage: str, batch: dict) -> float:
        """FlopCounterMode total of one forward + backward, per sample."""
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        fc = FlopCounterMode(display=False)
        with fc:
            if stage == "pretrain":
                loss = self.pre.compute_losses(batch, torch.Generator().manual_seed(0))["loss"]
            else:
                fused, id_logit, plm_logit = self.ft.logits(batch)
                loss = self.ft.bce(fused, batch["labels"]) + self.ft.bce(id_logit, batch["labels"]) + self.ft.bce(plm_logit, batch["labels"])
            loss.backward()
        self.pre.zero_grad(set_to_none=True)
        self.ft.zero_grad(set_to_none=True)
        return fc.get_total_flops() / batch["input_ids"].shape[0]

    def mask_stats(self, batch: dict) -> tuple[float, float]:
        import torch

        masks = self.pre.make_masks(batch, torch.Generator().manual_seed(0))
        return float(masks["text_mask"].sum(1).float().mean()), float(masks["tab_fields"].sum(1).float().mean())

    def analytic(self, stage: str, batch: dict, id_fwd: float) -> dict:
        L = batch["input_ids"].shape[1]
        if stage == "pretrain":
            m, f = self.mask_stats(batch)
            return pretrain_per_sample(self.enc, L, m, f, id_fwd, self.id_dim, self.num_fields, batch["input_ids"].shape[0])
        return finetune_per_sample(self.enc, L, id_fwd)


def main(argv=None) -> None:
    args = parse_args(argv)
    t_start = time.perf_counter()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import numpy as np
    import torch

    def log(msg):
        print(msg, flush=True)

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    machine = machine_info()
    machine["busy_processes_start"] = busy_processes()
    log(f"machine: load {machine['loadavg_start']}, busy {[p['cmdline'][:50] for p in machine['busy_processes_start']]}")
    res: dict = {"command": command_line(), "date": now(), "args": vars(args), "machine": machine}

    log("[1/5] matmul microbenchmark")
    mm = []
    for th in args.matmul_threads:
        mm += matmul_bench(th)
    torch.set_num_threads(args.threads)
    res["matmul"] = mm
    for r in mm:
        log(f"  {r['threads']} thr {r['shape']}: best {r['gflops_best']:.1f} GFLOP/s, median {r['gflops_median']:.1f}, "
            f"per CPU-s {r['gflops_per_cpu_s_best']:.1f}")
    # the ceiling: the best encoder-shaped GEMM at the benchmark's thread count; per CPU-second
    # at 1 thread (wall time on a shared machine includes other jobs' time slices)
    enc_shapes = [r for r in mm if r["threads"] == args.threads and not r["shape"].startswith("square")]
    key = "gflops_per_cpu_s_best" if args.threads == 1 else "gflops_best"
    cpu_gflops = max(r[key] for r in enc_shapes)
    res["cpu_achievable_gflops"] = cpu_gflops

    log("[2/5] data: ML-1M text batches, sequence lengths")
    from flip_ctr.data.datamodule import CTRDataModule
    from flip_ctr.models.plm import load_tokenizer

    tok = load_tokenizer("minilm_l6")
    dm = CTRDataModule("ml1m", data_subdir="ml-1m", tokenizer=tok, max_length=128)
    dm.prepare_data()
    dm.setup()
    torch.manual_seed(0)
    lengths = {}
    for bs in (1024, 256):
        dm.batch_size = bs
        it = iter(dm.train_dataloader())
        lengths[bs] = float(np.mean([next(it)["input_ids"].shape[1] for _ in range(30)]))
    res["mean_padded_length"] = {str(k): v for k, v in lengths.items()}
    dm.batch_size = 1024
    loader = dm.train_dataloader()
    big = next(iter(loader))
    t0, c0, n = time.perf_counter(), time.process_time(), 0
    for i, b in enumerate(loader):
        n += len(b["labels"])
        if i >= 15:
            break
    res["text_loader_1024"] = {"samples_per_s": n / (time.perf_counter() - t0), "samples_per_cpu_s": n / (time.process_time() - c0)}
    log(f"  mean padded length: batch 1024 {lengths[1024]:.1f}, batch 256 {lengths[256]:.1f}; text loader "
        f"{res['text_loader_1024']['samples_per_cpu_s']:,.0f} samples/CPU-s")
    pad_id = tok.pad_token_id

    grid = [g for g in DEFAULT_GRID if not args.quick or (g[2] <= 16 and g[3] in (None, 256) and g[1] == 2)]
    rows, flop_checks, runners_info = [], [], {}
    log("[3/5] timed training steps")
    for k in sorted({g[1] for g in grid}):
        runner = Runner(k, dm)
        id_fwd = runner.id_forward_flops(big)
        runners_info[k] = {"encoder": vars(runner.enc), "id_forward_flops_per_sample": id_fwd, "id_dim": runner.id_dim}
        # FlopCounterMode check on a small natural batch
        small = {key: v[:8] if torch.is_tensor(v) else v for key, v in big.items()}
        small = resize(small, int(small["attention_mask"].sum(1).max()), pad_id)
        for stage in ("pretrain", "finetune"):
            counted = runner.counted_flops(stage, small)
            analytic = runner.analytic(stage, small, id_fwd)["train"]
            flop_checks.append({"stage": stage, "keep_layers": k, "batch": 8, "length": small["input_ids"].shape[1],
                                "counted_per_sample": counted, "analytic_per_sample": analytic, "analytic_over_counted": analytic / counted})
            log(f"  k={k} {stage}: analytic {analytic / 1e9:.2f} vs FlopCounterMode {counted / 1e9:.2f} GFLOP/sample")
        for stage, kk, bs, length in grid:
            if kk != k:
                continue
            g = torch.Generator().manual_seed(bs)
            rows_idx = torch.randperm(big["input_ids"].shape[0], generator=g)[:bs]
            batch = {key: v[rows_idx] if torch.is_tensor(v) and v.shape[:1] == big["input_ids"].shape[:1] else v for key, v in big.items()}
            nat = int(batch["attention_mask"].sum(1).max())
            batch = resize(batch, nat, pad_id)  # dynamic padding of this batch, as the collate would do
            batch = resize(batch, length, pad_id)
            L = batch["input_ids"].shape[1]
            for _ in range(args.warmup):
                runner.step(stage, batch)
            la = loadavg()
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                runner.step(stage, batch)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            fl = runner.analytic(stage, batch, id_fwd)
            r = {"stage": stage, "keep_layers": k, "batch": bs, "length": L, "length_kind": "natural" if length is None else "set",
                 "steps": args.steps, "wall_s": wall, "cpu_s": cpu, "samples_per_s": bs * args.steps / wall,
                 "samples_per_cpu_s": bs * args.steps / cpu, "flops_per_sample": fl["train"], "plm_share": fl["plm_share"],
                 "loadavg": la}
            r["achieved_gflops"] = r["samples_per_s"] * fl["train"] / 1e9
            r["achieved_gflops_per_cpu_s"] = r["samples_per_cpu_s"] * fl["train"] / 1e9
            r["ceiling_samples_per_s"] = cpu_gflops * 1e9 / fl["train"]
            r["achieved_over_ceiling"] = r["samples_per_s"] / r["ceiling_samples_per_s"]
            r["achieved_over_ceiling_cpu_s"] = r["samples_per_cpu_s"] / r["ceiling_samples_per_s"]
            rows.append(r)
            log(f"  {stage} k={k} B={bs} L={L}: {r['samples_per_s']:.2f} samples/s ({r['samples_per_cpu_s']:.2f}/CPU-s), "
                f"{fl['train'] / 1e9:.2f} GFLOP/sample, {r['achieved_over_ceiling_cpu_s']:.0%} of ceiling per CPU-s, load {la[0]}")
        del runner
    res["steps"], res["flop_checks"], res["models"] = rows, flop_checks, {str(k): v for k, v in runners_info.items()}

    log("[4/5] FLOPs per sample for the configured protocol + [5/5] H100 PROJECTION")
    res["projection"] = projection(res, dm, args)
    finish_run(res, t_start, markdown, args)


def projection(res: dict, dm, args) -> dict:
    """FLOPs per sample at the paper protocol (full 6-layer MiniLM, ML-1M) and the PROJECTED
    H100 / measured-CPU wall time of the protocol."""
    a = dm.artifact
    enc = EncoderShape(**res["models"]["6"]["encoder"]) if "6" in res["models"] else EncoderShape()
    info = res["models"].get("6") or next(iter(res["models"].values()))
    id_fwd, id_dim = info["id_forward_flops_per_sample"], info["id_dim"]
    L_pre, L_ft = res["mean_padded_length"]["1024"], res["mean_padded_length"]["256"]
    # masked tokens/fields per sample at the paper batch: from the measured steps' batches
    # (field-level masking of ~15% of 8 fields: 1 field per sample, its value tokens)
    m_tok = statistics.mean(_mask_stats(dm, 1024))
    m_fields = 1.0  # num_masked(8, 0.15) = max(1, floor(1.2 + 0.5)) = 1
    pre = pretrain_per_sample(enc, L_pre, m_tok, m_fields, id_fwd, id_dim, a.space.num_fields, 1024)
    pre128 = pretrain_per_sample(enc, 128, m_tok, m_fields, id_fwd, id_dim, a.space.num_fields, 1024)
    ft = finetune_per_sample(enc, L_ft, id_fwd)
    n_fit, n_val, n_test = a.num_fit, a.num_val, a.num_test
    # the paper protocol (conf/scale/paper.yaml + pipeline strategies): pretraining 30 epochs at
    # batch 1024 (+ a validation pass per epoch), FLIP_PLM and FLIP 3 epochs each at batch 256
    # (+ validation per epoch + one test pass); FLIP_ID / scratch: ID model only (negligible FLOPs)
    pre_flops = 30 * (n_fit * pre["train"] + n_val * pre["forward"])
    ft_flops = 2 * (3 * (n_fit * ft["train"] + n_val * ft["forward"]) + n_test * ft["forward"])
    total = pre_flops + ft_flops
    out = {
        "encoder": vars(enc), "length_pretrain": L_pre, "length_finetune": L_ft, "masked_tokens_per_sample": m_tok,
        "pretrain_per_sample": pre, "pretrain_per_sample_L128": pre128, "finetune_per_sample": ft,
        "encoder_forward_L": encoder_forward(enc, L_pre),
        "protocol": {"pretrain_epochs": 30, "pretrain_batch": 1024, "finetune_epochs_each": 3, "finetune_strategies_with_plm": 2,
                     "fit_rows": n_fit, "val_rows": n_val, "test_rows": n_test, "pretrain_flops": pre_flops, "finetune_flops": ft_flops,
                     "total_flops": total},
        "h100": {},
    }
    for label, peak in (("bf16", H100_BF16_DENSE), ("tf32", H100_TF32_DENSE)):
        rows = []
        for mfu in [1.0] + list(args.mfu):
            rate = peak * mfu
            rows.append({"mfu": mfu, "pretrain_samples_per_s": rate / pre["train"], "finetune_samples_per_s": rate / ft["train"],
                         "pretrain_hours": pre_flops / rate / 3600, "finetune_hours": ft_flops / rate / 3600, "total_hours": total / rate / 3600})
        out["h100"][label] = {"peak_flops": peak, "rows": rows}
    # measured CPU: the best per-CPU-second rate of the 6-layer pretraining steps
    cpu_rows = [r for r in res["steps"] if r["keep_layers"] == 6 and r["stage"] == "pretrain" and r["length_kind"] == "natural"]
    if cpu_rows:
        best = max(cpu_rows, key=lambda r: r["achieved_gflops_per_cpu_s"])
        rate = best["achieved_gflops_per_cpu_s"] * 1e9
        out["cpu_one_core"] = {"achieved_gflops": best["achieved_gflops_per_cpu_s"], "from_step": {k: best[k] for k in ("batch", "length")},
                               "total_days": total / rate / 86400, "pretrain_days": pre_flops / rate / 86400,
                               "ceiling_total_days": total / (res["cpu_achievable_gflops"] * 1e9) / 86400}
    loader = res["text_loader_1024"]["samples_per_cpu_s"]
    need = out["h100"]["bf16"]["rows"][1]["pretrain_samples_per_s"]
    out["loader"] = {"text_loader_samples_per_cpu_s": loader, "h100_pretrain_samples_per_s_at_first_mfu": need,
                     "loader_cores_needed": need / loader}
    return out


def _mask_stats(dm, bs: int) -> list[float]:
    import torch

    from flip_ctr.data import masking

    dm.batch_size = bs
    out = []
    g = torch.Generator().manual_seed(0)
    for i, b in enumerate(dm.train_dataloader()):
        fields = masking.choose_masked_fields(b["feature_ids"].shape[0], dm.num_fields, 0.15, g)
        out.append(float(masking.field_level_text_mask(b["token_field_ids"], b["value_token_mask"], fields).sum(1).float().mean()))
        if i >= 4:
            break
    return out


def markdown(res: dict) -> str:
    parts = header_lines("PLM pretraining / finetuning throughput, FLOP limit and H100 projection", res)
    parts += ["", "## Matmul microbenchmark (fp32, this CPU)", "",
              fmt_table(["shape", "threads", "best GFLOP/s (wall)", "median GFLOP/s (wall)", "best GFLOP per CPU-s", "load (1 min)"],
                        [[r["shape"], r["threads"], f"{r['gflops_best']:.1f}", f"{r['gflops_median']:.1f}", f"{r['gflops_per_cpu_s_best']:.1f}",
                          r["loadavg"][0]] for r in res["matmul"]]),
              "", f"Achievable rate used for the CPU ceiling: **{res['cpu_achievable_gflops']:.1f} GFLOP/s** "
              f"(best encoder-shaped GEMM at {res['args']['threads']} thread, per CPU-second: what one core does while it is scheduled). "
              "For reference, the vCPUs are AMD Zen 2 (family 23, model 49: EPYC Rome; TSC 2.25 GHz): two 256-bit FMA pipes = "
              "32 fp32 FLOP/cycle, i.e. 72 GFLOP/s per core at 2.25 GHz and ~106 at a 3.3 GHz boost (theoretical peak)."]
    parts += ["", "## FLOP model check (analytic vs `torch.utils.flop_counter`, one forward + backward)", "",
              fmt_table(["stage", "keep_layers", "batch x length", "analytic GFLOP/sample", "FlopCounterMode GFLOP/sample", "analytic / counted"],
                        [[c["stage"], c["keep_layers"], f"{c['batch']} x {c['length']}", f"{c['analytic_per_sample'] / 1e9:.3f}",
                          f"{c['counted_per_sample'] / 1e9:.3f}", f"{c['analytic_over_counted']:.3f}"] for c in res["flop_checks"]])]
    parts += ["", "## Training steps on CPU (real ML-1M batches, MiniLM-L6 first k layers + DCNv2)", "",
              f"{res['args']['warmup']} warm-up + {res['args']['steps']} timed steps per row, {res['args']['threads']} torch thread. "
              "`natural` length = the batch's dynamic padding; `set` = cut or right-padded to that length. Pretraining = MLM + MTM + ICL "
              "with the PLM on the stacked [text; masked text] batch, AdamW; finetuning = FLIP joint (ID + PLM + fused BCE), Adam. "
              "`of ceiling` = achieved / (achievable matmul GFLOP/s / FLOPs per sample).", "",
              fmt_table(["stage", "k", "batch", "length", "samples/s", "samples/CPU-s", "GFLOP/sample", "GFLOP/s (per CPU-s)",
                         "of ceiling (wall)", "of ceiling (CPU-s)", "load"],
                        [[r["stage"], r["keep_layers"], r["batch"], f"{r['length']} ({r['length_kind']})", f"{r['samples_per_s']:.2f}",
                          f"{r['samples_per_cpu_s']:.2f}", f"{r['flops_per_sample'] / 1e9:.2f}", f"{r['achieved_gflops']:.1f} ({r['achieved_gflops_per_cpu_s']:.1f})",
                          f"{r['achieved_over_ceiling']:.0%}", f"{r['achieved_over_ceiling_cpu_s']:.0%}", r["loadavg"][0]] for r in res["steps"]])]
    p = res["projection"]
    pre, ft = p["pretrain_per_sample"], p["finetune_per_sample"]
    e = p["encoder"]
    parts += ["", "## FLOPs per sample at the configured protocol (analytic)", "",
              f"PLM: all-MiniLM-L6-v2, {e['layers']} layers, H={e['hidden']}, I={e['intermediate']}, V={e['vocab']:,} (paper scale: "
              f"`keep_layers: null`). Sequence length: ML-1M with `max_length: 128` and dynamic padding, measured mean padded length "
              f"{p['length_pretrain']:.1f} at batch 1024 (pretraining) and {p['length_finetune']:.1f} at batch 256 (finetuning). "
              f"Field-level masking: {p['masked_tokens_per_sample']:.2f} masked value tokens per sample (measured).", "",
              fmt_table(["term (forward, per sample)", "GFLOP"],
                        [["PLM, 2 sequences ([text; masked text])", f"{pre['plm_forward'] / 1e9:.3f}"],
                         ["MLM head", f"{pre['mlm_forward'] / 1e9:.3f}"], ["MTM head", f"{pre['mtm_forward'] / 1e9:.4f}"],
                         ["ICL head", f"{pre['icl_forward'] / 1e9:.4f}"], ["ID model (DCNv2) x2", f"{pre['id_forward'] / 1e9:.4f}"],
                         ["forward total", f"{pre['forward'] / 1e9:.3f}"],
                         ["**pretraining, train (x3)**", f"**{pre['train'] / 1e9:.2f}** (PLM {pre['plm_share']:.1%})"],
                         ["pretraining at length 128 (the cap), train", f"{p['pretrain_per_sample_L128']['train'] / 1e9:.2f}"],
                         ["**finetuning (FLIP joint), train (x3)**", f"**{ft['train'] / 1e9:.2f}**"]])]
    proto = p["protocol"]
    parts += ["", "## PROJECTION: one H100 (no GPU was available; nothing below is measured on a GPU)", "",
              f"Paper protocol on ML-1M: pretraining {proto['pretrain_epochs']} epochs x {proto['fit_rows']:,} fit rows at batch 1024 "
              f"(+ a {proto['val_rows']:,}-row validation pass per epoch), then FLIP_PLM and FLIP finetuning, {proto['finetune_epochs_each']} "
              f"epochs each at batch 256 (+ validation per epoch + the {proto['test_rows']:,}-row test set); FLIP_ID / from-scratch ID "
              f"models are ID-only (negligible FLOPs). Total {proto['total_flops'] / 1e15:.1f} PFLOP "
              f"(pretraining {proto['pretrain_flops'] / 1e15:.1f}, finetuning {proto['finetune_flops'] / 1e15:.2f}). "
              "Peak: 989 TFLOP/s dense bf16 (trainer=gpu uses bf16 autocast), 494 TFLOP/s dense TF32 (H100 SXM spec sheet). "
              "MFU = achieved / peak; 100% is the hard ceiling, the lower rows are assumptions (a 22M-parameter encoder with "
              "H=384 and ~70-token sequences is unlikely to exceed 40%).", ""]
    rows = []
    for prec in ("bf16", "tf32"):
        for r in p["h100"][prec]["rows"]:
            rows.append([prec, f"{r['mfu']:.0%}", f"{r['pretrain_samples_per_s']:,.0f}", f"{r['finetune_samples_per_s']:,.0f}",
                         f"{r['pretrain_hours'] * 60:.1f}", f"{r['finetune_hours'] * 60:.1f}", f"**{r['total_hours'] * 60:.1f}**"])
    parts += [fmt_table(["precision", "MFU", "pretrain samples/s", "finetune samples/s", "pretrain min", "finetune min", "total min (PROJECTION)"], rows)]
    if "cpu_one_core" in p:
        c = p["cpu_one_core"]
        parts += ["", f"For comparison, this CPU (1 core, measured {c['achieved_gflops']:.1f} GFLOP per CPU-second in the 6-layer "
                  f"pretraining steps): the same protocol would take **{c['total_days']:.0f} days** of one core "
                  f"({c['ceiling_total_days']:.0f} days even at the matmul ceiling)."]
    ld = p["loader"]
    parts += ["", f"Data loading: at the {res['args']['mfu'][0]:.0%}-MFU projection, pretraining consumes {ld['h100_pretrain_samples_per_s_at_first_mfu']:,.0f} "
              f"samples/s; the text datamodule assembles {ld['text_loader_samples_per_cpu_s']:,.0f} samples per CPU-second (batch 1024, measured here), "
              f"so about {ld['loader_cores_needed']:.1f} loader cores (`data.num_workers`) are needed to keep an H100 fed."]
    parts += ["", "## Notes", "",
              "- Analytic FLOPs count matmuls only (elementwise ops, softmax, LayerNorm, embedding gathers and the optimizer are excluded); "
              "the FlopCounterMode check counts the same ops on the real modules.",
              "- `samples/CPU-s` divides by this process's CPU time: with one thread it discounts the time the shared machine did not "
              "schedule the benchmark; `wall` rows include that time.",
              "- A single timed step pair per row: expect +-20% noise on a shared machine; the FLOP ratios are exact."]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    main()
