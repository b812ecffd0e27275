"""benchmarks/_common.TreeMemoryMonitor: the memory a benchmark reports for a process tree.

A parent that fills 300 MiB and then forks a child that only reads it: summed RSS counts those
pages twice (~600 MiB), summed PSS once (~300 MiB). The benchmarks quote PSS for "within 24 GiB"."""

import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import run_monitored  # noqa: E402

SHARED_MIB = 300

CHILD = textwrap.dedent(f"""
    import os, time
    block = bytearray(os.urandom(1 << 20)) * {SHARED_MIB}   # {SHARED_MIB} MiB, every page written
    pid = os.fork()
    if pid == 0:                                           # the child reads the pages, never writes
        total = sum(block[::4096]); time.sleep(2.5); os._exit(0)
    time.sleep(2.5); os.waitpid(pid, 0)
    print('{{}}')
""")


def test_pss_counts_pages_shared_with_a_forked_child_once():
    result = run_monitored([sys.executable, "-c", CHILD], echo=False, interval=0.05)
    assert result["rc"] == 0
    assert result["peak_tree_processes"] == 2
    rss, pss = result["peak_tree_rss_mib"], result["peak_tree_pss_mib"]
    assert rss > 1.8 * SHARED_MIB, rss  # both processes' RSS hold the block
    assert SHARED_MIB <= pss < 1.3 * SHARED_MIB, pss  # the block once, plus two interpreters
