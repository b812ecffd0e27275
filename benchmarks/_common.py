"""Helpers shared by the benchmark scripts: machine facts, peak memory of a process tree,
child processes, Markdown tables and result files. Not part of the package."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "results" / "benchmarks"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted({f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "fma", "amx"))})
    except OSError:
        pass
    return []


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def busy_processes(limit: int = 6, min_cpu: float = 5.0) -> list[dict]:
    """Other processes using CPU right now (the machine is shared); 1 s sample."""
    import psutil

    me = os.getpid()
    mine = {me} | {c.pid for c in psutil.Process(me).children(recursive=True)}
    procs = [p for p in psutil.process_iter(["pid", "cmdline", "name"]) if p.info["pid"] not in mine]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(1.0)
    rows = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            cpu = p.cpu_percent(None)
            if cpu >= min_cpu:
                cmd = " ".join(p.info["cmdline"] or [p.info["name"] or "?"])
                rows.append({"pid": p.info["pid"], "cpu_percent": round(cpu, 1), "cmdline": cmd[:140]})
    return sorted(rows, key=lambda r: -r["cpu_percent"])[:limit]


def machine_info() -> dict:
    import numpy as np
    import polars as pl
    import psutil
    import torch

    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "memory_available_gib_start": round(psutil.virtual_memory().available / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "polars": pl.__version__,
        "polars_threads": pl.thread_pool_size(),
        "numpy": np.__version__,
        "cuda_available": bool(torch.cuda.is_available()),
        "loadavg_start": loadavg(),
    }
    for pkg in ("transformers", "tokenizers", "pyarrow", "lightning"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            info[pkg] = version(pkg)
    return info


def command_line() -> str:
    return " ".join([Path(sys.executable).name, *[str(x) for x in sys.argv]])


def now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def peak_rss_self_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def vm_hwm_mib() -> float | None:
    """Peak RSS of this process's own address space since exec (``VmHWM``). Unlike
    ``ru_maxrss``, it does not inherit the parent's RSS at fork/exec, so it is exact for a child."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class TreeMemoryMonitor:
    """Samples the summed RSS of a process and all its descendants every ``interval`` seconds
    in a thread; ``peak_mib`` is the largest sum seen (RSS counts resident pages of
    memory-mapped files too, so it is an upper bound on the anonymous memory used).

    Summed RSS counts a page shared by a parent and its forked DataLoader workers once per
    process, so it overstates a tree with workers. ``peak_pss_mib`` sums PSS instead (a shared
    page split between its sharers: the tree's real share of memory), sampled every
    ``pss_every`` samples because reading smaps_rollup walks the whole address space.

    Sampling misses spikes shorter than ``interval``; the per-process ``ru_maxrss`` of the
    root (exact, kernel-tracked) is reported next to it by :func:`run_monitored`.
    """

    def __init__(self, pid: int, interval: float = 0.05, pss_every: int = 20) -> None:
        self.pid, self.interval, self.pss_every = pid, interval, pss_every
        self.peak_bytes = 0
        self.peak_pss_bytes = 0
        self.peak_processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, pss: bool) -> tuple[int, int]:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            return 0, 0
        rss_total = pss_total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                rss_total += p.memory_info().rss
                if pss:
                    pss_total += p.memory_full_info().pss
        self.peak_processes = max(self.peak_processes, len(procs))
        return rss_total, pss_total

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss = self._sample(pss=self.samples % self.pss_every == 0)
            self.peak_bytes = max(self.peak_bytes, rss)
            self.peak_pss_bytes = max(self.peak_pss_bytes, pss)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemoryMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20

    @property
    def peak_pss_mib(self) -> float:
        return self.peak_pss_bytes / 2**20


def run_monitored(cmd: list[str], env: dict | None = None, interval: float = 0.05, echo: bool = True, stderr=None) -> dict:
    """Runs ``cmd`` as a child; returns its last stdout line parsed as JSON plus the peak RSS of
    its process tree (sampled), its own ``ru_maxrss`` (from wait4), wall seconds and rc.
    ``stderr``: where the child's stderr goes (default: this process's)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    out_lines: list[str] = []
    with TreeMemoryMonitor(proc.pid, interval) as mon:
        assert proc.stdout is not None
        for line in proc.stdout:
            out_lines.append(line)
            if echo:
                print("    | " + line.rstrip(), flush=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    result = {
        "rc": proc.returncode,
        "wall_s": time.perf_counter() - t0,
        "peak_tree_rss_mib": mon.peak_mib,
        "peak_tree_pss_mib": mon.peak_pss_mib,
        "peak_tree_processes": mon.peak_processes,
        # ru_maxrss of a child includes the parent's RSS at fork (kept across exec): an upper
        # bound only; children report their own VmHWM in their JSON line ("vm_hwm_mib").
        "child_ru_maxrss_mib": usage.ru_maxrss / 1024,
        "child_cpu_s": usage.ru_utime + usage.ru_stime,
        "monitor_samples": mon.samples,
        "monitor_interval_s": interval,
    }
    for line in reversed(out_lines):
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                result["child"] = json.loads(line)
                break
    return result


def fmt_table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def fmt_num(x, digits: int = 0) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    if abs(x) >= 100 or digits == 0:
        return f"{x:,.{digits}f}" if digits else f"{x:,.0f}"
    return f"{x:.{digits}f}"


def write_results(name: str, res: dict, markdown: str, out_dir: Path | None = None) -> tuple[Path, Path]:
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    jp, mp = out_dir / f"{name}.json", out_dir / f"{name}.md"
    jp.write_text(json.dumps(res, indent=1, default=str) + "\n")
    mp.write_text(markdown)
    return jp, mp


def finish_run(res: dict, t_start: float, markdown, args) -> None:
    """End-of-run bookkeeping every benchmark shares: load at the end, total time, JSON + Markdown."""
    res["machine"]["loadavg_end"] = loadavg()
    res["machine"]["busy_processes_end"] = busy_processes()
    res["total_s"] = time.perf_counter() - t_start
    text = markdown(res)
    jp, mp = write_results(args.out_name, res, text, Path(args.out_dir) if args.out_dir else None)
    print(text)
    print(f"wrote {jp} and {mp}")


def header_lines(title: str, res: dict) -> list[str]:
    m = res["machine"]
    lines = [
        f"# {title}",
        "",
        f"- command: `{res['command']}`",
        f"- date: {res['date']} (total {res['total_s'] / 60:.1f} min)",
        f"- machine: {m['cpu_model']} ({', '.join(m.get('cpu_flags', [])) or 'flags n/a'}), {m['cpu_count']} CPUs, "
        f"{m['memory_gib']} GiB RAM; {m['platform']}; no GPU (cuda available: {m['cuda_available']})",
        f"- software: python {m['python']}, torch {m['torch']} (threads {m['torch_threads']}, interop "
        f"{m['torch_interop_threads']}), transformers {m.get('transformers', '?')}, tokenizers {m.get('tokenizers', '?')}, "
        f"polars {m['polars']} (threads {m['polars_threads']}), numpy {m['numpy']}, pyarrow {m.get('pyarrow', '?')}",
        f"- load average (1/5/15 min): {m['loadavg_start']} at start, {m.get('loadavg_end')} at end. "
        "**The machine was shared** with other jobs (below); absolute speeds are pessimistic and noisy, "
        "side-by-side ratios from one run hold up better.",
    ]
    for p in m.get("busy_processes_start", []):
        lines.append(f"  - busy at start: pid {p['pid']} {p['cpu_percent']}% CPU `{p['cmdline']}`")
    return lines
