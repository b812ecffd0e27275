#!/usr/bin/env python
"""Survivors of a mutation run, judged again against the tests as they are now.

A mutmut run takes its copy of the tests when it starts; tests written against its survivors
afterwards are checked here, without a second run: every survivor of ``.mutation/<target>``
that ``scripts/mutation_equivalent.tsv`` does not already explain is switched on in turn
(``MUTANT_UNDER_TEST``, mutmut's own switch, with the run's mutated copy first on the path) and
the target's tests from the working tree are run in this one process (``pytest.main`` per
mutant, stopping at the first failure). Only the test functions that are new or changed since
the run's copy of the tests are run (the others already ran on every mutant); ``--all-tests``
runs all of them (needed when a shared helper or fixture changed). The unmutated copy goes
first and must pass: a test that fails there says nothing about a mutant (deselect it with
``--deselect``).

    python scripts/mutation_recheck.py serving                    # print the verdicts
    python scripts/mutation_recheck.py serving --write            # and record each kill in the tsv

``--write`` appends "killed by hand: <tests> fail with it ..." for every mutant that a test now
kills; survivors stay for a test or an equivalence reason written by a person.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mutation  # noqa: E402 - scripts/mutation.py: TARGETS, deselected(), statuses(), equivalents()


def changed_tests(test_file: str, run_copy: Path) -> list[str]:
    """Test ids of the top-level test functions of ``test_file`` that the run's copy lacks or has
    in another form (compared as syntax trees: comments and blank lines do not count)."""
    def functions(path: Path) -> dict[str, str]:
        if not path.is_file():
            return {}
        tree = ast.parse(path.read_text())
        return {n.name: ast.dump(n) for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}

    now, then = functions(mutation.ROOT / test_file), functions(run_copy / test_file)
    return [f"{test_file}::{name}" for name, tree in now.items() if then.get(name) != tree]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=sorted(mutation.TARGETS))
    parser.add_argument("--deselect", action="append", default=[], help="a test id left out (fails on the unmutated run copy)")
    parser.add_argument("--write", action="store_true", help="append the kills to scripts/mutation_equivalent.tsv")
    parser.add_argument("--only", nargs="*", help="these mutants only (default: every unexplained survivor)")
    parser.add_argument("--all-tests", action="store_true", help="every test of the target, not only those changed since the run")
    args = parser.parse_args()

    work = mutation.WORK / args.target
    if not (work / "mutants").is_dir():
        raise SystemExit(f"mutation recheck: no run in {work} (run `python scripts/mutation.py {args.target}` first)")
    known = mutation.equivalents()
    survivors = sorted(m for m, s in mutation.statuses(work).items() if s == "survived" and m not in known)
    if args.only:
        survivors = [m for m in survivors if m in set(args.only)]
    tests = mutation.TARGETS[args.target][1]
    selected = tests if args.all_tests else [t for f in tests for t in changed_tests(f, work)]
    if not selected:
        raise SystemExit("mutation recheck: no test changed since the run (--all-tests runs them all)")
    print(f"tests: {len(selected)} {'(all)' if args.all_tests else 'new or changed since the run'}", flush=True)
    deselect = [*mutation.deselected(args.target), *args.deselect]
    # the run's mutated copy of flip_ctr first on the path; the tests are the working tree's
    sys.path.insert(0, str(work / "mutants" / "src"))
    sys.path.insert(0, str(mutation.ROOT / "tests"))
    os.environ.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", FLIP_CTR_TEST_FIXTURE_CACHE=str(mutation.FIXTURES))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(work / "mutants" / "src"), os.environ.get("PYTHONPATH")]))
    # a scratch working directory: a mutant that turns a path relative (a cache_dir, say) writes
    # there, not into the repository (an earlier run left an artifact cache in the root)
    os.chdir(tempfile.mkdtemp(prefix="mutation-recheck-"))
    import pytest

    import flip_ctr

    if not Path(flip_ctr.__file__).resolve().is_relative_to(work.resolve()):
        raise SystemExit(f"mutation recheck: imported {flip_ctr.__file__}, not the run's copy in {work}")
    # test paths absolute (the working directory is scratch); node ids (--deselect) stay rootdir-relative
    argv = [*(str(mutation.ROOT / t) for t in selected), f"--rootdir={mutation.ROOT}", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *[f"--deselect={t}" for t in deselect]]

    def run(mutant: str) -> int:
        os.environ["MUTANT_UNDER_TEST"] = mutant
        return int(pytest.main(argv))

    start = time.perf_counter()
    if run("") != 0:
        raise SystemExit("mutation recheck: the tests fail on the unmutated run copy; deselect those that do (--deselect)")
    print(f"unmutated: pass ({time.perf_counter() - start:.0f} s); {len(survivors)} survivors to judge", flush=True)
    killed, alive = [], []
    for i, mutant in enumerate(survivors, 1):
        dies = run(mutant) != 0
        (killed if dies else alive).append(mutant)
        print(f"[{i}/{len(survivors)}] {mutant}: {'killed' if dies else 'SURVIVED'}", flush=True)
    print(f"\n{len(killed)} killed, {len(alive)} survived ({time.perf_counter() - start:.0f} s)")
    for mutant in alive:
        print(f"  survived: {mutant}")
    if args.write and killed:
        day = datetime.date.today().isoformat()
        reason = f"{mutation.HAND}: {', '.join(tests)} (as changed after the run) fails with it, MUTANT_UNDER_TEST set (scripts/mutation_recheck.py), {day}"
        with mutation.EQUIVALENT.open("a") as tsv:
            tsv.writelines(f"{mutant}\t{reason}\n" for mutant in killed)
        print(f"recorded {len(killed)} kills in {mutation.EQUIVALENT}")


if __name__ == "__main__":
    main()
