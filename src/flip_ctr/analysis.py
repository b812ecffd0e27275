"""`flip-ctr analyze PIPELINE_RUN_DIR`: the paper's alignment analyses, written as files.

- Feature-embedding SVD (paper Fig. 2/8): the ID model's feature-embedding matrix projected to
  2-D with its top-2 singular directions (``embedding_svd.csv``), and the normalised singular
  value spectrum (``embedding_spectrum.csv``) — a collapsed, cone-shaped embedding space puts
  almost all energy in the first singular values.
- Field-level alignment (paper Fig. 9): for one sample, mask each field in turn in each
  modality; entry (f, g) of ``alignment_heatmap.csv`` is the similarity of the ICL projections
  of [text with field f masked] and [table with field g masked]. A dominant diagonal means
  the two models agree on *which* feature is missing.

PNG plots are written too when matplotlib is installed (``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def embedding_svd(embedding_weight: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(2-D coordinates [N, 2], singular values / their sum) of the feature-embedding matrix."""
    matrix = embedding_weight.detach().float().cpu()
    u, s, _ = torch.linalg.svd(matrix - matrix.mean(0, keepdim=True), full_matrices=False)
    return (u[:, :2] * s[:2]).numpy(), (s / s.sum()).numpy()


@torch.no_grad()
def alignment_projections(id_model, plm, icl, batch: dict, row: int, mask_token_id: int, text_states=None):
    """(z_text [F, d], z_tab [F, d]): the ICL projections of row ``row`` with each field f masked
    in turn, on the text side (row f of z_text) and on the tabular side (row f of z_tab).

    ``text_states``: a :class:`~flip_ctr.models.field_text_states.FieldTextStates` when the run
    pretrained with ``text_encoding=per_field`` (the text side is then encoded as it was trained);
    ``None`` runs the PLM on the masked row text."""
    from flip_ctr.data import masking

    num_fields = id_model.num_fields
    eye = torch.eye(num_fields, dtype=torch.bool)
    attention = batch["attention_mask"][row : row + 1].expand(num_fields, -1)
    if text_states is not None:
        states = text_states.assemble(batch["text_value_ids"][row : row + 1].expand(num_fields, -1), eye)
        # one row's layout ends at its own length; the batch pads to its longest row
        attention = attention[:, : states.shape[1]]
    else:
        token_field_ids = batch["token_field_ids"][row : row + 1].expand(num_fields, -1)
        value_token_mask = batch["value_token_mask"][row : row + 1].expand(num_fields, -1)
        text_mask = masking.field_level_text_mask(token_field_ids, value_token_mask, eye)
        input_ids = masking.mask_text(batch["input_ids"][row : row + 1].expand(num_fields, -1), text_mask, mask_token_id)
        states = plm(input_ids, attention)
    features = masking.mask_tabular(batch["feature_ids"][row : row + 1].expand(num_fields, -1), eye, id_model.mask_feature_id)
    return icl.project(plm.sentence_embedding(states, attention), id_model(features)[0])


def similarity(z_text: torch.Tensor, z_tab: torch.Tensor, cosine: bool = False) -> np.ndarray:
    """F×F similarities between masked-text (rows) and masked-tabular (columns) projections: the
    ICL head's dot product, or with ``cosine`` the cosine (without the L2 head, a table whose
    projection is longer scores higher against every text row, whatever field is masked)."""
    if cosine:
        z_text, z_tab = torch.nn.functional.normalize(z_text, dim=-1), torch.nn.functional.normalize(z_tab, dim=-1)
    return (z_text @ z_tab.T).numpy()


def alignment_heatmap(id_model, plm, icl, batch: dict, row: int, mask_token_id: int, text_states=None, cosine: bool = False) -> np.ndarray:
    """:func:`similarity` of row ``row``'s :func:`alignment_projections`."""
    return similarity(*alignment_projections(id_model, plm, icl, batch, row, mask_token_id, text_states), cosine=cosine)


def diagonal_share(heatmap: np.ndarray) -> float:
    """Share of fields f whose masked text is most similar to the table with the same field masked."""
    return float(np.mean(np.diag(heatmap) >= heatmap.max(axis=1) - 1e-9))


def icl_head_from(heads: dict, text_dim: int, id_dim: int):
    """The pretraining run's ICL head, rebuilt from its saved heads file (:func:`load_heads`)."""
    from flip_ctr.models.alignment import ICLHead

    config = heads["config"]
    icl = ICLHead(
        text_dim=text_dim,
        id_dim=id_dim,
        proj_dim=config["icl_dim"],
        temperature=config["temperature"],
        projection=config.get("icl_projection", "l2"),  # runs saved before the switch existed used l2
    )
    icl.load_state_dict(heads["heads"]["icl"])
    return icl


def _write_csv(path: Path, array: np.ndarray, header: list[str]) -> None:
    np.savetxt(path, array, delimiter=",", header=",".join(header), comments="", fmt="%.6g")


def _plots(out: Path, coords: np.ndarray, heatmap: np.ndarray | None, field_names: list[str]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: CSV files only")
        return
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(coords[:, 0], coords[:, 1], s=2, alpha=0.5)
    ax.set_title("feature embeddings (SVD, 2-D)")
    fig.savefig(out / "embedding_svd.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    if heatmap is not None:
        fig, ax = plt.subplots(figsize=(6, 5))
        im = ax.imshow(heatmap, cmap="viridis")
        ax.set_xticks(range(len(field_names)), field_names, rotation=60, ha="right")
        ax.set_yticks(range(len(field_names)), field_names)
        ax.set_xlabel("masked tabular field")
        ax.set_ylabel("masked text field")
        fig.colorbar(im)
        fig.savefig(out / "alignment_heatmap.png", dpi=120, bbox_inches="tight")
        plt.close(fig)


def analyze(run_dir: Path, row: int = 0, rows: int = 1) -> Path:
    """Reads ``<run_dir>/pretrain/{config.yaml,aligned/}``, writes ``<run_dir>/analysis/``.

    The heatmap CSV/plot is test row ``row``'s; ``alignment_summary.json`` holds the diagonal
    share averaged over the first ``rows`` test rows (one row's share moves in steps of 1/F)."""
    import json

    import hydra
    from omegaconf import OmegaConf

    from flip_ctr.stages.checkpoints import load_aligned_plm, load_heads, load_id_model

    aligned = run_dir / "pretrain" / "aligned"
    cfg = OmegaConf.load(run_dir / "pretrain" / "config.yaml")
    out = run_dir / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    id_model, _ = load_id_model(aligned)
    id_model.eval()
    coords, spectrum = embedding_svd(id_model.embedding.weight[:-1])  # without the <MASK> row
    _write_csv(out / "embedding_svd.csv", coords, ["x", "y"])
    _write_csv(out / "embedding_spectrum.csv", spectrum[:, None], ["normalised_singular_value"])

    heatmap = None
    heads = load_heads(aligned)
    datamodule = hydra.utils.instantiate(cfg.data, tokenizer=cfg.plm.name_or_path, eval_batch_size=max(row + 1, rows, 8))
    datamodule.setup()
    if "icl" in heads["heads"]:
        plm = load_aligned_plm(aligned).eval()
        text_states = None
        stage = OmegaConf.select(cfg, "stages.pretrain") or OmegaConf.select(cfg, "stage") or {}
        if stage.get("text_encoding", "row") == "per_field":
            from flip_ctr.models.field_text_states import FieldTextStates

            text_states = FieldTextStates(datamodule.text, plm)
        icl = icl_head_from(heads, text_dim=plm.hidden_size, id_dim=id_model.representation_dim).eval()
        batch = next(iter(datamodule.test_dataloader()))
        heatmap = alignment_heatmap(id_model, plm, icl, batch, row, plm.mask_token_id, text_states)
        _write_csv(out / "alignment_heatmap.csv", heatmap, datamodule.space.schema.field_names)
        count = min(rows, len(batch["feature_ids"]))
        shares, cosine_shares = [], []
        for r in range(count):  # one projection pass per row serves both similarities
            projections = alignment_projections(id_model, plm, icl, batch, r, plm.mask_token_id, text_states)
            shares.append(diagonal_share(similarity(*projections)))
            cosine_shares.append(diagonal_share(similarity(*projections, cosine=True)))
        summary = {"rows": count, "diagonal_share": float(np.mean(shares)), "diagonal_share_cosine": float(np.mean(cosine_shares)),
                   "diagonal_share_row": diagonal_share(heatmap), "row": row, "num_fields": len(heatmap),
                   "chance": 1 / len(heatmap), "text_encoding": "per_field" if text_states is not None else "row"}
        (out / "alignment_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info("alignment heatmap: the diagonal is the row maximum for %.0f%% of the fields (cosine: %.0f%%; chance %.0f%%; mean over %d test rows)",
                 100 * summary["diagonal_share"], 100 * summary["diagonal_share_cosine"], 100 * summary["chance"], count)
    else:
        log.info("no ICL head in this pretraining run (ablation without ICL): heatmap skipped")
    _plots(out, coords, heatmap, datamodule.space.schema.field_names)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="flip-ctr analyze", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a `flip-ctr pipeline` run directory (with pretrain/)")
    parser.add_argument("--row", type=int, default=0, help="test-set row used for the alignment heatmap")
    parser.add_argument("--rows", type=int, default=1000, help="test rows the diagonal share is averaged over")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"analysis written to {analyze(args.run_dir, args.row, args.rows)}")
