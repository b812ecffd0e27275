#!/usr/bin/env python
"""GoodReads scale end to end (issue 13): the synthetic 20M-row table through the real commands.

Phases, each a child process whose process tree is sampled for peak RSS (``_common.run_monitored``):

1. ``generate``: ``data=synthetic_goodreads data.num_rows=N`` table (skipped when already there);
2. ``preprocess``: the datamodule's ``prepare_data`` (streaming engine: out-of-core artifact), cold;
3. ``train_id``: ``flip-ctr train`` (DCN-Mix, batch 2048, one epoch, ``stage.optimizer=lazy_adam``)
   with validation and the full test evaluation (streamed metrics); figures from ``speed.json``
   and ``metrics.json``;
4. ``pretrain``: ``flip-ctr train stage=pretrain`` for a few batches with a small PLM (the first
   MiniLM layer, frozen): builds and stores the text pieces of every distinct value;
5. ``pretrain_cached``: the same again: the stored text pieces are memory-mapped, not rebuilt.

    python benchmarks/bench_scale_e2e.py                       # 20M rows (~45 min on 2 cores)
    python benchmarks/bench_scale_e2e.py --rows 200000 --out-name scale_e2e_small   # a quick check

Results: ``results/benchmarks/<out-name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO_ROOT,
    busy_processes,
    command_line,
    finish_run,
    fmt_num,
    fmt_table,
    header_lines,
    loadavg,
    machine_info,
    now,
    run_monitored,
    vm_hwm_mib,
)

FLIP_CTR = [sys.executable, "-m", "flip_ctr.cli"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20_000_000)
    p.add_argument("--work-dir", default="/tmp/flip_ctr_scale_e2e", help="tables, cache and run directories")
    # One thread: on a shared 2-core machine two OpenMP threads stall whenever another process
    # takes a core (measured 1.38 s/step with 2 threads vs 0.27 s/step with 1, load ~3).
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training processes")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    p.add_argument("--id-batch", type=int, default=2048, help="the paper's GoodReads batch size")
    p.add_argument("--id-optimizer", default="lazy_adam", choices=["adam", "lazy_adam"])
    # lazy_adamw: dense AdamW's gradient and moments of MTM's output table (4.4M x 256) and the ID
    # table need ~12 GiB more than lazy rows; with them the 20M-row slice was OOM-killed (22 GB)
    p.add_argument("--pretrain-optimizer", default="lazy_adamw", choices=["adamw", "lazy_adamw"])
    p.add_argument("--pretrain-batches", type=int, default=20)
    p.add_argument("--pretrain-batch", type=int, default=1024)
    p.add_argument("--skip", nargs="*", default=[], choices=["train_id", "pretrain", "pretrain_cached"])
    p.add_argument("--out-name", default="scale_e2e")
    p.add_argument("--out-dir", default=None, help="default: results/benchmarks")
    p.add_argument("--render", default=None, metavar="JSON", help="only re-write the .md next to a results .json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-args", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def data_overrides(a: dict) -> list[str]:
    return ["data=synthetic_goodreads", f"data.num_rows={a['rows']}", f"paths.cache_dir={a['cache']}"]


# -- children (print one JSON line last) --------------------------------------------------------
def child_generate(a: dict) -> dict:
    from flip_ctr.data.sources.synthetic_goodreads import ensure_table

    t0 = time.perf_counter()
    out = ensure_table(Path(a["cache"]) / "synthetic_goodreads", a["rows"])
    return {"seconds": time.perf_counter() - t0, "table_gib": (out / "table.parquet").stat().st_size / 2**30,
            "vm_hwm_mib": vm_hwm_mib()}


def child_preprocess(a: dict) -> dict:
    import hydra
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base=None):
        cfg = compose(config_name="train", overrides=data_overrides(a))
    dm = hydra.utils.instantiate(cfg.data)
    t0 = time.perf_counter()
    dm.prepare_data()
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    dm.setup()
    art = dm.artifact
    return {"seconds": build_s, "read_back_verified_s": time.perf_counter() - t0, "rows": int(art.value_ids.shape[0]),
            "num_fit": art.num_fit, "num_val": art.num_val, "num_test": art.num_test, "num_fields": art.space.num_fields,
            "num_features": art.space.num_features, "distinct_values": int(sum(len(v) for v in art.space.values)),
            "artifact_gib": sum(f.stat().st_size for f in art.path.rglob("*") if f.is_file()) / 2**30,
            "artifact": str(art.path), "vm_hwm_mib": vm_hwm_mib()}


CHILDREN = {"generate": child_generate, "preprocess": child_preprocess}


# -- phases ---------------------------------------------------------------------------------------
def run_phase(name: str, cmd: list[str], log, stderr=None) -> dict:
    log(f"[{name}] load {loadavg()}: {' '.join(cmd[2:])}")
    la0 = loadavg()
    r = run_monitored(cmd, echo=False, stderr=stderr)
    r["loadavg_before"], r["loadavg_after"] = la0, loadavg()
    r["command"] = " ".join(["flip-ctr", *cmd[3:]] if cmd[:3] == FLIP_CTR else cmd[2:])
    if r["rc"] != 0:
        raise SystemExit(f"phase {name} failed (rc={r['rc']}); see {getattr(stderr, 'name', 'the output above')}")
    log(f"[{name}] {r['wall_s']:.1f}s wall, peak tree RSS {r['peak_tree_rss_mib']:.0f} MiB, PSS {r['peak_tree_pss_mib']:.0f} MiB "
        f"({r['peak_tree_processes']} processes)")
    return r


def child_phase(name: str, a: dict, log) -> dict:
    return run_phase(name, [sys.executable, str(Path(__file__).resolve()), "--child", name, "--child-args", json.dumps(a)], log)


def cli_phase(name: str, overrides: list[str], run_dir: Path, log) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    log_file = run_dir.parent / f"{run_dir.name}.log"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    # the run's own log goes to a file (stderr of the child), read back for the text-piece timings
    cmd = [*FLIP_CTR, "train", *overrides, f"hydra.run.dir={run_dir}", "logger=csv"]
    with open(log_file, "w") as err:  # the run's log, read back below for the text-piece timings
        r = run_phase(name, cmd, log, stderr=err)
    r["run_dir"] = str(run_dir)
    r["log"] = str(log_file)
    for found in sorted(run_dir.rglob("speed.json")):
        r.setdefault("speed", {})[found.parent.name] = json.loads(found.read_text())
    for found in sorted(run_dir.rglob("metrics.json")):
        r.setdefault("metrics", {})[found.parent.name] = json.loads(found.read_text())
    text = log_file.read_text() + "".join(p.read_text() for p in run_dir.rglob("*.log"))
    m = re.search(r"tokenized (\d+) distinct values of (\d+) fields in ([\d.]+)s", text)
    if m:
        r["text_pieces_build"] = {"values": int(m.group(1)), "fields": int(m.group(2)), "seconds": float(m.group(3))}
    r["text_pieces_cached"] = "using cached text pieces" in text
    return r


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child](json.loads(args.child_args))), flush=True)
        return
    if args.render:
        res = json.loads(Path(args.render).read_text())
        Path(args.render).with_suffix(".md").write_text(markdown(res))
        return
    t_start = time.perf_counter()
    work = Path(args.work_dir)
    a = {"rows": args.rows, "cache": str(work / "cache")}

    def log(msg):
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    machine = machine_info()
    machine["loadavg_start"], machine["busy_processes_start"] = loadavg(), busy_processes()
    res = {"command": command_line(), "date": now(), "args": vars(args), "machine": machine, "phases": {}}
    phases = res["phases"]
    try:  # a failed phase (an OOM kill, say) still leaves the finished phases in the results
        phases["generate"] = child_phase("generate", a, log)
        for entry in (work / "cache").glob("synthetic_goodreads-*"):  # a cold build: drop an earlier artifact
            shutil.rmtree(entry)
        phases["preprocess"] = child_phase("preprocess", a, log)
        common = [*data_overrides(a), f"num_threads={args.threads}", f"data.num_workers={args.workers}"]
        if "train_id" not in args.skip:
            phases["train_id"] = cli_phase("train_id", [
                *common, "id_model=dcnv2_mix", "id_recipe=ours", f"stage.optimizer={args.id_optimizer}",
                f"stage.batch_size={args.id_batch}", "stage.max_epochs=1", "protocol=holdout", "data.eval_batch_size=8192",
            ], work / "runs" / "train_id", log)
        pretrain = [*common, "stage=pretrain", "plm.keep_layers=1", "stage.freeze_plm=true", "stage.max_epochs=1",
                    f"stage.batch_size={args.pretrain_batch}", f"stage.optimizer={args.pretrain_optimizer}"]
        if "pretrain" not in args.skip:
            phases["pretrain"] = cli_phase("pretrain", [*pretrain, f"stage.limit_train_batches={args.pretrain_batches}"],
                                           work / "runs" / "pretrain", log)
        if "pretrain_cached" not in args.skip:
            phases["pretrain_cached"] = cli_phase("pretrain_cached", [*pretrain, f"stage.limit_train_batches={max(12, args.pretrain_batches // 2)}"],
                                                  work / "runs" / "pretrain_cached", log)
    except SystemExit as err:
        res["failed"] = str(err)
        log(f"stopped: {err}")
    finish_run(res, t_start, markdown, args)


def _pss(phase: dict) -> str:
    return fmt_num(phase["peak_tree_pss_mib"] / 1024, 2) if "peak_tree_pss_mib" in phase else "n/a"


def _speed(phase: dict) -> dict:
    return next(iter(phase.get("speed", {}).values()), {})


def _metrics(phase: dict) -> dict:
    return next(iter(phase.get("metrics", {}).values()), {})


def markdown(res: dict) -> str:
    parts = header_lines("Scale end to end: synthetic GoodReads-shaped table through the flip-ctr commands", res)
    ph = res["phases"]
    if res.get("failed"):
        parts += ["", f"**Stopped early: {res['failed']}**"]
    prep = ph["preprocess"]["child"]
    parts += [
        "", f"{prep['rows']:,} rows ({prep['num_fit']:,} fit / {prep['num_val']:,} val / {prep['num_test']:,} test), "
        f"{prep['num_fields']} fields, {prep['num_features']:,} features, {prep['distinct_values']:,} distinct values; "
        f"artifact {prep['artifact_gib']:.2f} GiB.", "",
    ]
    rows = []
    gen = ph["generate"]
    rows.append(["generate the table", "`" + gen["command"] + "`", fmt_num(gen["wall_s"], 1), "", fmt_num(gen["peak_tree_rss_mib"] / 1024, 2), _pss(gen),
                 gen["loadavg_before"], gen["loadavg_after"]])
    rows.append(["preprocess (streaming, cold)", "`" + ph["preprocess"]["command"] + "`", fmt_num(ph["preprocess"]["wall_s"], 1),
                 f"{prep['rows'] / prep['seconds']:,.0f} rows/s (build {prep['seconds']:.0f} s, read back + verify {prep['read_back_verified_s']:.1f} s)",
                 fmt_num(ph["preprocess"]["peak_tree_rss_mib"] / 1024, 2), _pss(ph["preprocess"]), ph["preprocess"]["loadavg_before"], ph["preprocess"]["loadavg_after"]])
    if "train_id" in ph:
        t, s, m = ph["train_id"], _speed(ph["train_id"]), _metrics(ph["train_id"])
        rows.append(["DCN-Mix, 1 epoch on fit, batch 2048", "(below)", fmt_num(m.get("fit_seconds"), 1),
                     f"{s.get('samples_per_second', 0):,.0f} samples/s (training loop; validation {s.get('validation_seconds', 0):.0f} s)",
                     fmt_num(t["peak_tree_rss_mib"] / 1024, 2), _pss(t), t["loadavg_before"], t["loadavg_after"]])
        rows.append(["full test evaluation (streamed AUC/Logloss)", "(same run)", fmt_num(s.get("test_seconds"), 1),
                     f"{s.get('test_samples_per_second', 0):,.0f} samples/s over {s.get('test_samples', 0):,} rows", "(same run)", "(same run)", "", ""])
    for key, label in (("pretrain", "FLIP pretraining slice (builds text pieces)"), ("pretrain_cached", "FLIP pretraining slice again (text pieces memory-mapped)")):
        if key in ph:
            p, s = ph[key], _speed(ph[key])
            build = p.get("text_pieces_build")
            how = f"text pieces built in {build['seconds']:.0f} s ({build['values']:,} values)" if build else (
                "text pieces read from the artifact" if p["text_pieces_cached"] else "")
            rows.append([label, "(below)", fmt_num(p["wall_s"], 1), f"{s.get('samples_per_second', 0):,.0f} samples/s; {how}",
                         fmt_num(p["peak_tree_rss_mib"] / 1024, 2), _pss(p), p["loadavg_before"], p["loadavg_after"]])
    parts.append(fmt_table(["phase", "command", "wall s", "throughput", "peak RSS GiB (process tree, summed)",
                            "peak PSS GiB (process tree)", "load before", "load after"], rows))
    parts += ["", "Summed RSS counts pages a process shares with its forked DataLoader worker once per process; "
              "PSS splits them between the sharers: the tree's real share of the machine's memory."]
    parts += ["", "Commands (each a fresh process; `<cache>` = `" + res["args"]["work_dir"] + "/cache`):", ""]
    for key in ("train_id", "pretrain", "pretrain_cached"):
        if key in ph:
            parts.append(f"- {key}: `{ph[key]['command']}`")
    if "train_id" in ph:
        m = _metrics(ph["train_id"])
        parts += ["", f"DCN-Mix after one epoch: test AUC {m.get('auc', float('nan')):.4f}, Logloss {m.get('logloss', float('nan')):.4f} "
                  f"over {m.get('num_test_rows', 0):,} rows (synthetic labels; the number shows the pipeline ran, not a result)."]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    main()
