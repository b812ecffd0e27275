"""`make mutation` (scripts/mutation.py) stays runnable: every target names a module and tests that
exist, and every survivor judged equivalent belongs to a target's module. The run itself is out
of CI (results/mutation.md)."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mutation_targets_and_equivalents_point_at_real_code():
    script = runpy.run_path(str(ROOT / "scripts" / "mutation.py"))
    targets = script["TARGETS"]
    for module, tests in targets.values():
        assert (ROOT / module).is_file(), module
        assert tests and all((ROOT / t).is_file() for t in tests), tests
    modules = {m.removeprefix("src/").removesuffix(".py").replace("/", ".") for m, _ in targets.values()}
    equivalents = script["equivalents"]()
    assert equivalents, "scripts/mutation_equivalent.tsv is empty"
    for mutant, reason in equivalents.items():
        assert mutant.rsplit(".", 1)[0] in modules and reason, (mutant, reason)
