#!/usr/bin/env python
"""Mutation testing of the core modules with mutmut (issue 14): ``make mutation``.

Each target is one module and the tests that cover it. For every target this script copies
``src/``, ``tests/``, ``conf/`` and ``pyproject.toml`` into ``.mutation/<target>/`` (mutmut 3
writes its mutants beside the code it runs), writes a ``setup.cfg`` that limits mutmut to that
module and those tests, runs ``mutmut run``, and reads every mutant's status back with
``mutmut results --all true``. A survivor is either a hole in the tests (kill it with a new test)
or equivalent: ``scripts/mutation_equivalent.tsv`` names it with the reason, and the report
counts it as such. Results: ``results/mutation.json`` and ``results/mutation.md``.

    python scripts/mutation.py                      # every target
    python scripts/mutation.py masking report_stats # some targets
    python scripts/mutation.py --report-only        # rewrite the report from .mutation/

Not part of CI (minutes to an hour); ``pip install -e .[mutation]`` installs mutmut.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutation"
EQUIVALENT = ROOT / "scripts" / "mutation_equivalent.tsv"
HAND = "killed by hand"  # a reason in EQUIVALENT that is not equivalence (write_report)
FIXTURES = WORK / "fixture-cache"  # outside every target's copy (prepare() removes those)
NOTES = ROOT / "scripts" / "mutation_notes.md"  # hand-written: runs, history, what is not covered yet

# target → (module under test, the tests that cover it)
TARGETS = {
    "masking": ("src/flip_ctr/data/masking.py", ["tests/test_masking.py"]),
    # the statistics of report.py (the paired test, mean ± std, pairing by seed); report.py's own
    # ~1,600 mutants are Markdown formatting and would take hours (scripts/mutation_notes.md)
    "report_stats": ("src/flip_ctr/report_stats.py", ["tests/test_report_stats.py", "tests/test_report.py"]),
    "alignment": ("src/flip_ctr/models/alignment.py", ["tests/test_alignment.py", "tests/test_alignment_switches.py"]),
    "preprocess": ("src/flip_ctr/data/preprocess.py", ["tests/test_preprocess.py"]),
    "serving": ("src/flip_ctr/serving.py", ["tests/test_serving.py"]),
}

# Tests of a target's files left out of its mutant runs, with the reason. The 2-process ICL test
# spawns processes (~10 s a run, more under load, and mutmut runs it for every ICL mutant): it
# would double the alignment target; the mutants only it can reach (world size > 1) are checked
# by hand with it (scripts/mutation_notes.md).
# Serving: the ONNX parity test runs once per ID-model variant (19, ~1.3 s each); serving.py takes
# the same path for every model, so mutant runs keep three (the default DCNv2, DeepFM with its
# linear term, DCN-Mix); the others check torch.onnx on each architecture (models/id.py).
SERVING_PARITY_KEPT = ("dcnv2", "deepfm", "dcnv2-mix")
DESELECT = {
    "alignment": ["tests/test_alignment.py::test_icl_all_gathers_negatives_across_processes"],
}


def deselected(name: str) -> list[str]:
    if name != "serving":
        return DESELECT.get(name, [])
    # the variants as the test module computes them (from flip_ctr.models.id.ID_MODELS)
    code = "import sys, json; sys.path[:0] = ['src', 'tests']; import test_serving as t; print(json.dumps(sorted(t.VARIANTS)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    variants = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(SERVING_PARITY_KEPT) <= set(variants), variants
    return [f"tests/test_serving.py::test_every_id_model_exports_with_parity[{v}]" for v in variants if v not in SERVING_PARITY_KEPT]


def mutmut() -> str:
    exe = Path(sys.executable).with_name("mutmut")
    if not exe.is_file():
        raise SystemExit(f"mutation: no mutmut next to {sys.executable}; install it with `pip install -e '.[mutation]'`")
    return str(exe)


def prepare(name: str) -> Path:
    """A fresh copy of the repository's code, tests and configs for one target."""
    module, tests = TARGETS[name]
    missing = [p for p in [module, *tests] if not (ROOT / p).is_file()]
    if missing:
        raise SystemExit(f"mutation target {name!r}: {', '.join(missing)} not found")
    work = WORK / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("src", "tests", "conf"):
        shutil.copytree(ROOT / part, work / part, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", work / "pyproject.toml")
    (work / "setup.cfg").write_text(
        "[mutmut]\nsource_paths=src/\n"
        f"only_mutate={module}\n"
        "pytest_add_cli_args_test_selection=" + "\n    ".join(tests) + "\n"
        "pytest_add_cli_args=-p no:cacheprovider\n    -q\n"
        + "".join(f"    --deselect={test}\n" for test in deselected(name))
        # Workers come from a fork server that has only collected the tests: forked straight from
        # mutmut's process, which has run them, polars' thread pool deadlocks in every worker (each
        # mutant of report_stats "timed out" that way) and torch's is not fork-safe either.
        + "process_isolation=forkserver\n"
        "also_copy=tests\n    conf\n"
    )
    return work


def run_target(name: str, children: int) -> dict:
    work = prepare(name)
    # FIXTURES: expensive fixtures built once and reused by every mutant's tests (the serving tests'
    # trained run; tests/fixture_cache.py keys them by the code and data they are built from)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "FLIP_CTR_TEST_FIXTURE_CACHE": str(FIXTURES)}
    start = time.perf_counter()
    proc = subprocess.run([mutmut(), "run", "--max-children", str(children)], cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (work / "mutmut-run.log").write_text(proc.stdout[-20000:] + proc.stderr[-20000:])
    if proc.returncode != 0:
        raise SystemExit(f"mutation target {name!r}: mutmut run failed (exit {proc.returncode}); see {work / 'mutmut-run.log'}")
    (work / "seconds.txt").write_text(f"{seconds:.1f}\n")
    return collect(name)


def statuses(work: Path) -> dict[str, str]:
    proc = subprocess.run([mutmut(), "results", "--all", "true"], cwd=work, capture_output=True, text=True, check=True)
    out = {}
    for line in proc.stdout.splitlines():
        if ":" in line:
            mutant, status = (s.strip() for s in line.rsplit(":", 1))
            out[mutant] = status
    return out


def diff(work: Path, mutant: str) -> str:
    proc = subprocess.run([mutmut(), "show", mutant], cwd=work, capture_output=True, text=True)
    return "\n".join(ln for ln in proc.stdout.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---")))


def equivalents() -> dict[str, str]:
    if not EQUIVALENT.is_file():
        return {}
    rows = [ln.split("\t", 1) for ln in EQUIVALENT.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return {mutant.strip(): reason.strip() for mutant, reason in rows}


def collect(name: str) -> dict:
    work = WORK / name
    status = statuses(work)
    known = equivalents()
    survivors = sorted(m for m, s in status.items() if s == "survived")
    seconds_file = work / "seconds.txt"
    return {
        "target": name,
        "module": TARGETS[name][0],
        "tests": TARGETS[name][1],
        "seconds": float(seconds_file.read_text()) if seconds_file.is_file() else None,
        "counts": {s: sum(1 for v in status.values() if v == s) for s in sorted(set(status.values()))},
        "survivors": [{"mutant": m, "diff": diff(work, m), "equivalent": known.get(m)} for m in survivors],
    }


def write_report(results: list[dict]) -> None:
    (ROOT / "results" / "mutation.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Mutation testing (issue 14)",
        "",
        "`make mutation` = `python scripts/mutation.py` (mutmut 3; each module against the tests that cover it).",
        "Survivors marked equivalent are listed in `scripts/mutation_equivalent.tsv` with the reason.",
        "",
        "A mutant \"not run\" is one no test of the target reaches in mutmut's own process (mutmut only"
        " runs the tests it saw call the function): code exercised only in a subprocess.",
        "",
        "A mutant \"not judged\" is one the run had not reached when it was stopped (scripts/mutation_notes.md says why).",
        "",
        "| target | module | tests | mutants | killed | survived | of which killed by hand | of which equivalent | unexplained | not run | not judged | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r["counts"]
        # a tsv reason starting "killed by hand" is a survivor of the last mutmut run that a test
        # written afterwards (or a test deselected for speed) was seen to kill with MUTANT_UNDER_TEST set
        by_hand = sum(1 for s in r["survivors"] if (s["equivalent"] or "").startswith(HAND))
        equivalent = sum(1 for s in r["survivors"] if s["equivalent"]) - by_hand
        survived = c.get("survived", 0)
        lines.append(
            f"| {r['target']} | `{r['module']}` | {', '.join(f'`{t}`' for t in r['tests'])} | {sum(c.values())} | "
            f"{c.get('killed', 0)} | {survived} | {by_hand} | {equivalent} | {survived - equivalent - by_hand} | "
            f"{c.get('no tests', 0)} | {c.get('not checked', 0)} | {r['seconds'] or '-'} |"
        )
    if NOTES.is_file():
        lines += ["", NOTES.read_text().rstrip()]
    for r in results:
        lines += ["", f"## {r['target']}: survivors", ""]
        if not r["survivors"]:
            lines.append("None.")
        for s in r["survivors"]:
            reason = ("**unexplained**" if not s["equivalent"] else s["equivalent"] if s["equivalent"].startswith(HAND)
                      else f"equivalent: {s['equivalent']}")
            lines += [f"- `{s['mutant']}` ({reason})", "", "  ```diff", *[f"  {ln}" for ln in s["diff"].splitlines()], "  ```"]
    (ROOT / "results" / "mutation.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=f"some of {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--children", type=int, default=2, help="mutmut worker processes (default 2)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the last runs in .mutation/")
    args = parser.parse_args()
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        raise SystemExit(f"unknown mutation target(s) {unknown}; known: {', '.join(TARGETS)}")
    chosen = args.targets or list(TARGETS)
    if not args.report_only:
        for name in chosen:
            print(f"mutation: {name} ...", flush=True)
            run_target(name, args.children)
    # the report covers every target that has been run, not only this invocation's: from its copy
    # in .mutation/ if there is one, else as the last report recorded it (a fresh checkout or
    # worktree has no .mutation/; the equivalence reasons are read again from the tsv)
    write_report([result for name in TARGETS if (result := collect(name) if (WORK / name / "mutants").is_dir() else earlier(name))])
    print(f"mutation: wrote results/mutation.md")


def earlier(name: str) -> dict | None:
    path = ROOT / "results" / "mutation.json"
    previous = {r["target"]: r for r in json.loads(path.read_text())} if path.is_file() else {}
    if name not in previous:
        return None
    known = equivalents()
    result = previous[name]
    return {**result, "survivors": [{**s, "equivalent": known.get(s["mutant"])} for s in result["survivors"]]}


if __name__ == "__main__":
    main()
