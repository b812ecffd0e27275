#!/usr/bin/env python
"""Benchmark: ML-1M preprocessing and ID-model (DCNv2) training throughput, side by side with
DeepCTR-Torch 0.3.0 on the same split. Not a test: it measures and writes numbers.

Measured (all in one process, CPU, ``--threads`` torch threads for every model):

1. Preprocessing. A cold build of the ML-1M artifact (``CTRDataModule.prepare_data()`` into a
   fresh cache directory) in a child process, so its peak RSS is its own; then a warm (cached)
   ``prepare_data()`` + ``setup()`` in this process.
2. Training throughput at each ``--batch-sizes`` (default 256 and 4096), after warm-up steps:
   - ``e2e``: data loading + forward + backward + Adam step. Ours: a plain loop over
     ``dm.train_dataloader()``; DeepCTR: its own ``model.fit`` on ``steps * batch`` rows.
   - ``compute``: the same step on batches prefetched into memory (identical rows for every
     model), so the model + optimizer cost is seen without the data loader.
   - ``loader``: batches of the data loader alone (ours: the datamodule; DeepCTR: the
     ``DataLoader(TensorDataset)`` its ``fit`` builds).
3. Quality: 1 epoch on the ``fit`` split at ``--epoch-batch-size`` (ours: the plain loop;
   DeepCTR: ``model.fit``), then AUC and log loss on the full test split (sklearn).

Both sides: embedding 32, DNN (300, 300, 128) ReLU, no dropout / batch norm / L2, 3 cross
layers, Adam lr 1e-3, binary cross-entropy. Peer models (``--throughput-models``/``--epoch-models``):

- ``dcnmix``: ``DCNMix``, DeepCTR's DCNv2 (mixture of low-rank experts). Made as close to
  full-rank DCNv2 as it allows: ``num_experts=1`` and ``low_rank = F*D`` (256 on ML-1M); its
  cross layer is still ``x0 * (U tanh(C tanh(V^T x)) + b) + x`` (three F*D x F*D matrices and two
  tanh per layer instead of one matrix), so it is not the same function as full-rank DCNv2.
- ``dcn_matrix``: ``DCN(cross_parameterization="matrix")``, which *is* full-rank DCNv2's cross
  layer ``x0 * (W x + b) + x`` (DeepCTR calls it DCN-M).
- ``dcnmix_field_vocab``: ``dcnmix`` with one vocabulary per field (``num_seen[f] + 1`` rows,
  field-local ids) instead of ``num_features + 1`` rows per field: the same number of embedding
  rows as ours, where the global-id variant has F times as many (dense Adam updates on all).

Every peer is fed the same feature ids as ours (``dm.artifact.feature_ids(rows)``, one
``SparseFeat`` per field) and, like ours, has no first-order (linear) term
(``linear_feature_columns=[]``). DeepCTR's own defaults are kept where ours has no
counterpart: embedding/DNN init ``normal(0, 1e-4)`` (``--peer-init-std``), sigmoid output with
``binary_cross_entropy(reduction="sum")`` (Adam is invariant to that scale up to eps).

Default run: ~12 minutes on a busy 2-core machine at ``--threads 1``. ``--full`` runs the 1-epoch
AUC comparison for every peer variant (default: ours, dcnmix, dcn_matrix) and 4x the timed samples.

    python benchmarks/bench_id_models.py                 # default
    python benchmarks/bench_id_models.py --full --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import busy_processes, fmt_table  # noqa: E402
from _common import machine_info as common_machine_info  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
PEERS = ("dcnmix", "dcn_matrix", "dcnmix_field_vocab")
MODELS = ("ours",) + PEERS
LABELS = {
    "ours": "flip_ctr DCNv2",
    "dcnmix": "deepctr DCNMix",
    "dcn_matrix": "deepctr DCN(matrix)",
    "dcnmix_field_vocab": "deepctr DCNMix, per-field vocab",
}


# ----------------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch threads for every model (default 1: the machine is shared)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 4096], help="throughput batch sizes")
    p.add_argument(
        "--timed-samples",
        type=int,
        default=81920,
        help="samples per throughput measurement (steps = samples // batch, at least 10); default 81920 "
        "= 320 steps at 256, 20 at 4096",
    )
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps before each throughput measurement")
    p.add_argument("--throughput-models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument(
        "--epoch-models", nargs="*", choices=MODELS, default=["ours", "dcnmix", "dcn_matrix"], help="1-epoch AUC runs"
    )
    p.add_argument("--epoch-batch-size", type=int, default=256)
    p.add_argument("--epoch-max-steps", type=int, default=None, help="cut the 'epoch' short (smoke checks only)")
    p.add_argument("--eval-batch-size", type=int, default=4096)
    p.add_argument("--full", action="store_true", help="1-epoch AUC for every model and 4x --timed-samples")
    p.add_argument("--skip-preprocess", action="store_true", help="no cold build: use the cache in --cache-dir")
    p.add_argument("--cache-dir", default=None, help="artifact cache (default: a fresh temp dir, removed at the end)")
    p.add_argument("--data-dir", default=None, help="ML-1M directory (default: FLIP_CTR_DATA_DIR or ../shared/data/ml-1m)")
    p.add_argument("--dcnmix-low-rank", type=int, default=0, help="DCNMix low_rank; 0 = num_fields*embedding_dim (full width)")
    p.add_argument("--dcnmix-experts", type=int, default=1, help="DCNMix num_experts")
    p.add_argument("--peer-init-std", type=float, default=1e-4, help="DeepCTR init_std (its default 1e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=str(REPO_ROOT / "results" / "benchmarks"))
    p.add_argument("--out-name", default="id_models", help="writes <out-dir>/<out-name>.json and .md")
    p.add_argument("--render", default=None, metavar="JSON", help="only re-write the .md (next to it) from a results .json")
    p.add_argument("--preprocess-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.full:
        args.epoch_models = list(MODELS)
        args.timed_samples *= 4
    return args


# ----------------------------------------------------------------------------------------------
# machine / process facts
# ----------------------------------------------------------------------------------------------
def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def machine_info() -> dict:
    """The shared machine facts plus the versions this comparison depends on."""
    from importlib.metadata import PackageNotFoundError, version

    import sklearn

    info = common_machine_info()
    try:
        info["deepctr_torch"] = version("deepctr-torch")
    except PackageNotFoundError:
        info["deepctr_torch"] = None
    return {**info, "sklearn": sklearn.__version__}


# ----------------------------------------------------------------------------------------------
# 1. preprocessing
# ----------------------------------------------------------------------------------------------
def preprocess_child(cache_dir: str, data_dir: str | None) -> None:
    """Runs in a child process: cold build, prints one JSON line."""
    from flip_ctr.data.datamodule import CTRDataModule

    base_peak, base_rss = peak_rss_mb(), rss_mb()
    dm = CTRDataModule("ml1m", data_dir=data_dir, data_subdir="ml-1m", cache_dir=cache_dir)
    r0, c0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
    dm.prepare_data()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    print(
        json.dumps(
            {
                "cold_build_s": wall,
                "cold_build_cpu_s": cpu,
                "peak_rss_mb": peak_rss_mb(),
                "rss_after_imports_mb": base_rss,
                "peak_rss_before_build_mb": base_peak,
                "data_dir": str(dm.resolved_data_dir()),
                "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0.ru_minflt,
            }
        )
    )


def bench_preprocess(args, cache_dir: Path) -> dict:
    out: dict = {}
    if not args.skip_preprocess:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--preprocess-child", str(cache_dir)]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"cold preprocessing child failed (rc={proc.returncode})")
        out.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        out["child_process_total_s"] = time.perf_counter() - t0  # interpreter start + imports + build
    from flip_ctr.data.datamodule import CTRDataModule

    rss0 = rss_mb()
    t0 = time.perf_counter()
    dm = CTRDataModule("ml1m", data_dir=args.data_dir, data_subdir="ml-1m", cache_dir=str(cache_dir))
    dm.prepare_data()  # cached: reads the manifest and verifies every file digest
    t1 = time.perf_counter()
    dm.setup()  # reads (and verifies) again, memory-maps the arrays
    t2 = time.perf_counter()
    out.update(
        warm_prepare_data_s=t1 - t0,
        warm_setup_s=t2 - t1,
        warm_rss_delta_mb=rss_mb() - rss0,
        artifact_mb=sum(f.stat().st_size for f in Path(dm.artifact.path).iterdir()) / 2**20,
        num_rows=int(len(dm.artifact.labels)),
        num_fit=dm.artifact.num_fit,
        num_val=dm.artifact.num_val,
        num_test=dm.artifact.num_test,
        num_features=dm.num_features,
        num_fields=dm.num_fields,
        fields=list(dm.space.schema.field_names),
    )
    return out, dm


# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------
class Ours:
    """flip_ctr DCNv2 trained with a plain loop: Adam 1e-3, BCE on the logit."""

    name = "ours"

    def __init__(self, dm, args):
        import torch

        from flip_ctr.models.id import build_id_model

        torch.manual_seed(args.seed)
        self.dm = dm
        self.model = build_id_model("dcnv2", num_features=dm.num_features, num_fields=dm.num_fields)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def to_batch(self, ids, labels):
        import torch

        return torch.from_numpy(ids), torch.from_numpy(labels)

    def step(self, x, y) -> float:
        import torch.nn.functional as F

        self.model.train()
        _, logit = self.model(x)
        loss = F.binary_cross_entropy_with_logits(logit, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()

    def batches(self, batch_size):
        """Endless batches from the datamodule's training loader (a new shuffle each pass)."""
        self.dm.batch_size = batch_size
        while True:
            for b in self.dm.train_dataloader():
                yield b["feature_ids"], b["labels"]

    def e2e(self, batch_size, warmup, steps) -> tuple[float, float]:
        it = self.batches(batch_size)
        for _ in range(warmup):
            self.step(*next(it))
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.step(*next(it))
        return time.perf_counter() - t0, time.process_time() - c0

    def train_epoch(self, batch_size, max_steps=None) -> dict:
        self.dm.batch_size = batch_size
        t0, c0 = time.perf_counter(), time.process_time()
        total, n = 0.0, 0
        for i, b in enumerate(self.dm.train_dataloader()):
            if max_steps is not None and i >= max_steps:
                break
            loss = self.step(b["feature_ids"], b["labels"])
            total += loss * len(b["labels"])
            n += len(b["labels"])
        return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "samples": n, "train_loss": total / n}

    def predict(self, ids, batch_size):
        import numpy as np
        import torch

        self.model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(ids), batch_size):
                _, logit = self.model(torch.from_numpy(ids[i : i + batch_size]))
                out.append(torch.sigmoid(logit.double()).numpy())
        return np.concatenate(out)

    def predict_datamodule(self):
        """Test predictions through the datamodule's own test loader (checks the same rows)."""
        import numpy as np
        import torch

        self.model.eval()
        probs, labels = [], []
        with torch.no_grad():
            for b in self.dm.test_dataloader():
                _, logit = self.model(b["feature_ids"])
                probs.append(torch.sigmoid(logit.double()).numpy())
                labels.append(b["labels"].numpy())
        return np.concatenate(probs), np.concatenate(labels)


class Peer:
    """A DeepCTR-Torch model; training via its ``model.fit`` (e2e / epoch) or its fit step (compute)."""

    def __init__(self, name, dm, args):
        import numpy as np

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from deepctr_torch.inputs import SparseFeat
            from deepctr_torch.models import DCN, DCNMix

        self.name = name
        self.dm = dm
        space = dm.space
        self.field_vocab = name.endswith("field_vocab")
        self.offsets = np.asarray(space.field_offsets[:-1], dtype=np.int64)
        vocab = [s + 1 for s in space.num_seen] if self.field_vocab else [dm.num_features + 1] * dm.num_fields
        self.names = [f"f{i}" for i in range(dm.num_fields)]
        cols = [SparseFeat(n, vocabulary_size=v, embedding_dim=32) for n, v in zip(self.names, vocab)]
        common = dict(
            linear_feature_columns=[],
            dnn_feature_columns=cols,
            cross_num=3,
            dnn_hidden_units=(300, 300, 128),
            l2_reg_linear=0.0,
            l2_reg_embedding=0.0,
            l2_reg_cross=0.0,
            l2_reg_dnn=0.0,
            dnn_dropout=0.0,
            dnn_use_bn=False,
            dnn_activation="relu",
            init_std=args.peer_init_std,
            seed=args.seed,
            task="binary",
            device="cpu",
        )
        if name.startswith("dcnmix"):
            self.config = dict(
                cls="DCNMix", low_rank=args.dcnmix_low_rank or dm.num_fields * 32, num_experts=args.dcnmix_experts
            )
            self.model = DCNMix(**common, low_rank=self.config["low_rank"], num_experts=self.config["num_experts"])
        else:
            self.config = dict(cls="DCN", cross_parameterization="matrix")
            self.model = DCN(**common, cross_parameterization="matrix")
        self.config.update(
            vocabulary_sizes=sorted(set(vocab)) if not self.field_vocab else vocab,
            embedding_dim=32,
            dnn_hidden_units=[300, 300, 128],
            cross_num=3,
            init_std=args.peer_init_std,
            l2=0.0,
            linear_part=False,
        )
        self.model.compile("adam", "binary_crossentropy")  # torch.optim.Adam(lr=1e-3)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def ids(self, ids):
        return ids - self.offsets if self.field_vocab else ids

    def x_dict(self, ids):
        ids = self.ids(ids)
        return {n: ids[:, i] for i, n in enumerate(self.names)}

    def to_batch(self, ids, labels):
        import torch

        return torch.from_numpy(self.ids(ids)), torch.from_numpy(labels)

    def step(self, x, y) -> float:
        """The body of DeepCTR's ``BaseModel.fit`` loop (0.3.0), minus its metrics bookkeeping."""
        model = self.model.train()
        x = x.float()
        y_pred = model(x).squeeze(-1)
        loss = model.loss_func(y_pred, y, reduction="sum")
        total = loss + model.get_regularization_loss() + model.aux_loss
        model.optim.zero_grad()
        total.backward()
        model.optim.step()
        return loss.item() / len(y)

    def fit(self, ids, labels, batch_size) -> tuple[float, float, dict]:
        with contextlib.redirect_stdout(io.StringIO()):  # fit prints the device and a summary line
            t0, c0 = time.perf_counter(), time.process_time()
            history = self.model.fit(self.x_dict(ids), labels, batch_size=batch_size, epochs=1, verbose=0, shuffle=True)
            return time.perf_counter() - t0, time.process_time() - c0, history.history

    def e2e(self, batch_size, warmup, steps, rows, fit_ids, fit_labels) -> tuple[float, float]:
        w = rows[: warmup * batch_size]
        self.fit(fit_ids[w], fit_labels[w], batch_size)
        r = rows[warmup * batch_size : (warmup + steps) * batch_size]
        ids, labels = fit_ids[r], fit_labels[r]
        wall, cpu, _ = self.fit(ids, labels, batch_size)
        return wall, cpu

    def train_epoch(self, fit_ids, fit_labels, batch_size) -> dict:
        wall, cpu, history = self.fit(fit_ids, fit_labels, batch_size)
        return {"wall_s": wall, "cpu_s": cpu, "samples": len(fit_labels), "train_loss": float(history["loss"][-1])}

    def predict(self, ids, batch_size):
        return self.model.predict(self.x_dict(ids), batch_size=batch_size)[:, 0]


# ----------------------------------------------------------------------------------------------
# 2. throughput
# ----------------------------------------------------------------------------------------------
def time_compute(runner, batches, warmup) -> tuple[float, float]:
    xs = [runner.to_batch(i, l) for i, l in batches]
    for x, y in xs[:warmup]:
        runner.step(x, y)
    t0, c0 = time.perf_counter(), time.process_time()
    for x, y in xs[warmup:]:
        runner.step(x, y)
    return time.perf_counter() - t0, time.process_time() - c0


def loader_rate_ours(dm, batch_size, steps) -> tuple[float, float]:
    dm.batch_size = batch_size
    loader = dm.train_dataloader()
    n = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while n < steps:
        for _ in loader:
            n += 1
            if n >= steps:
                break
    return time.perf_counter() - t0, time.process_time() - c0


def loader_rate_deepctr(fit_ids, fit_labels, batch_size, steps) -> tuple[float, float]:
    """The loader DeepCTR's fit builds: DataLoader(TensorDataset(x, y), shuffle=True)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    ds = TensorDataset(torch.from_numpy(fit_ids), torch.from_numpy(fit_labels))
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    while n < steps:
        for _ in DataLoader(ds, batch_size=batch_size, shuffle=True):
            n += 1
            if n >= steps:
                break
    return time.perf_counter() - t0, time.process_time() - c0


def make_runner(name, dm, args):
    return Ours(dm, args) if name == "ours" else Peer(name, dm, args)


def bench_throughput(args, dm, fit_ids, fit_labels, log) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(args.seed)
    rows = rng.permutation(len(fit_labels))
    results = []
    for bs in args.batch_sizes:
        steps = max(10, args.timed_samples // bs)
        need = (args.warmup_steps + steps) * bs
        if need > len(rows):
            raise SystemExit(f"batch {bs}: {need} rows needed > {len(rows)} fit rows; lower --timed-samples")
        sel = rows[:need]
        batches = [(fit_ids[sel[i : i + bs]], fit_labels[sel[i : i + bs]]) for i in range(0, need, bs)]
        wall, cpu = loader_rate_ours(dm, bs, steps)
        results.append(dict(model="ours_loader", batch_size=bs, metric="loader", steps=steps, wall_s=wall, cpu_s=cpu))
        log(f"  loader ours        bs={bs:5d}: {steps * bs / wall:10.0f} samples/s")
        if any(m != "ours" for m in args.throughput_models):
            wall, cpu = loader_rate_deepctr(fit_ids, fit_labels, bs, steps)
            results.append(dict(model="deepctr_loader", batch_size=bs, metric="loader", steps=steps, wall_s=wall, cpu_s=cpu))
            log(f"  loader deepctr     bs={bs:5d}: {steps * bs / wall:10.0f} samples/s")
        for name in args.throughput_models:
            for metric in ("compute", "e2e"):
                runner = make_runner(name, dm, args)  # fresh model and optimizer per measurement
                if metric == "compute":
                    wall, cpu = time_compute(runner, batches, args.warmup_steps)
                elif name == "ours":
                    wall, cpu = runner.e2e(bs, args.warmup_steps, steps)
                else:
                    wall, cpu = runner.e2e(bs, args.warmup_steps, steps, rows, fit_ids, fit_labels)
                results.append(
                    dict(
                        model=name, batch_size=bs, metric=metric, steps=steps, wall_s=wall, cpu_s=cpu, params=runner.num_params()
                    )
                )
                log(f"  {metric:7s} {name:18s} bs={bs:5d}: {steps * bs / wall:10.0f} samples/s  (cpu/wall {cpu / wall:.2f})")
                del runner
    for r in results:
        r["samples_per_s"] = r["steps"] * r["batch_size"] / r["wall_s"]
        r["cpu_over_wall"] = r["cpu_s"] / r["wall_s"]
        r["samples_per_cpu_s"] = r["steps"] * r["batch_size"] / r["cpu_s"]
    return results


# ----------------------------------------------------------------------------------------------
# 3. one epoch + test AUC
# ----------------------------------------------------------------------------------------------
def bench_epoch(args, dm, fit_ids, fit_labels, test_ids, test_labels, log) -> list[dict]:
    import numpy as np
    from sklearn.metrics import log_loss, roc_auc_score

    results = []
    for name in args.epoch_models:
        runner = make_runner(name, dm, args)
        if name == "ours":
            r = runner.train_epoch(args.epoch_batch_size, args.epoch_max_steps)
        elif args.epoch_max_steps is not None:
            r = runner.train_epoch(fit_ids[: args.epoch_max_steps * args.epoch_batch_size],
                                   fit_labels[: args.epoch_max_steps * args.epoch_batch_size], args.epoch_batch_size)
        else:
            r = runner.train_epoch(fit_ids, fit_labels, args.epoch_batch_size)
        t0 = time.perf_counter()
        prob = runner.predict(test_ids, args.eval_batch_size)
        eval_s = time.perf_counter() - t0
        if name == "ours":  # the datamodule's own test loader gives the same rows and predictions
            dm_prob, dm_labels = runner.predict_datamodule()
            assert np.array_equal(dm_labels, test_labels), "datamodule test labels differ from artifact rows"
            assert np.allclose(dm_prob, prob, atol=1e-6), "datamodule test predictions differ"
        p = np.clip(prob, 1e-7, 1 - 1e-7)
        r.update(
            model=name,
            batch_size=args.epoch_batch_size,
            samples_per_s=r["samples"] / r["wall_s"],
            cpu_over_wall=r["cpu_s"] / r["wall_s"],
            samples_per_cpu_s=r["samples"] / r["cpu_s"],
            test_rows=len(test_labels),
            test_auc=float(roc_auc_score(test_labels, prob)),
            test_logloss=float(log_loss(test_labels, p, labels=[0, 1])),
            eval_s=eval_s,
            eval_samples_per_s=len(test_labels) / eval_s,
            params=runner.num_params(),
        )
        if name != "ours":
            r["config"] = runner.config
        log(
            f"  epoch {name:18s} bs={args.epoch_batch_size}: {r['wall_s']:.1f}s ({r['samples_per_s']:.0f} samples/s), "
            f"train loss {r['train_loss']:.4f}, test AUC {r['test_auc']:.4f}, logloss {r['test_logloss']:.4f}"
        )
        results.append(r)
        del runner
    return results


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------
def throughput_rows(res: dict) -> tuple[list[str], list[list]]:
    tp = res["throughput"]
    by = {(r["model"], r["batch_size"], r["metric"]): r for r in tp}
    header = [
        "model",
        "batch",
        "params",
        "e2e samples/s",
        "compute samples/s",
        "loader samples/s",
        "ours/this e2e",
        "ours/this compute",
        "e2e samples/CPU-s",
        "ours/this e2e (CPU-s)",
        "ours/this compute (CPU-s)",
        "CPU/wall e2e",
    ]
    rows = []
    for bs in res["args"]["batch_sizes"]:
        for name in res["args"]["throughput_models"]:
            e2e, comp = by.get((name, bs, "e2e")), by.get((name, bs, "compute"))
            loader = by.get(("ours_loader" if name == "ours" else "deepctr_loader", bs, "loader"))
            ours_e2e, ours_comp = by.get(("ours", bs, "e2e")), by.get(("ours", bs, "compute"))
            ratio_e = f"{ours_e2e['samples_per_s'] / e2e['samples_per_s']:.2f}" if ours_e2e and e2e else "-"
            ratio_c = f"{ours_comp['samples_per_s'] / comp['samples_per_s']:.2f}" if ours_comp and comp else "-"
            ratio_cpu = f"{ours_e2e['samples_per_cpu_s'] / e2e['samples_per_cpu_s']:.2f}" if ours_e2e and e2e else "-"
            ratio_cpu_c = f"{ours_comp['samples_per_cpu_s'] / comp['samples_per_cpu_s']:.2f}" if ours_comp and comp else "-"
            rows.append(
                [
                    LABELS[name],
                    bs,
                    f"{(e2e or comp)['params']:,}",
                    f"{e2e['samples_per_s']:,.0f}" if e2e else "-",
                    f"{comp['samples_per_s']:,.0f}" if comp else "-",
                    f"{loader['samples_per_s']:,.0f}" if loader else "-",
                    ratio_e,
                    ratio_c,
                    f"{e2e['samples_per_cpu_s']:,.0f}" if e2e else "-",
                    ratio_cpu,
                    ratio_cpu_c,
                    f"{e2e['cpu_over_wall']:.2f}" if e2e else "-",
                ]
            )
    return header, rows


def epoch_rows(res: dict) -> tuple[list[str], list[list]]:
    header = [
        "model",
        "batch",
        "epoch s",
        "samples/s",
        "ours/this speed",
        "samples/CPU-s",
        "CPU/wall",
        "train loss",
        "test AUC",
        "test logloss",
        "eval samples/s",
    ]
    ours = next((r for r in res["epoch"] if r["model"] == "ours"), None)
    rows = []
    for r in res["epoch"]:
        ratio = f"{ours['samples_per_s'] / r['samples_per_s']:.2f}" if ours else "-"
        rows.append(
            [
                LABELS[r["model"]],
                r["batch_size"],
                f"{r['wall_s']:.1f}",
                f"{r['samples_per_s']:,.0f}",
                ratio,
                f"{r['samples_per_cpu_s']:,.0f}",
                f"{r['cpu_over_wall']:.2f}",
                f"{r['train_loss']:.4f}",
                f"{r['test_auc']:.4f}",
                f"{r['test_logloss']:.4f}",
                f"{r['eval_samples_per_s']:,.0f}",
            ]
        )
    return header, rows


def preprocess_rows(pre: dict) -> tuple[list[str], list[list]]:
    rows = []
    if "cold_build_s" in pre:
        rows += [
            ["cold build (prepare_data, empty cache)", f"{pre['cold_build_s']:.2f} s wall, {pre['cold_build_cpu_s']:.2f} s CPU"],
            ["cold build child process total (start + imports + build)", f"{pre['child_process_total_s']:.2f} s"],
            ["peak RSS of the cold-build process", f"{pre['peak_rss_mb']:.0f} MB (after imports {pre['rss_after_imports_mb']:.0f} MB)"],
        ]
    rows += [
        ["warm prepare_data() (manifest + digest check)", f"{pre['warm_prepare_data_s'] * 1000:.0f} ms"],
        ["warm setup() (read + verify + memory-map)", f"{pre['warm_setup_s'] * 1000:.0f} ms"],
        ["artifact size on disk", f"{pre['artifact_mb']:.1f} MB"],
        ["rows (fit / val / test)", f"{pre['num_rows']:,} ({pre['num_fit']:,} / {pre['num_val']:,} / {pre['num_test']:,})"],
        ["features / fields", f"{pre['num_features']:,} / {pre['num_fields']}"],
    ]
    return ["preprocessing (ML-1M)", "value"], rows


def write_markdown(res: dict, path: Path) -> str:
    m = res["machine"]
    parts = [
        "# ID-model benchmark: flip_ctr DCNv2 vs DeepCTR-Torch (ML-1M)",
        "",
        f"- command: `{res['command']}`",
        f"- date: {res['date']} (total {res['total_s'] / 60:.1f} min)",
        f"- machine: {m['cpu_model']}, {m['cpu_count']} CPUs (affinity {m['cpu_affinity']}), {m.get('memory_gib', m.get('memory_gb'))} GiB RAM; "
        f"{m['platform']}",
        f"- software: python {m['python']}, torch {m['torch']} (threads {m['torch_threads']}, interop "
        f"{m['torch_interop_threads']}), deepctr-torch {m['deepctr_torch']}, polars {m['polars']} "
        f"(threads {m['polars_threads']}), sklearn {m['sklearn']}",
        f"- load: loadavg {m['loadavg_start']} at start, {m['loadavg_end']} at end. **The machine was shared**: "
        "other CPU jobs ran during the benchmark (below), so absolute numbers are pessimistic and noisy; the "
        "side-by-side ratios (same process, same thread count, run one after another) hold up better, and the "
        "per-CPU-second columns best.",
    ]
    for p in m.get("busy_processes_start", []):
        parts.append(f"  - pid {p['pid']} at {p['cpu_percent']}% CPU: `{p['cmdline']}`")
    h, rows = preprocess_rows(res["preprocess"])
    parts += ["", "## Preprocessing", "", fmt_table(h, rows)]
    if res.get("throughput"):
        h, rows = throughput_rows(res)
        parts += [
            "",
            "## Training throughput",
            "",
            f"Timed steps per measurement: {res['args']['timed_samples']} samples // batch (at least 10), after "
            f"{res['args']['warmup_steps']} warm-up steps; fresh model per measurement. `e2e` = data loading + "
            "train step (ours: plain loop over `dm.train_dataloader()`; DeepCTR: its `model.fit`). `compute` = "
            "train step on prefetched batches (same rows for all models). `loader` = the data loader alone "
            "(ours: the datamodule; DeepCTR: the `DataLoader(TensorDataset)` its `fit` builds). Ratios > 1: "
            "ours faster. `samples/CPU-s` divides by this process's CPU time instead of wall time: with one "
            "torch thread it discounts the time the busy machine did not schedule us (`CPU/wall` < 1).",
            "",
            fmt_table(h, rows),
        ]
    if res.get("epoch"):
        h, rows = epoch_rows(res)
        parts += [
            "",
            "## One epoch on the fit split, then the full test split",
            "",
            ("Train: 1 epoch" if res["args"]["epoch_max_steps"] is None else
             f"Train: **only {res['args']['epoch_max_steps']} steps (smoke check, not an epoch)**")
            + f" over the {res['preprocess']['num_fit']:,}-row fit split (chronological split, last 10% "
            f"of train held out as val, not used), batch {res['args']['epoch_batch_size']}, Adam 1e-3. Test: all "
            f"{res['preprocess']['num_test']:,} test rows, sklearn `roc_auc_score` / `log_loss`. Epoch time includes "
            "data loading (ours: the datamodule loop; DeepCTR: `model.fit`).",
            "",
            fmt_table(h, rows),
        ]
    parts += ["", "## Peer configuration", ""]
    parts += [f"- {LABELS[k]}: `{json.dumps(v)}`" for k, v in res.get("peer_configs", {}).items()]
    parts += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    text = "\n".join(parts) + "\n"
    path.write_text(text)
    return text


NOTES = [
    "Cold build: the raw ML-1M files were already in the OS page cache (read by other jobs), so it measures "
    "parsing + building + writing, not disk reads. Polars uses its own thread pool (all cores) there; "
    "`--threads` only sets torch's.",
    "Same split and ids: both sides read `dm.artifact.feature_ids(rows)` of the same artifact (fit rows "
    "[0, num_fit), test rows after val); for ours the test predictions are also checked against "
    "`dm.test_dataloader()`.",
    "DCNMix is DeepCTR's DCNv2 but with a mixture of low-rank experts; with num_experts=1 and "
    "low_rank=F*D its cross layer is still x0*(U tanh(C tanh(V^T x))+b)+x (3 square matrices + 2 tanh "
    "+ a softmax gate over one expert per layer), i.e. more compute than full-rank DCNv2's x0*(W x+b)+x. "
    "DeepCTR's `DCN(cross_parameterization='matrix')` is exactly the full-rank DCNv2 cross layer and is "
    "reported as a second peer.",
    "Vocabulary: as specified, each DeepCTR field gets its own table of num_features+1 rows fed the global "
    "ids, i.e. F times ours' embedding rows, all updated densely by Adam every step; the "
    "`per-field vocab` row (field-local ids, num_seen+1 rows per field) isolates that cost.",
    "DeepCTR differences kept as the library does them: sigmoid output + BCE(reduction='sum'), the model input "
    "is a float tensor cast back to long per field, embedding/DNN init normal(0, 1e-4), its fit loop calls "
    "`loss.item()` twice per step. Its `fit` shuffles with its own DataLoader; ours uses the datamodule's "
    "shuffled loader. Different shuffles and inits: 1-epoch AUC differences of a few 1e-3 are within seed noise.",
    "deepctr-torch 0.3.0 imports `requests` (not a declared dependency) and starts a background HTTP request "
    "to pypi.org on import (version check); it fails silently offline and prints 'Please check the latest "
    "version manually'. Its `CrossNetMix` ends with `x_l.squeeze()`, which breaks on a batch of 1 row.",
]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.preprocess_child:
        preprocess_child(args.preprocess_child, args.data_dir)
        return
    if args.render:
        path = Path(args.render)
        res = json.loads(path.read_text())
        res["notes"] = NOTES
        path.write_text(json.dumps(res, indent=1, default=str) + "\n")
        print(write_markdown(res, path.with_suffix(".md")))
        return
    t_start = time.perf_counter()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)

    def log(msg):
        print(msg, flush=True)

    machine = machine_info()
    machine["busy_processes_start"] = busy_processes()
    log(f"machine: {machine['cpu_count']} CPUs, torch {machine['torch']} threads={machine['torch_threads']}, "
        f"loadavg {machine['loadavg_start']}")
    for p in machine["busy_processes_start"]:
        log(f"  busy: pid {p['pid']} {p['cpu_percent']}% {p['cmdline'][:100]}")

    tmp = None
    if args.cache_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="flip_bench_cache_"))
        cache_dir = tmp
    else:
        cache_dir = Path(args.cache_dir)
    try:
        log("[1/3] preprocessing")
        pre, dm = bench_preprocess(args, cache_dir)
        for k, v in preprocess_rows(pre)[1]:
            log(f"  {k}: {v}")
        a = dm.artifact
        s = a.split_ranges
        fit_ids = np.ascontiguousarray(a.feature_ids(slice(*s["fit"])))
        fit_labels = np.asarray(a.labels[slice(*s["fit"])], dtype=np.float32)
        test_ids = np.ascontiguousarray(a.feature_ids(slice(*s["test"])))
        test_labels = np.asarray(a.labels[slice(*s["test"])], dtype=np.float32)
        # the datamodule's collate gives the same ids as the artifact helper
        dm.batch_size = 512
        b = next(iter(dm._loader("fit", False, 512)))
        assert np.array_equal(b["feature_ids"].numpy(), fit_ids[:512]), "datamodule ids != artifact.feature_ids"

        log("[2/3] training throughput")
        throughput = bench_throughput(args, dm, fit_ids, fit_labels, log) if args.throughput_models else []
        log("[3/3] one epoch + test AUC")
        epoch = bench_epoch(args, dm, fit_ids, fit_labels, test_ids, test_labels, log) if args.epoch_models else []
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    peer_configs = {}
    for name in sorted(set(args.throughput_models) | set(args.epoch_models)):
        if name != "ours":
            peer_configs[name] = Peer(name, dm, args).config
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["busy_processes_end"] = busy_processes()
    machine["peak_rss_main_process_mb"] = peak_rss_mb()
    res = {
        "command": " ".join([Path(sys.executable).name, *[str(x) for x in sys.argv]]),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "total_s": time.perf_counter() - t_start,
        "args": vars(args),
        "machine": machine,
        "preprocess": pre,
        "throughput": throughput,
        "epoch": epoch,
        "peer_configs": peer_configs,
        "notes": NOTES,
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{args.out_name}.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    text = write_markdown(res, out_dir / f"{args.out_name}.md")
    print()
    print(text)
    print(f"wrote {out_dir / (args.out_name + '.json')} and {out_dir / (args.out_name + '.md')}")


if __name__ == "__main__":
    main()
