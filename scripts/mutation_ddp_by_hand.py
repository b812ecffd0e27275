#!/usr/bin/env python
"""The alignment mutants only world size > 1 reaches (scripts/mutation_notes.md): each applied by
hand to a copy of src/ under /tmp, and the deselected 2-process ICL test run against that copy
(PYTHONPATH; the test hands it to its spawned processes). The unmutated copy goes first and must
pass. `python scripts/mutation_ddp_by_hand.py` (~2 min); the verdicts go to scripts/mutation_equivalent.tsv.
The mutations are mutmut's, as `mutmut show` printed them for the run in results/mutation.md."""
import os, shutil, subprocess, sys, tempfile
from pathlib import Path
ROOT = str(Path(__file__).resolve().parents[1])
PYTHON = sys.executable
SCRATCH = tempfile.mkdtemp(prefix="mutation-ddp-")
WS = "    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1\n"
MUTANTS = {
    "unmutated": (WS, WS),
    "flip_ctr.models.alignment.x__world_size__mutmut_1": (WS, "    return dist.get_world_size() if (dist.is_available() and dist.is_initialized()) and False else 1\n"),
    "flip_ctr.models.alignment.xǁICLHeadǁforward__mutmut_10": ("_world_size() > 1:", "_world_size() > 2:"),
    "flip_ctr.models.alignment.xǁICLHeadǁforward__mutmut_11": ("offset = _gather_with_grad(z_text, z_tab)", "offset = None"),
    "flip_ctr.models.alignment.xǁICLHeadǁforward__mutmut_12": ("_gather_with_grad(z_text, z_tab)", "_gather_with_grad(None, z_tab)"),
    "flip_ctr.models.alignment.xǁICLHeadǁforward__mutmut_13": ("_gather_with_grad(z_text, z_tab)", "_gather_with_grad(z_text, None)"),
    "flip_ctr.models.alignment.xǁICLHeadǁforward__mutmut_14": ("_gather_with_grad(z_text, z_tab)", "_gather_with_grad(z_tab)"),
    "flip_ctr.models.alignment.xǁICLHeadǁforward__mutmut_15": ("_gather_with_grad(z_text, z_tab)", "_gather_with_grad(z_text, )"),
    "flip_ctr.models.alignment.xǁICLHeadǁforward__mutmut_17": ("device=z_text.device) + offset", "device=z_text.device) - offset"),
    "flip_ctr.models.alignment.xǁICLHeadǁforward__mutmut_19": ("device=z_text.device) + offset", "device=None) + offset"),
    "flip_ctr.models.alignment.xǁICLHeadǁforward__mutmut_21": ("device=z_text.device) + offset", ") + offset"),
}
test = "tests/test_alignment.py::test_icl_all_gathers_negatives_across_processes"
for name, (old, new) in MUTANTS.items():
    work = f"{SCRATCH}/{name}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(f"{ROOT}/src", f"{work}/src", ignore=shutil.ignore_patterns("__pycache__"))
    path = f"{work}/src/flip_ctr/models/alignment.py"
    text = open(path).read()
    assert text.count(old) == 1, (name, text.count(old))
    open(path, "w").write(text.replace(old, new))
    env = {**os.environ, "PYTHONPATH": f"{work}/src", "OMP_NUM_THREADS": "1"}
    check = subprocess.run([PYTHON, "-c", "import flip_ctr.models.alignment as a; print(a.__file__)"], env=env, capture_output=True, text=True, cwd=ROOT)
    proc = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], env=env, capture_output=True, text=True, cwd=ROOT)
    last = [l for l in proc.stdout.splitlines() if l.strip()][-1]
    assert check.stdout.strip().startswith(work), check.stdout  # the copy, not the installed flip_ctr
    if name == "unmutated":
        assert proc.returncode == 0, proc.stdout[-3000:]
    verdict = "passes (the reference)" if name == "unmutated" else "killed" if proc.returncode else "survived"
    print(f"{name}\t{verdict}\t{last}", flush=True)
shutil.rmtree(SCRATCH)
