"""notebooks/*.ipynb run top to bottom (nbclient, a real Jupyter kernel) on a tiny `flip-ctr
pipeline` run over the ML-100K fixture, pointed at it through FLIP_CTR_RUN_DIR; what they print
and draw is checked against the run's files and flip_ctr's own functions."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from test_cli import quiet_env
from test_datamodule import write_ml100k_fixture

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("notebooks")
    data = write_ml100k_fixture(root / "data" / "ml-100k")
    overrides = [
        "plm=tiny_random", f"data.data_dir={data}", f"data.cache_dir={root / 'cache'}", f"paths.log_dir={root / 'logs'}",
        "strategies=[scratch,finetune_id]", "stages.pretrain.max_epochs=1", "stages.pretrain.batch_size=64",
        "stages.pretrain.limit_train_batches=3", "stages.scratch.max_epochs=1", "stages.finetune_id.max_epochs=1",
        "ablation.head_hidden_dim=32", "logger=csv", "num_threads=1", "trainer.log_every_n_steps=1",
    ]
    proc = subprocess.run([sys.executable, "-m", "flip_ctr.cli", "pipeline", *overrides],
                          capture_output=True, text=True, timeout=300, cwd=root, env=quiet_env())
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    (summary,) = (root / "logs").rglob("summary.json")
    return summary.parent


def execute(name: str, run_dir: Path, tmp_path: Path, monkeypatch) -> tuple[str, int]:
    """Runs the notebook in a kernel; returns (all its text output, number of images it drew)."""
    for key, value in {**quiet_env(), "FLIP_CTR_RUN_DIR": str(run_dir), "FLIP_CTR_PLOT_DIR": str(tmp_path / "plots"),
                       "MPLBACKEND": "module://matplotlib_inline.backend_inline"}.items():
        monkeypatch.setenv(key, value)
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not cell.get("outputs") for cell in book.cells if cell.cell_type == "code"), "commit notebooks without outputs"
    client = nbclient.NotebookClient(book, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    texts, images = [], 0
    for cell in book.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                texts.append(output["text"])
            data = output.get("data", {})
            texts.append(data.get("text/markdown", "") + data.get("text/plain", ""))
            images += "image/png" in data
    return "\n".join(texts), images


def test_results_overview(pipeline_run, tmp_path, monkeypatch):
    text, images = execute("results_overview.ipynb", pipeline_run, tmp_path, monkeypatch)
    for strategy, label in (("scratch", "dcnv2"), ("finetune_id", "FLIP_ID")):
        auc = json.loads((pipeline_run / strategy / "metrics.json").read_text())["auc"]
        assert re.search(rf"\| {label} \| [^|]+ \| 1 \| {auc:.4f} ± 0\.0000", text), (label, auc)
    assert "#### " not in text and "### overall" in text and "### ablations" in text
    assert images >= 2  # the AUC bars and the training curves
    assert "no mask-ratio / temperature / lr sweep" in text  # one run: nothing swept


def test_embedding_svd(pipeline_run, tmp_path, monkeypatch):
    from flip_ctr.analysis import embedding_svd
    from flip_ctr.stages.checkpoints import load_id_model

    text, images = execute("embedding_svd.ipynb", pipeline_run, tmp_path, monkeypatch)
    model, _ = load_id_model(pipeline_run / "pretrain" / "aligned")
    _, spectrum = embedding_svd(model.embedding.weight[:-1])
    assert f"aligned (after pretraining): top-2 singular values hold {spectrum[:2].sum():.4f}" in text
    checkpoint = pipeline_run / "scratch" / "checkpoints" / "best.ckpt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    _, scratch_spectrum = embedding_svd(state["model.embedding.weight"][:-1])
    assert f"from scratch: top-2 singular values hold {scratch_spectrum[:2].sum():.4f}" in text
    assert "FLIP_ID (finetuned): top-2" in text and images == 1


def test_alignment_heatmap(pipeline_run, tmp_path, monkeypatch):
    text, images = execute("alignment_heatmap.ipynb", pipeline_run, tmp_path, monkeypatch)
    csv = pipeline_run / "analysis" / "alignment_heatmap.csv"
    fields = csv.read_text().splitlines()[0].split(",")
    heatmap = np.loadtxt(csv, delimiter=",", skiprows=1, ndmin=2)
    assert heatmap.shape == (len(fields), len(fields)) == (9, 9)  # the ML-100K fields
    hits = int((np.diag(heatmap) >= heatmap.max(axis=1) - 1e-9).sum())
    assert f"diagonal is the row maximum for {hits} of 9 fields" in text
    assert f"mean similarity: diagonal {np.diag(heatmap).mean():.4f}" in text
    assert images == 1
    # what the CSV masks: test row 0 of the run, each field masked by hand (tests/test_analysis.py),
    # encoded as the run pretrained (this pipeline's default: text_encoding=per_field)
    np.testing.assert_allclose(heatmap, hand_masked_heatmap_of_run(pipeline_run, row=0), rtol=1e-4, atol=1e-5)


def hand_masked_heatmap_of_run(run_dir: Path, row: int) -> np.ndarray:
    """The oracle of ``analyze()``'s heatmap, from the run's own files: its aligned models and
    heads, and its config's test split (row order is the test loader's, which does not shuffle)."""
    import hydra
    from omegaconf import OmegaConf

    from flip_ctr.analysis import icl_head_from
    from flip_ctr.stages.checkpoints import load_aligned_plm, load_heads, load_id_model
    from test_analysis import hand_masked_heatmap, hand_masked_per_field_heatmap

    aligned = run_dir / "pretrain" / "aligned"
    cfg = OmegaConf.load(run_dir / "pretrain" / "config.yaml")
    id_model, _ = load_id_model(aligned)
    plm = load_aligned_plm(aligned).eval()
    icl = icl_head_from(load_heads(aligned), text_dim=plm.hidden_size, id_dim=id_model.representation_dim).eval()
    datamodule = hydra.utils.instantiate(cfg.data, tokenizer=cfg.plm.name_or_path, eval_batch_size=8)
    datamodule.setup()
    batch = next(iter(datamodule.test_dataloader()))
    per_field = OmegaConf.select(cfg, "stages.pretrain.text_encoding") == "per_field"
    oracle = hand_masked_per_field_heatmap if per_field else hand_masked_heatmap
    return oracle(id_model.eval(), plm, icl, batch, row)
