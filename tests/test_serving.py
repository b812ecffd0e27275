"""Serving: `flip-ctr export` (TorchScript + vocabularies) and `flip-ctr predict` on raw rows.

One FLIP_ID-stage run (`flip-ctr train stage=finetune_id`, from scratch: no aligned checkpoint
is needed to exercise the serving path) on the ML-100K fixture is exported and scored:

- parity: on the test split the exported model reproduces the Lightning model's
  predictions.parquet (written by trainer.test) to 1e-5; on rows with values never seen in
  training it matches the Lightning module on FeatureSpace.lookup's OOV ids;
- raw input: typed columns (integer ids), coded values (gender M/F) and nulls are decoded as
  the loader decodes them; a missing column is an error that names it;
- predict imports neither Lightning nor transformers;
- every ID model exports (scripted, or traced where TorchScript cannot compile it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from flip_ctr import serving
from flip_ctr.data.preprocess import FeatureSpace
from flip_ctr.data.schema import DatasetSchema, Field

TESTS = Path(__file__).resolve().parent
UNSEEN = {  # values that occur nowhere in the fixture
    "user_id": [99999, 99998], "age": [7, None], "gender": [None, "M"], "occupation": ["astronaut", None],
    "zipcode": [None, "00000"], "movie_id": [424242, 1], "title": ["A Film Nobody Saw (2031)", "Toy Story (1995)"],
    "release_year": ["2031", "1995"], "genre": ["Space Opera", "Animation, Children's, Comedy"],
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # fails if the command imported Lightning or transformers (FLIP_ID serves at ID-model cost)
    code = (
        "import sys; from flip_ctr.cli import main; main(sys.argv[1:]); "
        "heavy = [m for m in ('transformers', 'lightning', 'torchmetrics') if m in sys.modules]; "
        "assert not heavy, f'imported {heavy}'"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from test_datamodule import make_dm, write_ml100k_fixture

    root = tmp_path_factory.mktemp("serving")
    data = write_ml100k_fixture(root / "data" / "ml-100k")
    run = root / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "flip_ctr.cli", "train", f"data.data_dir={data}", f"data.cache_dir={root / 'cache'}",
         f"hydra.run.dir={run}", "stage=finetune_id", "stage.batch_size=32", "stage.max_epochs=2", "logger=none",
         "num_threads=1"],
        capture_output=True, text=True, timeout=120, cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    artifact = make_dm(data, root / "cache").artifact
    return {"root": root, "run": run, "artifact": artifact}


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


def lightning_probs(run: Path, feature_ids: np.ndarray) -> np.ndarray:
    """The Lightning module restored from the run's best checkpoint, on given feature ids."""
    from omegaconf import OmegaConf

    from flip_ctr.models.id import build_id_model
    from flip_ctr.stages.finetune_id import FinetuneIDModule

    cfg = OmegaConf.load(run / "config.yaml")
    spec = {k: v for k, v in OmegaConf.to_container(cfg.id_model).items() if k != "_target_"}
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    num_features = ckpt["state_dict"]["model.embedding.weight"].shape[0] - 1  # + the <MASK> row
    model = build_id_model(**spec, num_features=num_features, num_fields=feature_ids.shape[1])
    module = FinetuneIDModule.load_from_checkpoint(run / "checkpoints" / "best.ckpt", model=model).eval()
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
    assert (model_dir / "model.pt").is_file() and (model_dir / "serving.json").is_file()
    proc = run_cli("predict", str(model_dir), "--input", str(tmp_path / "rows.parquet"),
                   "--output", str(tmp_path / "out" / "preds.parquet"), cwd=tmp_path)
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
    assert diff <= 1e-5
    # never-seen values: the Lightning module on FeatureSpace.lookup's ids (unseen → the field's OOV id)
    space = trained["artifact"].space
    unseen_decoded = pl.DataFrame({c: serving.decode_raw(extra[c], "ml100k", c) for c in space.schema.field_columns})
    ids = space.lookup(unseen_decoded)
    assert (ids[0] == np.asarray(space.field_offsets[:-1])).all()  # first extra row: every field OOV
    assert (ids[1] != np.asarray(space.field_offsets[:-1])).sum() >= 5  # second: mostly known values
    assert np.abs(probs[len(rows):] - lightning_probs(trained["run"], ids)).max() <= 1e-5
    assert len(set(np.round(probs, 6))) > 2  # the rows really differ


def test_exported_module_carries_its_vocabularies(trained, tmp_path):
    decoded, raw, _ = raw_test_rows(trained)
    model_dir = serving.export(trained["run"], tmp_path / "model")
    scorer = torch.jit.load(str(model_dir / "model.pt"))
    space = trained["artifact"].space
    assert list(scorer.columns) == space.schema.field_columns and scorer.dataset == "ml100k"
    # in-module lookup (TorchScript encode) == FeatureSpace.lookup == predict's polars lookup
    ids = scorer.encode([decoded[c].to_list() for c in scorer.columns]).numpy()
    np.testing.assert_array_equal(ids, space.lookup(decoded))
    np.testing.assert_array_equal(ids, serving.encode_rows(scorer, raw)[0])
    via_run_dir = serving.predict(trained["run"], _write(raw, tmp_path / "rows.csv"), tmp_path / "p.csv")["prob"]
    np.testing.assert_allclose(scorer.score([decoded[c].to_list() for c in scorer.columns]).numpy(),
                               via_run_dir.to_numpy(), atol=1e-6)


def _write(frame: pl.DataFrame, path: Path) -> Path:
    frame.write_csv(path)
    return path


def test_missing_column_and_wrong_stage_are_named(trained, tmp_path, capsys):
    _, raw, _ = raw_test_rows(trained)
    raw.drop("genre", "zipcode").write_parquet(tmp_path / "rows.parquet")
    with pytest.raises(SystemExit) as err:
        serving.main(["predict", str(trained["run"]), "--input", str(tmp_path / "rows.parquet"),
                      "--output", str(tmp_path / "p.parquet")])
    assert "['zipcode', 'genre']" in str(err.value) and "user_id" in str(err.value)
    assert not (tmp_path / "p.parquet").exists()
    plm_run = tmp_path / "plm_run"
    plm_run.mkdir()
    config = (trained["run"] / "config.yaml").read_text()
    (plm_run / "config.yaml").write_text(config.replace("name: finetune_id", "name: finetune_plm"))
    with pytest.raises(SystemExit, match="finetune_plm"):
        serving.main(["export", str(plm_run), "--out", str(tmp_path / "m")])


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


@pytest.mark.parametrize("name", sorted(__import__("flip_ctr.models.id", fromlist=["ID_MODELS"]).ID_MODELS))
def test_every_id_model_exports_with_parity(name, tmp_path):
    from flip_ctr.models.id import build_id_model

    schema = DatasetSchema("toy", tuple(Field(c, c) for c in ("user", "item", "genre")))
    space = FeatureSpace(schema, [["unknown", "u1", "u2"], ["unknown", "i1", "i2", "i3"], ["unknown", "Drama"]], [2, 3, 1])
    torch.manual_seed(0)
    model = build_id_model(name, num_features=space.num_features, num_fields=3, embedding_dim=8,
                           dnn_hidden_units=(16,)).eval()
    path = tmp_path / "m.pt"
    torch.jit.save(serving.script_scorer(model, space), str(path))
    scorer = torch.jit.load(str(path))
    for batch in (1, 5):
        ids = torch.randint(0, space.num_features, (batch, 3))
        with torch.no_grad():
            expected = torch.sigmoid(model(ids)[1])
        torch.testing.assert_close(scorer(ids), expected, atol=1e-6, rtol=0)
    probs = scorer.score([["u2", "nobody"], ["i3", "i1"], ["Drama", "Comedy"]])  # unseen → OOV id
    torch.testing.assert_close(probs, scorer(torch.tensor([[2, 6, 8], [0, 4, 7]])))
