"""Serving: `flip-ctr export` (ONNX + vocabularies + digests) and `flip-ctr predict` on raw rows.

One FLIP_ID-stage run (`flip-ctr train stage=finetune_id`, from scratch: no aligned checkpoint
is needed to exercise the serving path) on the ML-100K fixture is exported and scored:

- parity: on the test split the exported model reproduces the Lightning model's
  predictions.parquet (written by trainer.test) to 1e-6; on rows with values never seen in
  training it matches the Lightning module on FeatureSpace.lookup's OOV ids;
- raw input: typed columns (integer ids), coded values (gender M/F) and nulls are decoded as
  the loader decodes them; a missing column is an error that names it;
- predict from an exported directory imports neither torch, Lightning nor transformers;
- every ID model (and DCN-Mix, and each with/without its linear term) exports with parity 1e-6;
- artifacts are verified: a flipped or truncated file is refused with one line (file, expected
  and found SHA-256), non-finite outputs are refused naming the rows, and bad input (empty file,
  list/struct column, unreadable file) is one line on stderr and exit 2, with nothing written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

import fixture_cache
import flip_ctr
from flip_ctr import serving
from test_datamodule import make_dm, write_ml100k_fixture

# Imported at collection rather than in the first test that needs them: mutation testing forks
# every mutant's test session from a process that has only collected the tests (~3 s a session).
with contextlib.suppress(ImportError):
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import onnxscript  # noqa: F401
from flip_ctr.stages.finetune_id import FinetuneIDModule  # noqa: E402 - Lightning, for lightning_probs
from flip_ctr.data.preprocess import FeatureSpace
from flip_ctr.data.schema import DatasetSchema, Field

TESTS = Path(__file__).resolve().parent
UNSEEN = {  # values that occur nowhere in the fixture
    "user_id": [99999, 99998], "age": [7, None], "gender": [None, "M"], "occupation": ["astronaut", None],
    "zipcode": [None, "00000"], "movie_id": [424242, 1], "title": ["A Film Nobody Saw (2031)", "Toy Story (1995)"],
    "release_year": ["2031", "1995"], "genre": ["Space Opera", "Animation, Children's, Comedy"],
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _subprocess_env(**extra: str) -> dict[str, str]:
    # the child imports the flip_ctr this test imported (a worktree on PYTHONPATH, or the copy
    # mutation testing mutates), not whichever one the interpreter's installation points at
    src = str(Path(flip_ctr.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", **extra}
    # mutmut's stats pass (MUTANT_UNDER_TEST=stats) records calls in its own process only: a child
    # would fail looking for its config, so it runs the code unmutated; a mutant's name passes on
    if env.get("MUTANT_UNDER_TEST") == "stats":
        del env["MUTANT_UNDER_TEST"]
    return env


def run_cli(*args: str, cwd: Path, light: tuple[str, ...] = ("transformers", "lightning", "torchmetrics")):
    # fails if the command imported one of `light` (FLIP_ID serves at ID-model cost)
    code = (
        "import sys; from flip_ctr.cli import main; main(sys.argv[1:]); "
        f"heavy = [m for m in {light!r} if m in sys.modules]; "
        "assert not heavy, f'imported {heavy}'"
    )
    env = _subprocess_env(HYDRA_FULL_ERROR="1")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


# The fixture run: `flip-ctr train` with these overrides (+ data/cache/run paths) on the ML-100K fixture.
TRAIN_OVERRIDES = ("stage=finetune_id", "stage.batch_size=32", "stage.max_epochs=2", "logger=none", "num_threads=1")


def train_fixture_run(root: Path, data: Path) -> None:
    """root/run: the trained run (last.ckpt diverged from best.ckpt); root/cache: its data cache."""
    run = root / "run"
    env = _subprocess_env()
    env.pop("MUTANT_UNDER_TEST", None)  # training never runs mutated code (nor imports serving.py)
    proc = subprocess.run(
        # fails if training imported serving.py: the cached run must not depend on the module under test
        [sys.executable, "-c", "import sys; from flip_ctr.cli import main; main(sys.argv[1:]); "
         "assert 'flip_ctr.serving' not in sys.modules, 'training imported flip_ctr.serving'",
         "train", f"data.data_dir={data}", f"data.cache_dir={root / 'cache'}", f"hydra.run.dir={run}", *TRAIN_OVERRIDES],
        capture_output=True, text=True, timeout=300, cwd=root, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    diverge_last_checkpoint(run / "checkpoints")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One trained run. Built in the temp dir; with FLIP_CTR_TEST_FIXTURE_CACHE set (mutation
    testing), built once into that cache and reused (tests/fixture_cache.py): the key covers the
    fixture data, the overrides, and every flip_ctr file but serving.py, the module under test,
    which training does not import (checked: the entry is built without it)."""
    root = tmp_path_factory.mktemp("serving")
    data = write_ml100k_fixture(root / "data" / "ml-100k")
    if fixture_cache.cache_root() is None:
        train_fixture_run(root, data)
    else:
        key = hashlib.sha256("\0".join([
            fixture_cache.code_digest(exclude=["serving.py"]), fixture_cache.tree_digest(data), *TRAIN_OVERRIDES,
        ]).encode()).hexdigest()

        def build(entry: Path) -> None:
            shutil.copytree(data, entry / "data" / "ml-100k")
            train_fixture_run(entry, entry / "data" / "ml-100k")

        root, _ = fixture_cache.cached_entry("serving-run", key, build)
        data = root / "data" / "ml-100k"
    artifact = make_dm(data, root / "cache").artifact
    return {"root": root, "run": root / "run", "artifact": artifact}


def diverge_last_checkpoint(folder: Path) -> None:
    """last.ckpt rewritten with weights that differ from best.ckpt's (every model tensor shifted by
    0.05 x N(0, 1), a nearby model: with 0.5 the export's 1e-6 ONNX parity check failed at 3.1e-6),
    so that a test can tell which one export and predict serve: best.ckpt, what predictions.parquet
    (trainer.test) was computed with. On this short run the two can hold the same weights."""
    ckpt = torch.load(folder / "best.ckpt", weights_only=False)
    gen = torch.Generator().manual_seed(0)
    for key, value in ckpt["state_dict"].items():
        if key.startswith("model.") and value.is_floating_point() and "running_" not in key:  # BatchNorm stats stay valid
            ckpt["state_dict"][key] = value + 0.05 * torch.randn(value.shape, generator=gen)
    torch.save(ckpt, folder / "last.ckpt")
    best = torch.load(folder / "best.ckpt", weights_only=True)["state_dict"]
    last = torch.load(folder / "last.ckpt", weights_only=True)["state_dict"]
    assert any(not torch.equal(best[k], last[k]) for k in best if k.startswith("model."))


def raw_test_rows(trained):
    """The test split as decoded rows, made "raw": integer id/age columns, gender coded M/F."""
    artifact = trained["artifact"]
    lo, hi = artifact.split_ranges["test"]
    space = artifact.space
    decoded = pl.DataFrame({c: [space.values[f][k] for k in artifact.value_ids[lo:hi, f]]
                            for f, c in enumerate(space.schema.field_columns)})
    raw = decoded.with_columns(pl.col("user_id", "movie_id", "age").cast(pl.Int64),
                               pl.col("gender").replace({"male": "M", "female": "F"}))
    return decoded, raw, np.arange(lo, hi)


def lightning_probs(run: Path, feature_ids: np.ndarray, name: str = "best.ckpt") -> np.ndarray:
    """The Lightning module restored from the run's checkpoint ``name``, on given feature ids."""
    from omegaconf import OmegaConf

    from flip_ctr.models.id import build_id_model

    cfg = OmegaConf.load(run / "config.yaml")
    spec = {k: v for k, v in OmegaConf.to_container(cfg.id_model).items() if k != "_target_"}
    ckpt = torch.load(run / "checkpoints" / name, weights_only=True)
    num_features = ckpt["state_dict"]["model.embedding.weight"].shape[0] - 1  # + the <MASK> row
    model = build_id_model(**spec, num_features=num_features, num_fields=feature_ids.shape[1])
    module = FinetuneIDModule.load_from_checkpoint(run / "checkpoints" / name, model=model).eval()
    with torch.no_grad():
        return torch.sigmoid(module({"feature_ids": torch.from_numpy(feature_ids)})).numpy()


def test_export_and_predict_raw_parquet_match_the_lightning_model(trained, tmp_path):
    decoded, raw, rows = raw_test_rows(trained)
    extra = pl.DataFrame(UNSEEN, schema_overrides={"user_id": pl.Int64, "movie_id": pl.Int64, "age": pl.Int64})
    raw = pl.concat([raw, extra.select(raw.columns)])
    raw.write_parquet(tmp_path / "rows.parquet")

    model_dir = tmp_path / "model"
    proc = run_cli("export", str(trained["run"]), "--out", str(model_dir), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.onnx", "serving.json", "vocab.json"]
    meta = json.loads((model_dir / "serving.json").read_text())
    assert meta["sha256"] == {n: hashlib.sha256((model_dir / n).read_bytes()).hexdigest() for n in ("model.onnx", "vocab.json")}
    proc = run_cli("predict", str(model_dir), "--input", str(tmp_path / "rows.parquet"),
                   "--output", str(tmp_path / "out" / "preds.parquet"), cwd=tmp_path,
                   light=("torch", "transformers", "lightning", "torchmetrics"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    artifact = trained["artifact"]
    unseen_rows = int((artifact.value_ids[rows] > np.asarray(artifact.space.num_seen)).any(axis=1).sum())
    assert unseen_rows > 0 and f"; {unseen_rows + 2} row(s) with a value unseen" in proc.stdout, proc.stdout
    out = pl.read_parquet(tmp_path / "out" / "preds.parquet")
    assert out.height == raw.height and out.drop("prob").equals(raw)  # one per row, input order and columns kept
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["preds.parquet"]  # no temp file left behind
    probs = out["prob"].to_numpy()

    # the Lightning model's own test-set predictions (trainer.test on the best checkpoint)
    reference = pl.read_parquet(trained["run"] / "predictions.parquet").sort("row_id")
    assert reference["row_id"].to_numpy().tolist() == rows.tolist()
    diff = np.abs(probs[: len(rows)] - reference["prob"].to_numpy()).max()
    print(f"parity max abs diff on {len(rows)} test rows: {diff:.2e}")
    assert diff <= 1e-6
    # never-seen values: the Lightning module on FeatureSpace.lookup's ids (unseen → the field's OOV id)
    space = trained["artifact"].space
    unseen_decoded = pl.DataFrame({c: serving.decode_raw(extra[c], "ml100k", c) for c in space.schema.field_columns})
    ids = space.lookup(unseen_decoded)
    assert (ids[0] == np.asarray(space.field_offsets[:-1])).all()  # first extra row: every field OOV
    assert (ids[1] != np.asarray(space.field_offsets[:-1])).sum() >= 5  # second: mostly known values
    assert np.abs(probs[len(rows):] - lightning_probs(trained["run"], ids)).max() <= 1e-6
    assert len(set(np.round(probs, 6))) > 2  # the rows really differ


@pytest.fixture(scope="module")
def model_dir(trained, tmp_path_factory) -> Path:
    """The trained run, exported once (tests that damage it work on a copy)."""
    return serving.export(trained["run"], tmp_path_factory.mktemp("exported") / "model")


def test_exported_vocabularies_match_the_feature_space(trained, model_dir, tmp_path):
    decoded, raw, _ = raw_test_rows(trained)
    scorer = serving.load_model_dir(model_dir)
    space = trained["artifact"].space
    assert scorer.columns == space.schema.field_columns and scorer.dataset == "ml100k"
    # vocab.json's lookup == FeatureSpace.lookup, on decoded and on raw values
    ids = serving.encode_rows(scorer, decoded)[0]
    np.testing.assert_array_equal(ids, space.lookup(decoded))
    np.testing.assert_array_equal(ids, serving.encode_rows(scorer, raw)[0])
    # a run dir (exported in memory) scores like its exported directory
    rows = _write(raw, tmp_path / "rows.csv")
    via_run_dir = serving.predict(trained["run"], rows, tmp_path / "p.csv")["prob"].to_numpy()
    via_model_dir = serving.predict(model_dir, rows, tmp_path / "q.csv")["prob"].to_numpy()
    np.testing.assert_allclose(via_model_dir, via_run_dir, atol=1e-6, rtol=0)


def test_export_serves_the_best_checkpoint_unless_told_otherwise(trained, model_dir, tmp_path):
    """best.ckpt (what the test metrics were computed with) by default; --ckpt last serves last.ckpt.
    The fixture's last.ckpt holds other weights, so serving the wrong one changes the predictions."""
    decoded, raw, rows = raw_test_rows(trained)
    ids = trained["artifact"].space.lookup(decoded)
    reference = pl.read_parquet(trained["run"] / "predictions.parquet").sort("row_id")["prob"].to_numpy()
    assert Path(json.loads((model_dir / "serving.json").read_text())["checkpoint"]).name == "best.ckpt"
    served = serving.load_model_dir(model_dir)(ids)
    np.testing.assert_allclose(served, reference, atol=1e-6, rtol=0)
    # a run directory scored in memory serves best.ckpt too
    via_run = serving.predict(trained["run"], _write(raw, tmp_path / "rows.csv"), tmp_path / "p.csv")["prob"].to_numpy()
    np.testing.assert_allclose(via_run, reference, atol=1e-6, rtol=0)

    last_dir = serving.export(trained["run"], tmp_path / "last", ckpt="last")
    assert Path(json.loads((last_dir / "serving.json").read_text())["checkpoint"]).name == "last.ckpt"
    last = serving.load_model_dir(last_dir)(ids)
    np.testing.assert_allclose(last, lightning_probs(trained["run"], ids, "last.ckpt"), atol=1e-6, rtol=0)
    assert np.abs(last - reference).max() > 1e-3  # the two checkpoints are told apart


def _write(frame: pl.DataFrame, path: Path) -> Path:
    frame.write_csv(path)
    return path


def refused(capsys, *argv: str) -> str:
    """Runs `flip-ctr <argv>` in process; asserts one line on stderr and exit 2; returns the line."""
    with pytest.raises(SystemExit) as exit_info:
        serving.main(list(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_missing_column_and_wrong_stage_are_named(trained, tmp_path, capsys):
    _, raw, _ = raw_test_rows(trained)
    raw.drop("genre", "zipcode").write_parquet(tmp_path / "rows.parquet")
    line = refused(capsys, "predict", str(trained["run"]), "--input", str(tmp_path / "rows.parquet"),
                   "--output", str(tmp_path / "p.parquet"))
    assert "['zipcode', 'genre']" in line and "user_id" in line and "rows.parquet" in line
    assert not (tmp_path / "p.parquet").exists()
    plm_run = tmp_path / "plm_run"
    plm_run.mkdir()
    config = (trained["run"] / "config.yaml").read_text()
    (plm_run / "config.yaml").write_text(config.replace("name: finetune_id", "name: finetune_plm"))
    assert "finetune_plm" in refused(capsys, "export", str(plm_run), "--out", str(tmp_path / "m"))


def _flip(path: Path, start: int = 40, stop: int = 80) -> None:
    data = bytearray(path.read_bytes())
    data[start:stop] = bytes(b ^ 0xFF for b in data[start:stop])
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {  # what happens to the model directory → the file the refusal must name
    "flipped model.onnx": (lambda d: _flip(d / "model.onnx"), "model.onnx"),
    "truncated model.onnx": (lambda d: _truncate(d / "model.onnx"), "model.onnx"),
    "flipped vocab.json": (lambda d: _flip(d / "vocab.json", 30, 31), "vocab.json"),
    "missing vocab.json": (lambda d: (d / "vocab.json").unlink(), "vocab.json"),
    "truncated serving.json": (lambda d: _truncate(d / "serving.json"), "serving.json"),
    "TorchScript model dir": (lambda d: (d / "serving.json").write_text(json.dumps({"format_version": 1})), "serving.json"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_model_dir_is_refused_in_one_line(damage, trained, model_dir, tmp_path, capsys):
    _, raw, _ = raw_test_rows(trained)
    raw.write_parquet(tmp_path / "rows.parquet")
    damaged = tmp_path / "model"
    shutil.copytree(model_dir, damaged)
    before = {n: hashlib.sha256((damaged / n).read_bytes()).hexdigest() for n in ("model.onnx", "vocab.json")}
    harm, culprit = DAMAGE[damage]
    harm(damaged)
    line = refused(capsys, "predict", str(damaged), "--input", str(tmp_path / "rows.parquet"),
                   "--output", str(tmp_path / "preds.parquet"))
    assert str(damaged / culprit) in line, line
    if damage.startswith(("flipped", "truncated model")):
        found = hashlib.sha256((damaged / culprit).read_bytes()).hexdigest()
        assert f"expected {before[culprit]}" in line and f"found {found}" in line, line
    assert not (tmp_path / "preds.parquet").exists()


def test_non_finite_outputs_are_refused_naming_the_rows(trained, model_dir, tmp_path, capsys):
    """A model that passes its digests but gives NaN for one value (its embedding row poisoned
    after export's parity check) is refused, and no output is written."""
    decoded, raw, _ = raw_test_rows(trained)
    model, space, meta = serving.load_run(trained["run"])
    genre = decoded["genre"][3]
    with torch.no_grad():
        model.embedding.weight[space.lookup(decoded[3:4])[0, space.schema.field_columns.index("genre")]] = float("nan")
    files = {"model.onnx": serving.onnx_graph(model, space), "vocab.json": (model_dir / "vocab.json").read_bytes()}
    poisoned = serving.write_model_dir(tmp_path / "poisoned", files, json.loads((model_dir / "serving.json").read_text()))
    raw.write_parquet(tmp_path / "rows.parquet")
    line = refused(capsys, "predict", str(poisoned), "--input", str(tmp_path / "rows.parquet"),
                   "--output", str(tmp_path / "preds.parquet"))
    rows = np.flatnonzero((decoded["genre"] == genre).to_numpy())
    assert line.startswith(f"flip-ctr predict: {poisoned}: non-finite probabilities"), line
    assert f"non-finite probabilities for {rows.size} of {raw.height} rows" in line, line
    assert f"rows {', '.join(map(str, rows[:10]))}" in line, line
    assert not (tmp_path / "preds.parquet").exists()


def _bad_inputs(raw: pl.DataFrame, tmp: Path) -> dict[str, tuple[Path, str]]:
    """name → (input file, what the one line must say)."""
    (tmp / "empty.csv").write_bytes(b"")
    (tmp / "empty.parquet").write_bytes(b"")
    (tmp / "garbage.parquet").write_bytes(b"PAR1 not really a parquet file")
    raw.with_columns(pl.col("genre").str.split(", ")).write_parquet(tmp / "list.parquet")
    raw.with_columns(pl.struct("user_id", "age").alias("age")).write_parquet(tmp / "struct.parquet")
    return {
        "empty csv": (tmp / "empty.csv", "empty file"),
        "empty parquet": (tmp / "empty.parquet", "empty file"),
        "not parquet": (tmp / "garbage.parquet", "cannot read it as parquet"),
        "list column": (tmp / "list.parquet", "field column 'genre' has type List(String) (first value ['"),
        "struct column": (tmp / "struct.parquet", "field column 'age' has type Struct("),
        "missing file": (tmp / "nowhere.csv", "no such file"),
        "not a table": (tmp / "rows.json", "must be a .parquet, .pq, .csv or .tsv file"),
    }


def test_bad_input_is_one_line_exit_2_and_nothing_written(trained, model_dir, tmp_path, capsys):
    _, raw, _ = raw_test_rows(trained)
    for name, (path, says) in _bad_inputs(raw, tmp_path).items():
        line = refused(capsys, "predict", str(model_dir), "--input", str(path), "--output", str(tmp_path / "out" / "p.csv"))
        assert str(path) in line and says in line, (name, line)
        assert not (tmp_path / "out").exists(), name
    # the real command: the same line and status, and no traceback
    proc = run_cli("predict", str(model_dir), "--input", str(tmp_path / "empty.csv"), "--output", str(tmp_path / "p.csv"),
                   cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"flip-ctr predict: {tmp_path / 'empty.csv'}: empty file (0 bytes: no header, no rows)"], proc.stderr
    assert not (tmp_path / "p.csv").exists()


def test_decode_raw_matches_the_loaders():
    def dec(values, dataset, column, dtype=None):
        return serving.decode_raw(pl.Series(column, values, dtype=dtype), dataset, column).to_list()

    assert dec(["M", "female", None, " "], "ml1m", "gender") == ["male", "female", "unknown", "unknown"]
    assert dec([1, 25, 56], "ml1m", "age") == ["under 18", "25-34", "56+"]
    assert dec(["4", "writer"], "ml1m", "occupation") == ["college/grad student", "writer"]
    assert dec(["Animation|Children's|Comedy", "Drama, War", ""], "ml1m", "genre") == [
        "Animation, Children's, Comedy", "Drama, War", "unknown"]
    assert dec(["Toy Story (1995)", "Good Morning"], "ml100k", "title") == ["Toy Story", "Good Morning"]
    assert dec([24.0, None, float("nan")], "ml100k", "age", pl.Float64) == ["24", "unknown", "unknown"]
    assert dec([4.5], "goodreads", "average_rating", pl.Float64) == ["4.5"]
    assert dec(["NULL", "31"], "bookcrossing", "age") == ["unknown", "31"]
    assert dec(["1"], "ml100k", "occupation") == ["1"]  # codes are dataset- and column-specific


ID_MODEL_NAMES = sorted(__import__("flip_ctr.models.id", fromlist=["ID_MODELS"]).ID_MODELS)
DEFAULT_LINEAR = {"afm", "deepfm", "wide_deep", "xdeepfm"}  # models whose linear_term defaults to true
VARIANTS = {
    **{name: (name, {}) for name in ID_MODEL_NAMES},
    # the optional first-order term the other way round (present → None, None → present)
    **{f"{name}-linear_{name not in DEFAULT_LINEAR}": (name, {"linear_term": name not in DEFAULT_LINEAR}) for name in ID_MODEL_NAMES},
    "dcnv2-mix": ("dcnv2", {"cross_type": "mix", "num_cross_layers": 2, "low_rank": 4}),
}


def _calibrate_batch_norm(model, num_features: int) -> None:
    """Batch-norm running statistics as training leaves them. Untrained (mean 0, variance 1),
    AFN's exp-layer outputs reach ~1e4 and even torch alone differs by 7e-6 between a batch of
    300 and the same rows one at a time; calibrated, torch and onnxruntime agree to 1e-7."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = None  # cumulative average: one pass sets the statistics of its batch
    model.train()
    with torch.no_grad():
        model(torch.randint(0, num_features + 1, (1024, model.num_fields)))
    model.eval()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_id_model_exports_with_parity(variant):
    from flip_ctr.models.id import build_id_model

    name, kwargs = VARIANTS[variant]
    schema = DatasetSchema("toy", tuple(Field(c, c) for c in ("user", "item", "genre")))
    space = FeatureSpace(schema, [["unknown", "u1", "u2"], ["unknown", "i1", "i2", "i3"], ["unknown", "Drama"]], [2, 3, 1])
    torch.manual_seed(0)
    model = build_id_model(name, num_features=space.num_features, num_fields=3, embedding_dim=8,
                           dnn_hidden_units=(16,), **kwargs).eval()
    first_order = model.wide if name == "wide_deep" else model.linear  # Wide&Deep calls it the wide part
    assert (first_order is None) == (not kwargs.get("linear_term", name in DEFAULT_LINEAR))
    if first_order is not None:  # zero-initialised: make the term count
        torch.nn.init.normal_(first_order.weight, std=0.5)
    _calibrate_batch_norm(model, space.num_features)
    scorer = serving.make_scorer(serving.onnx_model(model, space), serving.vocab_json(space), "toy")
    for batch in (1, 5, 300):
        ids = torch.randint(0, space.num_features + 1, (batch, 3))  # every id, the <MASK> row included
        with torch.no_grad():
            expected = torch.sigmoid(model(ids)[1]).numpy()
        np.testing.assert_allclose(scorer(ids.numpy()), expected, atol=1e-6, rtol=0)
    frame = pl.DataFrame({"user": ["u2", "nobody"], "item": ["i3", "i1"], "genre": ["Drama", "Comedy"]})
    ids, unseen = serving.encode_rows(scorer, frame)  # unseen → the field's OOV id
    np.testing.assert_array_equal(ids, [[2, 6, 8], [0, 4, 7]])
    assert unseen.tolist() == [[False, False, False], [True, False, True]]


# -- written against mutation survivors (scripts/mutation.py serving; scripts/mutation_notes.md) ----
# In-process and without the trained run: mutmut sees what they call, and they cost milliseconds.
def _help(capsys, monkeypatch, *argv: str) -> str:
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps at the terminal width
    with pytest.raises(SystemExit) as exit_info:
        serving.main([*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_cli_help_names_every_command_and_option(capsys, monkeypatch):
    top = _help(capsys, monkeypatch)
    assert top.startswith("usage: flip-ctr [-h] {export,predict} ... Export and batch prediction of ID-model stages. "), top
    assert "export run dir → model dir (model.onnx + vocab.json + serving.json) " in top, top
    assert "predict raw rows (CSV/Parquet) → rows + prob " in top, top
    exp = _help(capsys, monkeypatch, "export")
    assert exp.startswith("usage: flip-ctr export [-h] --out OUT [--ckpt CKPT] [--num-threads NUM_THREADS] run_dir "), exp
    assert "--ckpt CKPT checkpoint path, or best/last (default: best, else last) " in exp, exp
    assert exp.endswith("--num-threads NUM_THREADS threads (default: onnxruntime's and torch's choice)"), exp
    pred = _help(capsys, monkeypatch, "predict")
    assert pred.startswith("usage: flip-ctr predict [-h] --input INPUT --output OUTPUT [--ckpt CKPT] [--batch-size BATCH_SIZE] "
                           "[--num-threads NUM_THREADS] model "), pred
    assert "model exported model dir, or a run dir (exported in memory) " in pred, pred
    assert "--ckpt CKPT with a run dir: checkpoint path, or best/last " in pred, pred
    assert pred.endswith("--num-threads NUM_THREADS threads (default: onnxruntime's and torch's choice)"), pred


@pytest.mark.parametrize("argv, missing", [
    ([], "command"), (["export", "RUN"], "--out"), (["predict", "M", "--output", "o.csv"], "--input"),
    (["predict", "M", "--input", "i.csv"], "--output"),
])
def test_cli_required_arguments(argv, missing, capsys):
    with pytest.raises(SystemExit) as exit_info:
        serving.main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"error: the following arguments are required: {missing}")


def test_cli_passes_its_arguments_through(monkeypatch, capsys):
    calls, threads = [], []
    monkeypatch.setattr(serving, "export", lambda *a: calls.append(("export", a)) or Path("M"))
    monkeypatch.setattr(serving, "predict", lambda *a: calls.append(("predict", a)))
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    serving.main(["export", "RUN", "--out", "M", "--ckpt", "last", "--num-threads", "3"])
    assert capsys.readouterr().out == "exported RUN → M/model.onnx (+ vocab.json, serving.json)\n"
    serving.main(["export", "RUN", "--out", "M"])
    serving.main(["predict", "MODEL", "--input", "i.csv", "--output", "o.csv", "--ckpt", "c.ckpt", "--batch-size", "7",
                  "--num-threads", "2"])
    serving.main(["predict", "MODEL", "--input", "i.csv", "--output", "o.csv"])
    assert calls == [
        ("export", ("RUN", "M", "last")), ("export", ("RUN", "M", None)),
        ("predict", ("MODEL", "i.csv", "o.csv", "c.ckpt", 7, 2)), ("predict", ("MODEL", "i.csv", "o.csv", None, 1024, None)),
    ]
    assert threads == [3]  # export sets torch's threads only when asked


def test_cli_refusal_is_one_line_even_for_a_multi_line_message(monkeypatch, capsys):
    def fail(*_):
        raise ValueError("first\nsecond")

    monkeypatch.setattr(serving, "predict", fail)
    with pytest.raises(SystemExit) as exit_info:
        serving.main(["predict", "M", "--input", "i.csv", "--output", "o.csv"])
    assert exit_info.value.code == 2 and capsys.readouterr().err == "flip-ctr predict: first second\n"


def test_first_line_and_value_hint_by_hand():
    assert serving._first_line(ValueError("  first\nsecond ")) == "first"
    assert serving._first_line(ValueError("only")) == "only"
    assert serving._first_line(KeyError()) == "KeyError" and serving._first_line(ValueError("  ")) == "ValueError"
    assert serving._value_hint("ml100k") == "values as the ml100k loader decodes them, or raw; see docs/serving.md"
    assert serving._value_hint("table") == "raw values as in the training table; see docs/serving.md"
    assert serving._value_hint("my_csv") == "raw values as in the training table; see docs/serving.md"  # not a loader


def test_rows_written_in_the_format_their_name_says(tmp_path):
    frame = pl.DataFrame({"user_id": ["007", "8"], "prob": pl.Series([0.25, 0.5], dtype=pl.Float32)})
    serving.write_rows(frame, tmp_path / "p.parquet")
    assert pl.read_parquet(tmp_path / "p.parquet").equals(frame)
    serving.write_rows(frame, tmp_path / "p.tsv")
    assert (tmp_path / "p.tsv").read_text() == "user_id\tprob\n007\t0.25\n8\t0.5\n"
    serving.write_rows(frame, tmp_path / "p.CSV")
    assert (tmp_path / "p.CSV").read_text() == "user_id,prob\n007,0.25\n8,0.5\n"
    assert serving.read_rows(tmp_path / "p.tsv")["user_id"].to_list() == ["007", "8"]  # read as text: zeros kept
    assert serving.read_rows(tmp_path / "p.parquet").equals(frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.CSV", "p.parquet", "p.tsv"]
    with pytest.raises(serving.ServingError, match=rf"^{tmp_path}/p\.json: the output must be a \.parquet, \.pq, \.csv or \.tsv file$"):
        serving.write_rows(frame, tmp_path / "p.json")


def test_predict_ids_in_batches_and_on_no_rows():
    calls = []

    def scorer(ids):
        calls.append(len(ids))
        return ids.sum(axis=1).astype(np.float32)

    ids = np.arange(10, dtype=np.int64).reshape(5, 2)
    np.testing.assert_array_equal(serving.predict_ids(scorer, ids, batch_size=2), [1, 5, 9, 13, 17])
    assert calls == [2, 2, 1]
    empty = serving.predict_ids(scorer, ids[:0])
    assert empty.shape == (0,) and empty.dtype == np.float32 and calls == [2, 2, 1]


def test_model_dir_is_shared_readable_with_digests(tmp_path):
    out = serving.write_model_dir(tmp_path / "m", {"model.onnx": b"graph", "vocab.json": b"{}"}, {"dataset": "toy"})
    assert out == tmp_path / "m" and (out.stat().st_mode & 0o777) == 0o755
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "serving.json", "vocab.json"]
    assert (out / "model.onnx").read_bytes() == b"graph"
    assert json.loads((out / "serving.json").read_text()) == {
        "dataset": "toy", "sha256": {"model.onnx": hashlib.sha256(b"graph").hexdigest(), "vocab.json": hashlib.sha256(b"{}").hexdigest()}}
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp dir left


def test_non_finite_refusal_lists_at_most_ten_rows():
    probs = np.full(20, 0.5, dtype=np.float32)
    serving.refuse_non_finite(probs, "M")  # all finite: no refusal
    probs[[1, 3, 4, 5, 6, 7, 8, 9, 10, 12]] = np.nan
    probs[12] = np.inf
    tail = "; nothing written: the model is damaged or diverged"
    with pytest.raises(serving.ServingError) as err:
        serving.refuse_non_finite(probs, "M")
    assert str(err.value) == f"M: non-finite probabilities for 10 of 20 rows (0-based data rows 1, 3, 4, 5, 6, 7, 8, 9, 10, 12){tail}"
    probs[19] = -np.inf  # an 11th row: ten shown, then "..."
    with pytest.raises(serving.ServingError) as err:
        serving.refuse_non_finite(probs, "M")
    assert str(err.value) == f"M: non-finite probabilities for 11 of 20 rows (0-based data rows 1, 3, 4, 5, 6, 7, 8, 9, 10, 12, ...){tail}"


def test_export_metadata_and_overwriting_by_hand(monkeypatch, tmp_path):
    """export's serving.json from a toy model and feature space (load_run stubbed: no trained run),
    with a field that has missing markers; an exported model dir or an empty one is replaced,
    any other directory refused."""
    from flip_ctr.models.id import build_id_model

    schema = DatasetSchema("toy", (Field("user", "user id", "user", ("?", "n/a")), Field("item", "item", "item")))
    space = FeatureSpace(schema, [["unknown", "u1", "u2"], ["unknown", "i1"]], [2, 1])
    torch.manual_seed(0)
    model = build_id_model("dcnv2", num_features=space.num_features, num_fields=2, embedding_dim=4, dnn_hidden_units=(8,)).eval()
    _calibrate_batch_norm(model, space.num_features)
    monkeypatch.setattr(serving, "load_run", lambda run_dir, ckpt: (model, space, {"run_dir": str(run_dir), "ckpt": ckpt}))
    out = serving.export("RUN", tmp_path / "m", ckpt="last")
    meta = json.loads((out / "serving.json").read_text())
    assert set(meta.pop("sha256")) == {"model.onnx", "vocab.json"}
    assert meta == {
        "run_dir": "RUN", "ckpt": "last", "format_version": 2, "dataset": "toy", "columns": ["user", "item"],
        "field_names": ["user id", "item"], "missing": {"user": ["?", "n/a"]}, "num_features": 5, "vocabulary_sizes": [2, 1],
        "inputs": {"feature_ids": "int64 [batch, 2]"}, "outputs": {"prob": "float32 [batch]"}, "torch": torch.__version__,
    }
    assert serving.export("RUN", out) == out and json.loads((out / "serving.json").read_text())["ckpt"] is None  # replaced
    (tmp_path / "empty").mkdir()
    assert (serving.export("RUN", tmp_path / "empty") / "serving.json").is_file()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=rf"^{tmp_path}/other exists and is not an exported model: refusing to overwrite it$"):
        serving.export("RUN", tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_unreadable_serving_json_message(tmp_path):
    (tmp_path / "serving.json").write_text("{trunc")
    with pytest.raises(serving.ServingError, match=rf"^{tmp_path}/serving\.json: unreadable \(Expecting property name enclosed "
                       r"in double quotes: line 1 column 2 \(char 1\)\); re-export the model$"):
        serving.read_meta(tmp_path)
    (tmp_path / "serving.json").write_text(json.dumps({"format_version": 1}))
    says = "this flip-ctr reads 2 (1 was TorchScript): re-export with `flip-ctr export`"
    with pytest.raises(serving.ServingError) as err:
        serving.read_meta(tmp_path)
    assert str(err.value) == f"{tmp_path}/serving.json: format_version 1, {says}"
    (tmp_path / "serving.json").write_text("[2]")  # JSON, but not an object
    with pytest.raises(serving.ServingError) as err:
        serving.read_meta(tmp_path)
    assert str(err.value) == f"{tmp_path}/serving.json: format_version None, {says}"


# -- the functions every parity test reaches, by hand (same origin; session 10) ---------------------
def _toy_space() -> FeatureSpace:
    """Three fields: one with two training values (plus "u3", only outside training), one with
    none, one with one (and a missing marker)."""
    schema = DatasetSchema("toy", (Field("user", "user id", "user"), Field("empty", "empty"),
                                   Field("item", "item", "item", ("?", "n/a"))))
    return FeatureSpace(schema, [["unknown", "u1", "u2", "u3"], ["unknown"], ["unknown", "é"]], [2, 0, 1])


@pytest.fixture(scope="module")
def toy_export():
    """(model, space, model.onnx bytes) of a tiny calibrated DCNv2 on _toy_space (~2 s to export)."""
    from flip_ctr.models.id import build_id_model

    space = _toy_space()
    torch.manual_seed(0)
    model = build_id_model("dcnv2", num_features=space.num_features, num_fields=3, embedding_dim=4, dnn_hidden_units=(8,)).eval()
    _calibrate_batch_norm(model, space.num_features)
    return model, space, serving.onnx_model(model, space)


def _toy_files(toy_export) -> dict[str, bytes]:
    """model.onnx and vocab.json of the toy export, as write_model_dir takes them."""
    _, space, graph = toy_export
    return {"model.onnx": graph, "vocab.json": serving.vocab_json(space)}


def test_find_checkpoint_by_hand(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match=rf"^no checkpoint best\.ckpt or last\.ckpt in {folder}$"):
        serving.find_checkpoint(tmp_path)
    old, new = folder / "epoch=0.ckpt", folder / "epoch=1.ckpt"
    for seconds, path in ((1000, old), (2000, new)):
        path.write_bytes(b"x")
        os.utime(path, (seconds, seconds))
    (folder / "notes.txt").write_bytes(b"x")
    os.utime(folder / "notes.txt", (3000, 3000))
    assert serving.find_checkpoint(tmp_path) == new  # neither best nor last: the newest checkpoint
    os.utime(old, (4000, 4000))
    assert serving.find_checkpoint(tmp_path) == old
    with pytest.raises(FileNotFoundError, match=rf"^no checkpoint last\.ckpt in {folder}$"):
        serving.find_checkpoint(tmp_path, "last")  # asked for by name: no fallback
    (folder / "last.ckpt").write_bytes(b"x")
    assert serving.find_checkpoint(tmp_path) == serving.find_checkpoint(tmp_path, "last") == folder / "last.ckpt"
    with pytest.raises(FileNotFoundError, match=rf"^no checkpoint best\.ckpt in {folder}$"):
        serving.find_checkpoint(tmp_path, "best")
    (folder / "best.ckpt").write_bytes(b"x")
    os.utime(folder / "best.ckpt", (10, 10))  # older than the others, and still the default
    assert serving.find_checkpoint(tmp_path) == serving.find_checkpoint(tmp_path, "best") == folder / "best.ckpt"
    assert serving.find_checkpoint(tmp_path, "last") == folder / "last.ckpt"
    assert serving.find_checkpoint(tmp_path, str(old)) == old  # a path
    with pytest.raises(FileNotFoundError, match=rf"^checkpoint {tmp_path}/nowhere\.ckpt not found$"):
        serving.find_checkpoint(tmp_path, str(tmp_path / "nowhere.ckpt"))


def test_decode_raw_generic_rules_by_hand():
    def dec(values, dataset="table", column="x", dtype=None, missing=()):
        return serving.decode_raw(pl.Series("raw", values, dtype=dtype), dataset, column, missing).to_list()

    assert serving.decode_raw(pl.Series("raw", ["a"]), "table", "x").name == "x"
    assert dec([" u1 ", "?", "n/a", None, "", "u2"], missing=["?", "n/a"]) == ["u1", "unknown", "unknown", "unknown", "unknown", "u2"]
    assert dec(["?"]) == ["?"]  # a marker only where the schema names it
    assert dec([1.5, 2.0], dtype=pl.Float64) == ["1.5", "2.0"]  # not all integral: kept as floats
    assert dec([1.0, None, float("nan")], dtype=pl.Float32) == ["1", "unknown", "unknown"]
    assert dec([7, None], dtype=pl.Int32) == ["7", "unknown"]
    assert dec([True, False]) == ["true", "false"]
    assert dec(["(1995)", "Heat (1995)"], "ml100k", "title") == ["unknown", "Heat"]  # a bare year leaves no title
    assert dec(["M", "F"], "ml100k", "gender") == ["male", "female"] and dec(["M"], "table", "gender") == ["M"]
    assert dec(["Drama", "Drama|War"], "ml1m", "genre") == ["Drama", "Drama, War"]
    assert dec(["Drama|War"], "ml100k", "genre") == ["Drama|War"]
    assert dec(["Heat (1995)"], "table", "title") == ["Heat (1995)"] and dec(["Heat (1995)"], "ml100k", "zipcode") == ["Heat (1995)"]
    assert dec(["null", "NULL", " 31 ", "0"], "bookcrossing", "age") == ["unknown", "unknown", "31", "0"]  # "Null": below
    assert dec(["0", "1999", "NULL"], "bookcrossing", "year") == ["unknown", "1999", "NULL"]
    assert dec(["0", "NULL"], "bookcrossing", "isbn") == ["0", "NULL"]


def test_bookcrossing_raw_values_decode_as_the_loader_decodes_them(tmp_path):
    """Raw Book-Crossing age/year values (NULL in any case, a quoted "null", year 0) through the
    real loader on a fixture dump, and through decode_raw: the same decoded values."""
    import fixtures_data as fx
    from flip_ctr.data.sources.bookcrossing import load_bookcrossing

    ages = ["NULL", '"null"', '"Null"', '"31"', '" 18 "']
    users = [fx.BX_USERS[0], *(f'"{u}";"somewhere";{age}' for u, age in enumerate(ages, start=1))]
    years = ["0", "1999", "2001"]
    books = [fx.BX_BOOKS_HEADER, *(f'"{isbn:010d}";"T";"A";"{year}";"P";"s";"m";"l"' for isbn, year in enumerate(years))]
    ratings = fx.bx_ratings_lines([(str(u), f"{i:010d}", "7") for u in range(1, len(ages) + 1) for i in range(len(years))])
    table = load_bookcrossing(fx.write_bookcrossing(tmp_path / "bx", users=users, books=books, ratings=ratings)).table
    raw_age = {str(u): a.strip('"') for u, a in enumerate(ages, start=1)}
    raw_year = {f"{i:010d}": y for i, y in enumerate(years)}
    served_age = serving.decode_raw(pl.Series([raw_age[u] for u in table["user_id"]]), "bookcrossing", "age")
    served_year = serving.decode_raw(pl.Series([raw_year[i] for i in table["isbn"]]), "bookcrossing", "year")
    assert served_age.to_list() == table["age"].to_list() and served_year.to_list() == table["year"].to_list()
    assert set(table["age"]) == {"unknown", "31", "18"} and set(table["year"]) == {"unknown", "1999", "2001"}


def test_lookup_decodes_each_distinct_value_and_maps_it_back_onto_the_rows():
    ids = serving._lookup(pl.Series("user", ["u1", None, " u2", "zz", "u1", "?", "unknown"]), "table", "user",
                          {"u1": 11, "u2": 12}, 10, ["?"])
    assert ids.dtype == np.int64 and ids.tolist() == [11, 10, 12, 10, 11, 10, 10]
    ids = serving._lookup(pl.Series("age", [1.0, float("nan"), None, 1.0, 2.0]), "table", "age", {"1": 5, "2": 6}, 3, [])
    assert ids.tolist() == [5, 3, 3, 5, 6]  # NaN and null: distinct values, both missing
    assert serving._lookup(pl.Series("g", ["M", "F", "X"]), "ml100k", "gender", {"male": 1, "female": 2}, 0, []).tolist() == [1, 2, 0]


def test_encode_rows_by_hand():
    scorer = serving.Scorer("toy", ["user", "item"], [{"u1": 1, "u2": 2}, {"i1": 4}], [0, 3], [[], ["?"]], session=None)
    frame = pl.DataFrame({"extra": [1, 2, 3], "item": ["i1", "?", "i9"], "user": ["u2", "u1", None]})
    ids, unseen = serving.encode_rows(scorer, frame)
    assert ids.dtype == np.int64 and ids.tolist() == [[2, 4], [1, 3], [0, 3]]
    assert unseen.tolist() == [[False, False], [False, True], [True, True]]
    with pytest.raises(serving.ServingError) as err:
        serving.encode_rows(scorer, frame.drop("item"), "in.csv")
    assert str(err.value) == ("in.csv: no field column(s) ['item']; a toy model expects the columns ['user', 'item'] "
                              "(raw values as in the training table; see docs/serving.md)")
    ml100k = serving.Scorer("ml100k", ["user_id"], [{}], [0], [[]], session=None)
    with pytest.raises(serving.ServingError, match=r"\(values as the ml100k loader decodes them, or raw; see docs/serving\.md\)$"):
        serving.encode_rows(ml100k, frame)
    with pytest.raises(serving.ServingError, match=r"^input: field column 'user' has type List\(Int64\) \(first value \[1\]\); "):
        serving.encode_rows(scorer, frame.with_columns(user=pl.Series([[1], None, [2]])))


def test_field_types_accepted_and_refused_by_hand():
    import datetime

    for column in (pl.Series("c", [1, 2]), pl.Series("c", [1.5]), pl.Series("c", ["a"]), pl.Series("c", [True]),
                   pl.Series("c", [None, None]), pl.Series("c", ["a"], dtype=pl.Categorical), pl.Series("c", ["a"], dtype=pl.Enum(["a"])),
                   pl.Series("c", [1], dtype=pl.UInt8)):
        serving._check_field_type(column, "in")  # no refusal
    tail = "; a field column holds one text or number per row"
    cases = [
        (pl.Series("d", [None, datetime.date(2020, 1, 1)]), f"in: field column 'd' has type Date (first value datetime.date(2020, 1, 1)){tail}"),
        (pl.Series("l", [None], dtype=pl.List(pl.String)), f"in: field column 'l' has type List(String){tail}"),  # no value to show
        (pl.Series("b", [b"x"]), f"in: field column 'b' has type Binary (first value b'x'){tail}"),
    ]
    for column, message in cases:
        with pytest.raises(serving.ServingError) as err:
            serving._check_field_type(column, "in")
        assert str(err.value) == message


def test_read_rows_formats_and_refusals_by_hand(tmp_path):
    frame = pl.DataFrame({"user": ["007", "8"], "n": [1, 2]})
    frame.write_parquet(tmp_path / "rows.pq")
    assert serving.read_rows(tmp_path / "rows.pq").equals(frame)
    (tmp_path / "rows.TSV").write_text("user\tn\n007\t1\n")
    assert serving.read_rows(tmp_path / "rows.TSV").to_dict(as_series=False) == {"user": ["007"], "n": ["1"]}  # all text
    (tmp_path / "rows.csv").write_text("user,n\n007,1\n")
    assert serving.read_rows(tmp_path / "rows.csv").to_dict(as_series=False) == {"user": ["007"], "n": ["1"]}
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(serving.ServingError, match=rf"^{tmp_path}/dir\.csv: is a directory$"):
        serving.read_rows(tmp_path / "dir.csv")
    with pytest.raises(serving.ServingError, match=rf"^{tmp_path}/none\.parquet: no such file$"):
        serving.read_rows(tmp_path / "none.parquet")
    (tmp_path / "ragged.csv").write_text("user,n\n007,1,9\n")
    try:
        pl.read_csv(tmp_path / "ragged.csv", infer_schema=False)
    except pl.exceptions.PolarsError as err:
        says = str(err).strip().splitlines()[0]  # polars' own message, first line
    with pytest.raises(serving.ServingError) as err:
        serving.read_rows(tmp_path / "ragged.csv")
    assert str(err.value) == f"{tmp_path}/ragged.csv: cannot read it as csv ({says})"
    with pytest.raises(serving.ServingError, match=rf"^{tmp_path}/rows\.xlsx: the input must be a \.parquet, \.pq, \.csv or \.tsv file$"):
        serving.read_rows(tmp_path / "rows.xlsx")


def test_vocabularies_and_vocab_json_by_hand():
    space = _toy_space()
    assert space.field_offsets == [0, 3, 4, 6]  # each field: its training values and its OOV id
    vocab, oov = serving.vocabularies(space)
    assert vocab == [{"u1": 1, "u2": 2}, {}, {"é": 5}] and list(oov) == [0, 3, 4]  # "u3" (not in training) left out
    data = serving.vocab_json(space)
    assert "é".encode() in data  # UTF-8, not \u escapes
    assert json.loads(data) == {"dataset": "toy", "fields": [
        {"column": "user", "oov": 0, "missing": [], "ids": {"u1": 1, "u2": 2}},
        {"column": "empty", "oov": 3, "missing": [], "ids": {}},
        {"column": "item", "oov": 4, "missing": ["?", "n/a"], "ids": {"é": 5}},
    ]}


def test_parity_rows_by_hand():
    space = _toy_space()
    rows = serving.parity_rows(space, n=40, seed=1)
    assert rows.dtype == np.int64 and rows.shape == (42, 3)
    assert rows[0].tolist() == [0, 3, 4]  # every field OOV
    assert rows[1].tolist() == [1, 3, 5]  # every field's first value (the empty field stays OOV)
    assert set(rows[2:, 0].tolist()) == {1, 2} and set(rows[2:, 1].tolist()) == {3} and set(rows[2:, 2].tolist()) == {5}
    np.testing.assert_array_equal(rows, serving.parity_rows(space, n=40, seed=1))
    assert not np.array_equal(rows, serving.parity_rows(space, n=40, seed=2))
    assert serving.parity_rows(space).shape == (258, 3)  # default: 256 random rows
    assert not np.array_equal(serving.parity_rows(space)[2:42], rows[2:])  # default seed 0


def test_probability_module_by_hand():
    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

        def forward(self, ids):
            return None, self.scale * ids.sum(dim=1).double()

    inner = Logits().train()
    served = serving.probability_module(inner)
    out = served(torch.tensor([[0, 1], [-1, -2]]))
    assert out.dtype == torch.float32 and not out.requires_grad and not served.training and not inner.training
    torch.testing.assert_close(out, torch.sigmoid(torch.tensor([2.0, -6.0])), rtol=0, atol=1e-7)


def test_parity_check_refuses_a_graph_that_differs_by_hand():
    space = _toy_space()

    def served(ids):
        return ids.sum(dim=1).float() / 10

    class Session:
        def __init__(self, shift=0.0, single_row_shift=0.0):
            self.shift, self.single_row_shift, self.calls = shift, single_row_shift, []

        def run(self, outputs, feeds):
            rows = feeds["feature_ids"]
            self.calls.append(len(rows))
            return [rows.sum(axis=1).astype(np.float32) / 10 + (self.single_row_shift if len(rows) == 1 else self.shift)]

    exact = Session()
    serving._check_parity(served, exact, space)
    assert exact.calls == [258, 1]  # a batch, then a single row
    serving._check_parity(served, Session(shift=5e-7), space)  # within PARITY_ATOL (1e-6)
    class AtTheBound:  # a difference of exactly PARITY_ATOL (float64: 1e-6 has no float32 form) is accepted
        def run(self, outputs, feeds):
            return [np.full(len(feeds["feature_ids"]), serving.PARITY_ATOL)]

    serving._check_parity(lambda ids: torch.zeros(len(ids)), AtTheBound(), space)
    for session in (Session(shift=1e-3), Session(single_row_shift=1e-3), Session(shift=float("nan"))):
        with pytest.raises(serving.ServingError, match=r"^the ONNX graph differs from the eager model by (0\.001|nan) \(> 1e-06\): not exported$"):
            serving._check_parity(served, session, space)


def test_scorer_from_bytes_by_hand(toy_export):
    model, space, graph = toy_export
    vocab = serving.vocab_json(space)
    scorer = serving.make_scorer(graph, vocab, "M", num_threads=2)
    assert (scorer.dataset, scorer.columns, scorer.oov) == ("toy", ["user", "empty", "item"], [0, 3, 4])
    assert scorer.vocab == [{"u1": 1, "u2": 2}, {}, {"é": 5}] and scorer.missing == [[], [], ["?", "n/a"]]
    options = scorer.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level) == (2, 1, 3)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert serving.make_scorer(graph, vocab, "M").session.get_session_options().intra_op_num_threads == 0
    ids = serving.parity_rows(space, n=8)
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(ids))[1]).numpy()
    np.testing.assert_allclose(scorer(ids), expected, atol=1e-6, rtol=0)
    bare = serving.make_scorer(graph, json.dumps({"fields": [{"column": "a", "ids": {}, "oov": "3"}]}).encode(), "M")
    assert (bare.dataset, bare.oov, bare.missing) == ("None", [3], [[]])  # no dataset, oov as text, no markers
    for data, says in ((b"not json", "Expecting value: line 1 column 1 (char 0)"), (b'{"fields": [{"column": "a"}]}', "'ids'"),
                       (b'{"fields": 3}', "'int' object is not iterable"), (b"[]", "list indices must be integers or slices, not str")):
        with pytest.raises(serving.ServingError) as err:
            serving.make_scorer(graph, data, "M")
        assert str(err.value) == f"M/vocab.json: not a flip-ctr vocabulary ({says})"
    with pytest.raises(serving.ServingError, match=r"^M/model\.onnx: onnxruntime cannot load it \(\[ONNXRuntimeError\] : 7 : INVALID_PROTOBUF"):
        serving.make_scorer(b"junk", vocab, "M")


def test_predict_from_a_toy_model_dir_by_hand(toy_export, tmp_path, capsys, monkeypatch):
    model, _, _ = toy_export
    model_dir = serving.write_model_dir(tmp_path / "m", _toy_files(toy_export), {"format_version": serving.FORMAT_VERSION})
    frame = pl.DataFrame({"item": ["é", "?", "é", "?"], "empty": ["x", "y", None, "z"], "user": ["u2", "u3", "u1", "u1"]})
    frame.write_csv(tmp_path / "rows.csv")
    handed = {}
    real_load_scorer, real_predict_ids = serving.load_scorer, serving.predict_ids
    monkeypatch.setattr(serving, "load_scorer", lambda *a: handed.setdefault("load_scorer", a) and real_load_scorer(*a))
    monkeypatch.setattr(serving, "predict_ids", lambda *a: handed.setdefault("predict_ids", a[2:]) is not None and real_predict_ids(*a))
    out = serving.predict(model_dir / "model.onnx", tmp_path / "rows.csv", tmp_path / "p.parquet", ckpt="last", batch_size=2, num_threads=1)
    assert handed["load_scorer"] == (model_dir / "model.onnx", "last", 1) and handed["predict_ids"] == (2,)
    # per field (user 1, empty 4, item 2), not per row (2, 3, 2, 2)
    assert capsys.readouterr().out == (f"wrote 4 probabilities to {tmp_path}/p.parquet; 4 row(s) with a value unseen in training "
                                       "(scored with the field's OOV embedding): user 1, empty 4, item 2\n")
    ids = np.array([[2, 3, 5], [0, 3, 4], [1, 3, 5], [1, 3, 4]])  # "u3" and "?" → OOV; the empty field is always OOV
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(ids))[1]).numpy()
    assert out.columns == ["item", "empty", "user", "prob"] and out["prob"].dtype == pl.Float32
    np.testing.assert_allclose(out["prob"].to_numpy(), expected, atol=1e-6, rtol=0)
    assert pl.read_parquet(tmp_path / "p.parquet").equals(out)
    # with no value unseen, the line ends at the count
    real_encode_rows = serving.encode_rows
    monkeypatch.setattr(serving, "encode_rows", lambda *a: (real_encode_rows(*a)[0], np.zeros((4, 3), dtype=bool)))
    serving.predict(model_dir, tmp_path / "rows.csv", tmp_path / "q.csv")
    assert capsys.readouterr().out == (f"wrote 4 probabilities to {tmp_path}/q.csv; 0 row(s) with a value unseen in training "
                                       "(scored with the field's OOV embedding)\n")
    (tmp_path / "q.csv").unlink()
    # a bad output name is refused before the model is even looked at
    with pytest.raises(serving.ServingError, match=r"^o\.json: the output must be"):
        serving.predict(tmp_path / "nowhere", tmp_path / "rows.csv", "o.json")
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path}/nowhere is neither an exported model \(serving\.json\) nor a run directory \(config\.yaml\)$"):
        serving.predict(tmp_path / "nowhere", tmp_path / "rows.csv", tmp_path / "o.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "p.parquet", "rows.csv"]


def _copy_run(trained, dest: Path, edit=None) -> Path:
    """The trained run's config and checkpoints under ``dest``; ``edit(cfg)`` changes the config."""
    from omegaconf import OmegaConf

    shutil.copytree(trained["run"] / "checkpoints", dest / "checkpoints")
    cfg = OmegaConf.load(trained["run"] / "config.yaml")
    if edit:
        edit(cfg)
    OmegaConf.save(cfg, dest / "config.yaml")
    return dest


def test_load_run_by_hand(trained, tmp_path):
    from omegaconf import OmegaConf

    from flip_ctr.models.id import build_id_model
    from flip_ctr.stages.checkpoints import save_id_model

    run = trained["run"]
    model, space, meta = serving.load_run(run)
    cfg = OmegaConf.load(run / "config.yaml")
    spec = {k: v for k, v in OmegaConf.to_container(cfg.id_model, resolve=True).items() if k != "_target_"}
    spec.update(num_features=space.num_features, num_fields=space.num_fields)
    best = run / "checkpoints" / "best.ckpt"
    assert meta == {"run_dir": str(run.resolve()), "checkpoint": str(best.resolve()), "stage": "finetune_id", "id_model": spec}
    state = torch.load(best, weights_only=True)["state_dict"]
    assert all(torch.equal(value, state[f"model.{key}"]) for key, value in model.state_dict().items())
    expected = trained["artifact"].space
    assert (space.values, space.num_seen, space.schema) == (expected.values, expected.num_seen, expected.schema)
    assert serving.load_run(str(run), "last")[2]["checkpoint"] == str((run / "checkpoints" / "last.ckpt").resolve())

    # a pipeline stage directory: the stage is cfg.stages[<directory name>], there is no cfg.stage
    def as_pipeline(cfg):
        cfg.stages = {"pretrain": {"name": "pretrain"}, "finetune_id": cfg.stage}
        del cfg["stage"]

    pipeline_stage = _copy_run(trained, tmp_path / "pipeline" / "finetune_id", as_pipeline)
    assert serving.load_run(pipeline_stage)[2]["stage"] == "finetune_id"
    # FLIP_ID after pretraining: the architecture is the aligned model's (cfg.id_model set wrong here)
    aligned = tmp_path / "aligned"
    aligned.mkdir()
    save_id_model(aligned / "id_model.pt", model, spec)

    def pretrained_with_wrong_id_model(cfg):
        cfg.stage.pretrained_dir = str(aligned)
        cfg.id_model.embedding_dim = spec["embedding_dim"] + 1

    flip_id = _copy_run(trained, tmp_path / "flip_id", pretrained_with_wrong_id_model)
    assert serving.load_run(flip_id)[2]["id_model"] == spec
    empty_aligned = tmp_path / "empty_aligned"
    empty_aligned.mkdir()  # no id_model.pt: cfg.id_model is the architecture
    no_payload = _copy_run(trained, tmp_path / "no_payload", lambda cfg: setattr(cfg.stage, "pretrained_dir", str(empty_aligned)))
    assert serving.load_run(no_payload)[2]["id_model"] == spec

    # refusals, message by message
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        serving.load_run(tmp_path / "bare")
    assert str(err.value) == f"{tmp_path}/bare is neither an exported model (serving.json) nor a run directory (config.yaml)"
    plm = _copy_run(trained, tmp_path / "plm", lambda cfg: setattr(cfg.stage, "name", "finetune_plm"))
    with pytest.raises(ValueError) as err:
        serving.load_run(plm)
    assert str(err.value) == f"{plm}: export serves ID-model stages (ctr, finetune_id), this run is stage 'finetune_plm'"
    stageless = _copy_run(trained, tmp_path / "stageless", lambda cfg: cfg.pop("stage"))
    with pytest.raises(ValueError, match=r"this run is stage '\?'$"):
        serving.load_run(stageless)
    grown = dict(spec, num_features=spec["num_features"] + 1)
    save_id_model(aligned / "id_model.pt", build_id_model(**grown), grown)
    with pytest.raises(ValueError) as err:
        serving.load_run(flip_id)
    assert str(err.value) == (f"{flip_id}: the model has {space.num_features + 1} features / {space.num_fields} fields, the data now "
                              f"gives {space.num_features} / {space.num_fields}: the data changed since training")
    damaged = _copy_run(trained, tmp_path / "damaged")
    (damaged / "checkpoints" / "best.ckpt").write_bytes(b"not a zip")
    try:
        torch.load(damaged / "checkpoints" / "best.ckpt", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch's own message, first line
        says = str(err).strip().splitlines()[0]
    with pytest.raises(serving.ServingError) as err:
        serving.load_run(damaged)
    assert str(err.value) == f"{damaged}/checkpoints/best.ckpt: not a readable checkpoint ({says})"
    # a checkpoint that would run code to unpickle (any object outside torch's weights-only allowlist) is refused
    import fractions

    pickled = _copy_run(trained, tmp_path / "pickled")
    ckpt = torch.load(pickled / "checkpoints" / "best.ckpt", weights_only=False)
    torch.save({**ckpt, "extra": fractions.Fraction(1, 3)}, pickled / "checkpoints" / "best.ckpt")
    with pytest.raises(serving.ServingError, match=r"^.+best\.ckpt: not a readable checkpoint \(Weights only load failed"):
        serving.load_run(pickled)
    # the id_model config as the run saved it: interpolations resolved, no _target_ needed
    def interpolated(cfg):
        cfg.embedding_dim_of_run = cfg.id_model.embedding_dim
        cfg.id_model.embedding_dim = "${embedding_dim_of_run}"
        del cfg.id_model["_target_"]

    assert serving.load_run(_copy_run(trained, tmp_path / "interpolated", interpolated))[2]["id_model"] == spec


def test_feature_space_reads_the_split_and_defaults_like_the_datamodule(trained, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    data = OmegaConf.load(trained["run"] / "config.yaml").data
    space = serving.feature_space(data)
    assert (space.values, space.num_seen) == (trained["artifact"].space.values, trained["artifact"].space.num_seen)
    bare = OmegaConf.create({k: v for k, v in data.items() if k not in ("test_fraction", "val_fraction", "engine", "loader_kwargs")})
    bare.cache_dir = str(tmp_path / "cache")  # built again from the data, with the defaults
    default = serving.feature_space(bare)
    assert (default.values, default.num_seen) == (space.values, space.num_seen)
    # the test fraction moves the training part (train + validation), hence the vocabulary
    other = serving.feature_space(OmegaConf.merge(data, {"test_fraction": 0.4, "cache_dir": str(tmp_path / "test")}))
    assert (other.values, other.num_seen) != (space.values, space.num_seen)
    # the validation fraction splits the training part: the same vocabulary, another cache entry
    shared = {"cache_dir": str(tmp_path / "shared")}
    serving.feature_space(OmegaConf.merge(data, shared))
    val = serving.feature_space(OmegaConf.merge(data, shared, {"val_fraction": 0.4}))
    assert (val.values, val.num_seen) == (space.values, space.num_seen)
    assert len([p for p in (tmp_path / "shared").iterdir() if p.name.startswith("ml100k-")]) == 2
    from flip_ctr.data.schema import DataError
    from flip_ctr.data.sources.download import ENV_VAR

    # no data_dir: the data root ($FLIP_CTR_DATA_DIR here) / data_subdir, as the datamodule reads it
    # (a subfolder name of our own: the ML-100K loader also finds "ml-100k" under the root itself)
    shutil.copytree(data.data_dir, tmp_path / "root" / "my-copy")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "root"))
    via_root = serving.feature_space(OmegaConf.merge(data, {"data_dir": None, "data_subdir": "my-copy", "cache_dir": str(tmp_path / "c")}))
    assert (via_root.values, via_root.num_seen) == (space.values, space.num_seen)
    with pytest.raises(DataError, match=r"^ML-100K format must be 'auto', 'original' or 'atomic', got 'nonsense'$"):
        serving.feature_space(OmegaConf.merge(data, {"loader_kwargs": {"format": "nonsense"}}))  # loader options passed on
    with pytest.raises(DataError, match=r"^data\.engine=streaming builds from a Parquet table"):  # the engine is passed on
        serving.feature_space(OmegaConf.merge(data, {"engine": "streaming", "cache_dir": str(tmp_path / "streaming")}))


def test_onnx_graph_names_shapes_and_quiet_export_by_hand(toy_export, monkeypatch, recwarn, capsys):
    import logging
    import types
    import warnings

    import onnx

    model, space, _ = toy_export
    warnings_before = len(recwarn)
    capsys.readouterr()
    graph = onnx.load_from_string(serving.onnx_graph(model, space))
    assert capsys.readouterr().out == ""  # verbose=False: torch.onnx prints its progress otherwise
    # torch's LeafSpec FutureWarning is filtered, and torch.onnx logs errors only (its per-op warnings)
    assert [str(w.message) for w in recwarn.list[warnings_before:] if "LeafSpec" in str(w.message)] == []
    assert logging.getLogger("torch.onnx").level == logging.ERROR
    (inp,), (out,) = graph.graph.input, graph.graph.output
    assert (inp.name, out.name) == ("feature_ids", "prob")
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.INT64 and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    batch, fields = inp.type.tensor_type.shape.dim
    assert batch.dim_param == "batch" and not batch.dim_value and fields.dim_value == space.num_fields  # a dynamic axis, named
    (out_batch,) = out.type.tensor_type.shape.dim
    assert out_batch.dim_param == batch.dim_param

    def warning_exporter(*args, **kwargs):  # only torch's LeafSpec FutureWarning is silenced, nothing else
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", UserWarning)
        warnings.warn("another deprecation", FutureWarning)
        return types.SimpleNamespace(model_proto=types.SimpleNamespace(SerializeToString=lambda: b"graph"))

    monkeypatch.setattr(torch.onnx, "export", warning_exporter)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert serving.onnx_graph(model, space) == b"graph"
    assert [(w.category, str(w.message)) for w in seen] == [
        (UserWarning, "`isinstance(treespec, LeafSpec)` is deprecated"), (FutureWarning, "another deprecation")]

    def missing_exporter(*args, **kwargs):
        raise ImportError("No module named 'onnxscript'", name="onnxscript")

    monkeypatch.setattr(torch.onnx, "export", missing_exporter)
    with pytest.raises(serving.ServingError) as err:
        serving.onnx_graph(model, space)
    assert str(err.value) == f"export needs onnxscript: {serving.SERVING_EXTRA}"
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: (_ for _ in ()).throw(ImportError("no onnx")))
    with pytest.raises(serving.ServingError, match=r"^export needs onnx: pip install 'flip-ctr\[serving\]' \(onnx, onnxscript, onnxruntime\)$"):
        serving.onnx_graph(model, space)


def test_session_without_onnxruntime_by_hand(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    with pytest.raises(serving.ServingError) as err:
        serving._session(b"", "M/model.onnx")
    assert str(err.value) == "onnxruntime is not installed: pip install 'flip-ctr[serving]' (onnx, onnxscript, onnxruntime)"


def test_onnx_model_refuses_a_graph_without_parity(toy_export, monkeypatch):
    model, space, _ = toy_export
    with monkeypatch.context() as patch:
        patch.setattr(serving, "onnx_graph", lambda m, s: b"junk")
        with pytest.raises(serving.ServingError, match=r"^the exported graph: onnxruntime cannot load it \(\[ONNXRuntimeError\]"):
            serving.onnx_model(model, space)
    from flip_ctr.models.id import build_id_model

    other = build_id_model("dcnv2", num_features=space.num_features, num_fields=3, embedding_dim=4, dnn_hidden_units=(8,))
    _calibrate_batch_norm(other, space.num_features)
    other_graph = serving.onnx_graph(other, space)
    monkeypatch.setattr(serving, "onnx_graph", lambda m, s: other_graph)  # the graph of another model
    with pytest.raises(serving.ServingError, match=r"^the ONNX graph differs from the eager model by .+ \(> 1e-06\): not exported$"):
        serving.onnx_model(model, space)


def test_load_scorer_finds_the_model_dir_of_a_file_in_it(toy_export, tmp_path):
    model, space, graph = toy_export
    model_dir = serving.write_model_dir(tmp_path / "m", _toy_files(toy_export), {"format_version": serving.FORMAT_VERSION})
    ids = serving.parity_rows(space, n=4)
    for path in (model_dir, model_dir / "model.onnx", model_dir / "serving.json", str(model_dir)):
        scorer = serving.load_scorer(path, num_threads=1)
        assert scorer.columns == ["user", "empty", "item"] and scorer.session.get_session_options().intra_op_num_threads == 1
        np.testing.assert_array_equal(scorer(ids), serving.make_scorer(graph, serving.vocab_json(space), "x")(ids))
    (tmp_path / "loose.onnx").write_bytes(graph)  # a file outside any model dir: not a model dir
    with pytest.raises(FileNotFoundError) as err:
        serving.load_scorer(tmp_path / "loose.onnx")
    assert str(err.value) == f"{tmp_path}/loose.onnx is neither an exported model (serving.json) nor a run directory (config.yaml)"


def test_load_model_dir_refusals_name_the_file_and_serving_json(toy_export, tmp_path):
    from flip_ctr.integrity import IntegrityError

    files = _toy_files(toy_export)
    good = serving.write_model_dir(tmp_path / "good", files, {"format_version": 2})
    assert serving.load_model_dir(good).columns == ["user", "empty", "item"]
    meta = good / "serving.json"
    recorded = json.loads(meta.read_text())["sha256"]["vocab.json"]
    (good / "vocab.json").write_bytes(b"{}")
    with pytest.raises(IntegrityError) as err:
        serving.load_model_dir(good)
    assert str(err.value) == (f"{good}/vocab.json: SHA-256 mismatch: expected {recorded} (recorded in {meta}), found "
                              f"{hashlib.sha256(b'{}').hexdigest()}; the file changed after it was written (corrupted, truncated or edited)")
    unrecorded = serving.write_model_dir(tmp_path / "unrecorded", files, {"format_version": 2})
    (unrecorded / "serving.json").write_text(json.dumps({"format_version": 2}))  # no sha256 at all
    with pytest.raises(IntegrityError) as err:
        serving.load_model_dir(str(unrecorded))
    assert str(err.value) == (f"{unrecorded}/model.onnx: no SHA-256 recorded for it in {unrecorded}/serving.json: "
                              "refusing to load an unverified file")
    # digests that match a vocabulary that is not one: make_scorer names the model dir's file
    bad_vocab = serving.write_model_dir(tmp_path / "bad_vocab", {**files, "vocab.json": b"[]"}, {"format_version": 2})
    with pytest.raises(serving.ServingError) as err:
        serving.load_model_dir(bad_vocab)
    assert str(err.value) == f"{bad_vocab}/vocab.json: not a flip-ctr vocabulary (list indices must be integers or slices, not str)"


def test_feature_space_of_an_own_table_reads_path_and_schema(tmp_path):
    from omegaconf import OmegaConf

    from flip_ctr.data.preprocess import SplitConfig, build_artifact
    from flip_ctr.data.sources.table import load_table
    from test_own_data import write_shop

    table, schema = write_shop(tmp_path)
    expected = build_artifact(load_table(table, schema), SplitConfig())["space"]
    space = serving.feature_space(OmegaConf.create({"dataset": "table", "path": str(table), "schema": str(schema),
                                                    "cache_dir": str(tmp_path / "cache")}))
    assert (space.schema, space.values, space.num_seen) == (expected.schema, expected.values, expected.num_seen)


def test_load_scorer_of_a_run_dir_passes_ckpt_threads_and_names_the_source(trained, monkeypatch):
    decoded, _, _ = raw_test_rows(trained)
    ids = trained["artifact"].space.lookup(decoded)
    last = serving.load_scorer(trained["run"], "last", num_threads=1)
    assert last.session.get_session_options().intra_op_num_threads == 1
    np.testing.assert_allclose(last(ids), lightning_probs(trained["run"], ids, "last.ckpt"), atol=1e-6, rtol=0)
    monkeypatch.setattr(serving, "vocab_json", lambda space: b"[]")
    with pytest.raises(serving.ServingError) as err:
        serving.load_scorer(trained["run"])
    assert str(err.value).startswith(f"{trained['run']} (exported in memory)/vocab.json: not a flip-ctr vocabulary (")
