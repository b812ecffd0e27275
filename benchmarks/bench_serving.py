#!/usr/bin/env python
"""`flip-ctr predict` throughput on ML-1M raw rows (issue 16): the exported ONNX model end to end.

    python benchmarks/bench_serving.py                      # 1M rows, 1 and 2 threads (~5 min on 2 busy cores)
    python benchmarks/bench_serving.py --rows 200000 --repeats 1

1. Exports an ML-1M DCNv2 (conf/id_model/dcnv2.yaml; weights untrained, which does not change
   the speed) with the serving code (`onnx_model` + vocabularies + digests), timing the export.
2. Writes ``--rows`` raw rows (sampled from the ML-1M table, re-encoded as the raw files hold
   them: integer ids and age/occupation codes, gender M/F, "A|B" genres) as Parquet and CSV.
3. End to end: `flip-ctr predict MODEL_DIR --input rows.parquet --output preds.parquet` in a fresh
   process (imports, digest checks, read, decode, vocabulary lookup, onnxruntime, write), with
   ``--num-threads T`` and ``POLARS_MAX_THREADS=T``; wall rows/s and rows per CPU-second.
4. Per stage, in a child with the same threads: load (digests + session), read, encode (decode +
   lookup), model, write; and the model alone, onnxruntime vs the eager torch model, by batch size.

Writes results/benchmarks/serving.json (every number, with the load average beside each timing)
and serving.md. The machine is shared: wall rates are pessimistic and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO_ROOT, busy_processes, command_line, finish_run, fmt_num, fmt_table, header_lines, loadavg, machine_info, now,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3, help="end-to-end runs per thread count (all reported)")
    p.add_argument("--model-batch-sizes", type=int, nargs="+", default=[512, 1024, 8192, 65536])
    p.add_argument("--cache-dir", default=str(REPO_ROOT / ".cache" / "flip_ctr"))
    p.add_argument("--torchscript-rev", default="4e00909",
                   help="git revision whose serving.py is the TorchScript predict, timed side by side (''/none: skip)")
    p.add_argument("--out-name", default="serving")
    p.add_argument("--out-dir", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def ml1m_space(cache_dir: str):
    from omegaconf import OmegaConf

    from flip_ctr.serving import feature_space

    data = OmegaConf.load(REPO_ROOT / "conf" / "data" / "ml1m.yaml")
    data.cache_dir = cache_dir
    return feature_space(data)


def export_model(space, out: Path) -> dict:
    import torch
    from omegaconf import OmegaConf

    from flip_ctr import serving
    from flip_ctr.models.id import build_id_model

    spec = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "id_model" / "dcnv2.yaml"))
    spec.pop("_target_")
    spec.update(num_features=space.num_features, num_fields=space.num_fields)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_id_model(**spec)
    files = {serving.MODEL_FILE: serving.onnx_model(model, space), serving.VOCAB_FILE: serving.vocab_json(space)}
    serving.write_model_dir(out, files, {"dataset": space.schema.name, "id_model": spec, "format_version": serving.FORMAT_VERSION})
    return {"export_s": time.perf_counter() - t0, "model_bytes": len(files[serving.MODEL_FILE]), "spec": spec, "loadavg": loadavg()}


def raw_rows(space, n: int, seed: int = 0):
    """``n`` rows of ML-1M field values as the raw files spell them."""
    import numpy as np
    import polars as pl

    from flip_ctr.data.sources.movielens import GENDERS, ML1M_AGES, ML1M_OCCUPATIONS

    rng = np.random.default_rng(seed)
    columns = {}
    for f, column in enumerate(space.schema.field_columns):
        values = np.asarray(space.values[f][1 : space.num_seen[f] + 1], dtype=object)
        columns[column] = values[rng.integers(0, len(values), n)]
    raw = pl.DataFrame(columns)
    undo = {"gender": {v: k for k, v in GENDERS.items()}, "age": {v: str(k) for k, v in ML1M_AGES.items()},
            "occupation": {v: str(k) for k, v in ML1M_OCCUPATIONS.items()}}
    return raw.with_columns(
        *(pl.col(c).replace(m) for c, m in undo.items()),
        pl.col("genre").str.replace_all(", ", "|"),
    ).with_columns(pl.col("user_id", "movie_id", "age", "occupation").cast(pl.Int64))


def end_to_end(model_dir: Path, rows: Path, threads: int, rows_n: int) -> dict:
    env = {**os.environ, "POLARS_MAX_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    out = rows.with_name(f"preds{rows.suffix}")
    cmd = [sys.executable, "-m", "flip_ctr.cli", "predict", str(model_dir), "--input", str(rows), "--output", str(out),
           "--num-threads", str(threads)]
    before = loadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"predict failed: {stderr[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return {"input": rows.suffix[1:], "threads": threads, "rows": rows_n, "wall_s": wall, "cpu_s": cpu,
            "rows_per_s": rows_n / wall, "rows_per_cpu_s": rows_n / cpu, "loadavg_before": before,
            "loadavg_after": loadavg(), "stdout": stdout.strip()}


def timed(fn):
    before, t0, c0 = loadavg(), time.perf_counter(), time.process_time()
    value = fn()
    return value, {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "loadavg": before}


def child_stages(spec: dict) -> dict:
    """In this process (POLARS_MAX_THREADS set by the parent): each stage of predict, then the model alone."""
    import numpy as np
    import torch

    from flip_ctr import serving

    threads = spec["threads"]
    torch.set_num_threads(threads)
    model_dir, rows = Path(spec["model_dir"]), Path(spec["rows"])
    scorer, load = timed(lambda: serving.load_model_dir(model_dir, threads))
    frame, read = timed(lambda: serving.read_rows(rows))
    (ids, _), encode = timed(lambda: serving.encode_rows(scorer, frame, rows))
    probs, model = timed(lambda: serving.predict_ids(scorer, ids))
    out = frame.with_columns(prob=probs)
    _, write = timed(lambda: serving.write_rows(out, rows.with_name("stages.parquet")))
    stages = {"load": load, "read": read, "encode": encode, "model": model, "write": write}
    for s in stages.values():
        s["rows_per_s"] = len(ids) / s["wall_s"]
    res = {"threads": threads, "rows": len(ids), "stages": stages, "model_alone": []}
    eager = _eager_model(spec["id_model"])
    for batch in spec["batch_sizes"]:
        chunk = ids[: max(batch * 8, 65536)]
        for name, fn in (("onnxruntime", lambda x: scorer(x)), ("torch eager", lambda x: eager(torch.from_numpy(x)).numpy())):
            fn(chunk[:batch])  # warm-up
            with torch.inference_mode():
                _, t = timed(lambda: [fn(chunk[i : i + batch]) for i in range(0, len(chunk), batch)])
            res["model_alone"].append({"runtime": name, "batch": batch, "rows": len(chunk), **t,
                                       "rows_per_s": len(chunk) / t["wall_s"], "rows_per_cpu_s": len(chunk) / max(t["cpu_s"], 1e-9)})
    res["finite"] = bool(np.isfinite(probs).all())
    if spec.get("torchscript_rev"):
        res["torchscript"] = _torchscript_side_by_side(spec, frame, scorer)
    return res


def _torchscript_side_by_side(spec: dict, frame, scorer) -> dict:
    """The TorchScript predict of ``torchscript_rev`` (its encode_rows and predict_ids, as shipped:
    batch 65536) and this one's, alternating on the same rows in this process."""
    import importlib.util

    import torch

    from flip_ctr import serving
    from flip_ctr.models.id import build_id_model

    source = subprocess.run(["git", "show", f"{spec['torchscript_rev']}:src/flip_ctr/serving.py"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout
    # a real file and a sys.modules entry: TorchScript reads the classes' source and resolves names through them
    path = Path(tempfile.mkdtemp(prefix="flip_bench_ts_")) / "serving_torchscript.py"
    path.write_text(source)
    module_spec = importlib.util.spec_from_file_location("serving_torchscript", path)
    old = sys.modules["serving_torchscript"] = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(old)
    torch.manual_seed(0)
    scripted = old.script_scorer(build_id_model(**spec["id_model"]), ml1m_space(spec["cache_dir"]))
    runs = []
    for _ in range(2):
        for name, encode, score in (
            ("onnx (this)", lambda: serving.encode_rows(scorer, frame)[0], lambda ids: serving.predict_ids(scorer, ids)),
            ("torchscript", lambda: old.encode_rows(scripted, frame)[0], lambda ids: old.predict_ids(scripted, ids)),
        ):
            ids, t_encode = timed(encode)
            _, t_model = timed(lambda: score(ids))
            runs.append({"predict": name, "encode": t_encode, "model": t_model,
                         "rows_per_s": len(ids) / (t_encode["wall_s"] + t_model["wall_s"]),
                         "rows_per_cpu_s": len(ids) / (t_encode["cpu_s"] + t_model["cpu_s"])})
    return {"rev": spec["torchscript_rev"], "rows": frame.height, "runs": runs}



def _eager_model(spec: dict):
    import torch

    from flip_ctr import serving
    from flip_ctr.models.id import build_id_model

    torch.manual_seed(0)
    return serving.probability_module(build_id_model(**spec))


def stages(model_dir: Path, rows: Path, threads: int, spec: dict, args) -> dict:
    env = {**os.environ, "POLARS_MAX_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    rev = args.torchscript_rev if args.torchscript_rev not in ("", "none") and threads == args.threads[0] else None
    child = json.dumps({"model_dir": str(model_dir), "rows": str(rows), "threads": threads, "id_model": spec,
                        "batch_sizes": args.model_batch_sizes, "torchscript_rev": rev, "cache_dir": args.cache_dir})
    proc = subprocess.run([sys.executable, __file__, "--child", child], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"stage child failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(res: dict) -> str:
    out = header_lines("Serving: `flip-ctr predict` on ML-1M raw rows (ONNX + onnxruntime)", res)
    e = res["export"]
    out += ["", f"Model: DCNv2 as in `conf/id_model/dcnv2.yaml` ({res['fields']} fields, {res['num_features']:,} features, "
            f"model.onnx {e['model_bytes'] / 2**20:.1f} MiB), exported in {e['export_s']:.1f} s (load {e['loadavg']}). "
            f"Rows: {res['args']['rows']:,}, sampled from the ML-1M table and written as the raw files spell them.", "",
            "## End to end (`flip-ctr predict` in a fresh process: imports, digests, read, decode, lookup, model, write)", ""]
    rows = [[r["input"], r["threads"], fmt_num(r["rows_per_s"]), fmt_num(r["rows_per_cpu_s"]), f"{r['wall_s']:.1f}",
             f"{r['cpu_s']:.1f}", f"{r['loadavg_before']} → {r['loadavg_after']}"] for r in res["end_to_end"]]
    out += [fmt_table(["input", "threads", "rows/s (wall)", "rows per CPU-s", "wall s", "CPU s", "load avg before → after"], rows), ""]
    out += ["## Per stage (one process, same threads)", ""]
    rows = []
    for s in res["stages"]:
        for name, t in s["stages"].items():
            rows.append([s["threads"], name, f"{t['wall_s']:.2f}", f"{t['cpu_s']:.2f}", fmt_num(t["rows_per_s"]), t["loadavg"]])
    out += [fmt_table(["threads", "stage", "wall s", "CPU s", "rows/s (wall)", "load avg"], rows), ""]
    out += ["## The model alone: onnxruntime vs the eager torch model", ""]
    rows = [[s["threads"], m["runtime"], m["batch"], fmt_num(m["rows_per_s"]), fmt_num(m["rows_per_cpu_s"]), m["loadavg"]]
            for s in res["stages"] for m in s["model_alone"]]
    out += [fmt_table(["threads", "runtime", "batch", "rows/s (wall)", "rows per CPU-s", "load avg"], rows), ""]
    for s in res["stages"]:
        if s.get("torchscript"):
            ts = s["torchscript"]
            out += [f"## Side by side: the TorchScript predict of `{ts['rev']}` (batch 65536) vs this one, {s['threads']} thread(s)", "",
                    f"encode_rows + predict_ids on the same {ts['rows']:,} rows in one process, alternating (reading, writing "
                    "and imports excluded).", ""]
            rows = [[r["predict"], f"{r['encode']['wall_s']:.2f}", f"{r['model']['wall_s']:.2f}", fmt_num(r["rows_per_s"]),
                     fmt_num(r["rows_per_cpu_s"]), r["encode"]["loadavg"]] for r in ts["runs"]]
            out += [fmt_table(["predict", "encode s", "model s", "rows/s (wall)", "rows per CPU-s", "load avg"], rows), ""]
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child_stages(json.loads(args.child))), flush=True)
        return
    t_start = time.perf_counter()
    machine = machine_info()
    machine["busy_processes_start"] = busy_processes()
    print(f"machine: load {machine['loadavg_start']}", flush=True)
    res: dict = {"command": command_line(), "date": now(), "args": vars(args), "machine": machine}
    with tempfile.TemporaryDirectory(prefix="flip_bench_serving_") as tmp:
        tmp = Path(tmp)
        space = ml1m_space(args.cache_dir)
        res.update(fields=space.num_fields, num_features=space.num_features)
        res["export"] = export_model(space, tmp / "model")
        print(f"exported in {res['export']['export_s']:.1f} s", flush=True)
        frame = raw_rows(space, args.rows)
        frame.write_parquet(tmp / "rows.parquet")
        frame.write_csv(tmp / "rows.csv")
        res["end_to_end"] = []
        for threads in args.threads:
            for rows in [tmp / "rows.parquet"] * args.repeats + [tmp / "rows.csv"]:
                r = end_to_end(tmp / "model", rows, threads, frame.height)
                print(f"  {r['input']} threads {threads}: {r['rows_per_s']:,.0f} rows/s ({r['rows_per_cpu_s']:,.0f} per CPU-s), "
                      f"load {r['loadavg_before']}", flush=True)
                res["end_to_end"].append(r)
        res["stages"] = [stages(tmp / "model", tmp / "rows.parquet", t, res["export"]["spec"], args) for t in args.threads]
    finish_run(res, t_start, markdown, args)


if __name__ == "__main__":
    main()
