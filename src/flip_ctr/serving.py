"""Serving an ID-model stage (FLIP_ID, or an ID model trained from scratch): export and batch prediction.

``flip-ctr export RUN_DIR --out MODEL_DIR`` turns the run directory of a ``ctr`` or ``finetune_id``
stage (a ``flip-ctr train`` run, or ``<pipeline run>/finetune_id`` / ``scratch``) into::

    MODEL_DIR/model.pt      TorchScript module, self-contained (torch.jit.load / torch::jit::load):
                            forward(feature_ids [B, F] int64) -> click probability [B] float32
                            encode(values: List[List[str]]) -> feature ids (values[f] = field f of every row)
                            score(values) -> probabilities
                            attributes: dataset, columns, vocab (per field: value -> feature id), oov,
                            missing (per field: raw values that mean "missing")
    MODEL_DIR/serving.json  metadata: dataset, fields, ID model spec, source run and checkpoint

``flip-ctr predict MODEL_OR_RUN_DIR --input rows.parquet --output preds.parquet`` scores raw rows
(CSV or Parquet, one row per impression; the columns are the dataset's field columns, see
docs/serving.md) and writes the input columns plus ``prob``, one per input row, in input order.

Raw values go through :func:`decode_raw`, the value decoding the dataset loaders apply, so the
keys match the vocabulary the model was trained with; a value that is not in the vocabulary
(never seen in the training part) gets its field's OOV id, exactly as in training and evaluation.

Nothing here imports Lightning or transformers (checkpoints are read with ``torch.load``):
FLIP_ID is served at the cost of the plain ID model.
"""

# no `from __future__ import annotations`: TorchScript reads Scorer's class annotations as real types
import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Dict, List

import numpy as np
import polars as pl
import torch
from torch import nn

from flip_ctr.atomic import atomic_directory, atomic_path
from flip_ctr.data.preprocess import OOV_TEXT, FeatureSpace
from flip_ctr.stages.checkpoints import submodule_state

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
META_FILE = "serving.json"
FORMAT_VERSION = 1
# Stages whose LightningModule is ``self.model`` = one ID model (CTRModule and its FLIP_ID subclass).
ID_STAGES = ("ctr", "finetune_id")


# -- the exported module --------------------------------------------------------------------------
class Scorer(nn.Module):
    """ID model + its vocabularies; scripted as a whole so the file carries everything needed."""

    dataset: str
    columns: List[str]
    vocab: List[Dict[str, int]]
    oov: List[int]
    missing: List[List[str]]

    def __init__(self, model: nn.Module, dataset: str, columns: list[str], vocab: list[dict[str, int]], oov: list[int],
                 missing: list[list[str]]):
        super().__init__()
        self.model = model
        self.dataset = dataset
        self.columns = columns
        self.vocab = vocab
        self.oov = oov
        self.missing = missing  # per field: the raw values that mean "missing" (a table schema's missing:)

    def forward(self, feature_ids: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(feature_ids)[1].float())

    @torch.jit.export
    def encode(self, values: List[List[str]]) -> torch.Tensor:
        """values[f][i]: decoded value of field f in row i → global feature ids [B, F]."""
        ids = torch.empty(len(values[0]), len(self.vocab), dtype=torch.long)
        for f in range(len(self.vocab)):
            table = self.vocab[f]
            oov = self.oov[f]
            ids[:, f] = torch.tensor([table.get(v, oov) for v in values[f]], dtype=torch.long)
        return ids

    @torch.jit.export
    def score(self, values: List[List[str]]) -> torch.Tensor:
        return self.forward(self.encode(values))


def vocabularies(space: FeatureSpace) -> tuple[list[dict[str, int]], list[int]]:
    """Per field: training-part value → global feature id, and the field's OOV id. Values that
    only occur outside the training part are left out: the ID model never learned them (OOV)."""
    offsets = space.field_offsets
    vocab = [
        {value: offsets[f] + k for k, value in enumerate(space.values[f][1 : space.num_seen[f] + 1], start=1)}
        for f in range(space.num_fields)
    ]
    return vocab, offsets[:-1]


def compile_id_model(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """TorchScript of the ID model: scripted where TorchScript compiles *and runs* it, else traced
    (AutoInt does not compile; AFN's autocast block compiles but fails on the first call).
    Either way checked against the eager model on ``example``."""
    with torch.no_grad():
        expected = model(example)[1]
        try:
            compiled = torch.jit.script(model)
            compiled(example)
        except Exception as err:  # noqa: BLE001 - any TorchScript failure: fall back to tracing
            log.info("%s is not scriptable (%s); tracing it", type(model).__name__, str(err).splitlines()[0])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                compiled = torch.jit.trace(model, example)
        torch.testing.assert_close(compiled(example)[1], expected, rtol=0, atol=1e-6)
    return compiled


def script_scorer(model: nn.Module, space: FeatureSpace) -> torch.jit.ScriptModule:
    model = model.float().eval().requires_grad_(False)  # an inference artifact: no autograd graph when called
    vocab, oov = vocabularies(space)
    # example rows: all-OOV and the first known value of every field
    example = torch.tensor([oov, [o + 1 if n else o for o, n in zip(oov, space.num_seen)]], dtype=torch.long)
    with warnings.catch_warnings():
        # torch's own annotation inspection warns about dtype-specific Tensor subtypes: not ours to fix
        warnings.filterwarnings("ignore", message="TorchScript will treat type annotations")
        inner = compile_id_model(model, example)
        missing = [list(f.missing) for f in space.schema.fields]
        return torch.jit.script(Scorer(inner, space.schema.name, space.schema.field_columns, vocab, oov, missing))


# -- from a run directory -------------------------------------------------------------------------
def feature_space(data_cfg) -> FeatureSpace:
    """The run's vocabularies, from the preprocessed-data cache (rebuilt from the data if absent).
    The same source and cache as CTRDataModule, without importing Lightning (which pulls in
    transformers through torchmetrics)."""
    from flip_ctr.data.preprocess import SplitConfig, load_or_build
    from flip_ctr.data.sources import data_source

    source = data_source(
        data_cfg.dataset, data_cfg.get("data_dir"), data_cfg.get("data_subdir"), dict(data_cfg.get("loader_kwargs") or {}),
        data_cfg.get("path"), data_cfg.get("schema"),
    )
    split = SplitConfig(test_fraction=data_cfg.get("test_fraction", 0.1), val_fraction=data_cfg.get("val_fraction", 0.1))
    return load_or_build(source, split, Path(data_cfg.cache_dir)).space


def find_checkpoint(run_dir: Path, ckpt: str | None = None) -> Path:
    """``ckpt`` (a path, or "best"/"last" in run_dir/checkpoints); default: best.ckpt (what the
    test metrics were computed with), else last.ckpt, else the newest checkpoint."""
    folder = run_dir / "checkpoints"
    if ckpt not in (None, "best", "last"):
        path = Path(ckpt)
    else:
        names = [f"{ckpt}.ckpt"] if ckpt else ["best.ckpt", "last.ckpt"]
        found = [folder / n for n in names if (folder / n).is_file()]
        found += sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True) if not ckpt else []
        if not found:
            raise FileNotFoundError(f"no checkpoint {' or '.join(names)} in {folder}")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    return path


def load_run(run_dir: str | Path, ckpt: str | None = None) -> tuple[nn.Module, FeatureSpace, dict]:
    """(ID model with the checkpoint's weights, feature space, metadata) of an ID-model stage run."""
    from omegaconf import OmegaConf

    from flip_ctr.models.id import build_id_model

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is neither an exported model ({MODEL_FILE}) nor a run directory (config.yaml)")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    # `flip-ctr train` stores the stage as cfg.stage; a pipeline stage dir is named after its key in cfg.stages.
    stage = cfg.get("stage") or (cfg.get("stages") or {}).get(run_dir.name)
    if stage is None or stage.get("name") not in ID_STAGES:
        raise ValueError(
            f"{run_dir}: export serves ID-model stages ({', '.join(ID_STAGES)}), this run is stage "
            f"{stage.get('name') if stage else '?'!r}"
        )
    space = feature_space(cfg.data)
    pretrained = stage.get("pretrained_dir")
    if pretrained and (Path(pretrained) / "id_model.pt").is_file():
        # the architecture FLIP_ID finetuned is the aligned model's, whatever cfg.id_model says
        spec = dict(torch.load(Path(pretrained) / "id_model.pt", map_location="cpu", weights_only=True)["spec"])
    else:
        spec = OmegaConf.to_container(cfg.id_model, resolve=True)
        spec.pop("_target_", None)
        spec.update(num_features=space.num_features, num_fields=space.num_fields)
    if (spec["num_features"], spec["num_fields"]) != (space.num_features, space.num_fields):
        raise ValueError(
            f"{run_dir}: the model has {spec['num_features']} features / {spec['num_fields']} fields, the data now gives "
            f"{space.num_features} / {space.num_fields}: the data changed since training"
        )
    path = find_checkpoint(run_dir, ckpt)
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    model = build_id_model(**spec)
    model.load_state_dict(submodule_state(state, "model"))
    meta = {"run_dir": str(run_dir.resolve()), "checkpoint": str(path.resolve()), "stage": stage.name, "id_model": spec}
    return model, space, meta


# -- export / load ---------------------------------------------------------------------------------
def export(run_dir: str | Path, out: str | Path, ckpt: str | None = None) -> Path:
    """Writes MODEL_DIR atomically (temp dir renamed into place); returns it."""
    model, space, meta = load_run(run_dir, ckpt)
    scorer = script_scorer(model, space)
    out = Path(out)
    if out.exists() and not (out / META_FILE).is_file() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not an exported model: refusing to overwrite it")
    with atomic_directory(out) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; a model dir is meant to be shared
        torch.jit.save(scorer, str(tmp / MODEL_FILE))
        meta.update(
            format_version=FORMAT_VERSION,
            dataset=space.schema.name,
            columns=space.schema.field_columns,
            field_names=space.schema.field_names,
            missing={f.column: list(f.missing) for f in space.schema.fields if f.missing},
            num_features=space.num_features,
            vocabulary_sizes=list(space.num_seen),
            torch=torch.__version__,
        )
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    return out


def load_scorer(path: str | Path, ckpt: str | None = None) -> torch.jit.ScriptModule:
    """An exported model directory (or its model.pt), or a run directory (exported in memory)."""
    path = Path(path)
    if path.is_file():
        return torch.jit.load(str(path), map_location="cpu")
    if (path / MODEL_FILE).is_file():
        return torch.jit.load(str(path / MODEL_FILE), map_location="cpu")
    model, space, _ = load_run(path, ckpt)
    return script_scorer(model, space)


# -- raw rows → decoded values → probabilities -------------------------------------------------------
def _movielens_codes() -> dict[str, dict[str, dict[str, str]]]:
    from flip_ctr.data.sources.movielens import GENDERS, ML1M_AGES, ML1M_OCCUPATIONS

    return {
        "ml1m": {
            "gender": GENDERS,
            "age": {str(k): v for k, v in ML1M_AGES.items()},
            "occupation": {str(k): v for k, v in ML1M_OCCUPATIONS.items()},
        },
        "ml100k": {"gender": GENDERS},
    }


def decode_raw(column: pl.Series, dataset: str, name: str, missing: list[str] | tuple[str, ...] = ()) -> pl.Series:
    """One raw column → the loader's decoded text. Generic (every loader): any dtype becomes text
    (integral floats, e.g. pandas' nullable ints, as integers), surrounding whitespace stripped,
    null/empty/a ``missing`` marker → "unknown" (the one missing value, as in training). Dataset codes the loaders decode are decoded too, and decoded
    values pass unchanged: ML-1M gender M/F, age and occupation codes, "A|B" genres; ML-100K
    gender M/F and a title's trailing "(YYYY)"; Book-Crossing age NULL and year 0."""
    from flip_ctr.data.sources.movielens import _readable_genres, _split_title_year

    s = column
    if s.dtype.is_float():
        s = s.fill_nan(None)
        kept = s.drop_nulls()
        if (kept == kept.round()).all():
            s = s.cast(pl.Int64)
    s = s.cast(pl.Utf8).str.strip_chars()
    s = pl.select(pl.when(s.is_in(["", *missing])).then(None).otherwise(s)).to_series().fill_null(OOV_TEXT)
    codes = _movielens_codes().get(dataset, {}).get(name)
    if codes:
        s = s.replace(codes)
    if dataset == "ml1m" and name == "genre":
        s = _readable_genres(s, "|")
    elif dataset == "ml100k" and name == "title":
        s = _split_title_year(s)[0].replace("", OOV_TEXT)
    elif dataset == "bookcrossing" and name in ("age", "year"):
        s = s.replace({"NULL": OOV_TEXT, "null": OOV_TEXT} if name == "age" else {"0": OOV_TEXT})
    return s.alias(name)


def _value_hint(dataset: str) -> str:
    from flip_ctr.data.sources import LOADERS

    if dataset in LOADERS and dataset != "table":
        return f"values as the {dataset} loader decodes them, or raw; see docs/serving.md"
    return "raw values as in the training table; see docs/serving.md"


def encode_rows(scorer, frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(feature ids [N, F], whether each value was out of vocabulary [N, F]); a missing field
    column is a KeyError that names it and lists what is expected."""
    columns, dataset = list(scorer.columns), str(scorer.dataset)
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise KeyError(f"input lacks field column(s) {absent}; a {dataset} model expects the columns {columns} ({_value_hint(dataset)})")
    # models exported before missing markers existed have no such attribute
    markers = [list(m) for m in scorer.missing] if hasattr(scorer, "missing") else [[] for _ in columns]
    ids = np.empty((frame.height, len(columns)), dtype=np.int64)
    for f, (name, table, oov) in enumerate(zip(columns, scorer.vocab, scorer.oov)):
        values = decode_raw(frame[name], dataset, name, markers[f])
        ids[:, f] = values.replace_strict(table, default=oov, return_dtype=pl.Int64).to_numpy()
    return ids, ids == np.asarray(scorer.oov)


@torch.inference_mode()
def predict_ids(scorer, ids: np.ndarray, batch_size: int = 65536) -> np.ndarray:
    out = [scorer(torch.from_numpy(ids[i : i + batch_size])) for i in range(0, len(ids), batch_size)]
    return torch.cat(out).numpy() if out else np.empty(0, dtype=np.float32)


def read_rows(path: Path) -> pl.DataFrame:
    if path.suffix in (".parquet", ".pq"):
        return pl.read_parquet(path)
    if path.suffix in (".csv", ".tsv"):
        # every column as text, so identifiers such as "007" keep their leading zeros
        return pl.read_csv(path, separator="\t" if path.suffix == ".tsv" else ",", infer_schema=False)
    raise ValueError(f"{path}: expected a .parquet or .csv file")


def write_rows(frame: pl.DataFrame, path: Path) -> None:
    """Atomic: written to a temp sibling, then renamed, so a reader never sees half a file."""
    with atomic_path(path) as tmp:
        if path.suffix in (".parquet", ".pq"):
            frame.write_parquet(tmp)
        elif path.suffix in (".csv", ".tsv"):
            frame.write_csv(tmp, separator="\t" if path.suffix == ".tsv" else ",")
        else:
            raise ValueError(f"{path}: expected a .parquet or .csv output file")


def predict(model: str | Path, input_path: str | Path, output_path: str | Path, ckpt: str | None = None,
            batch_size: int = 65536) -> pl.DataFrame:
    scorer = load_scorer(model, ckpt)
    frame = read_rows(Path(input_path))
    ids, unseen = encode_rows(scorer, frame)
    out = frame.with_columns(pl.Series("prob", predict_ids(scorer, ids, batch_size), dtype=pl.Float32))
    write_rows(out, Path(output_path))
    per_field = ", ".join(f"{c} {n}" for c, n in zip(scorer.columns, unseen.sum(axis=0)) if n)
    print(
        f"wrote {out.height} probabilities to {output_path}; {int(unseen.any(axis=1).sum())} row(s) with a value "
        f"unseen in training (scored with the field's OOV embedding){': ' + per_field if per_field else ''}"
    )
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="flip-ctr", description="Export and batch prediction of ID-model stages.")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="run dir → TorchScript model dir (model.pt + serving.json)")
    exp.add_argument("run_dir")
    exp.add_argument("--out", required=True)
    exp.add_argument("--ckpt", default=None, help="checkpoint path, or best/last (default: best, else last)")
    pred = sub.add_parser("predict", help="raw rows (CSV/Parquet) → rows + prob")
    pred.add_argument("model", help="exported model dir, or a run dir (exported on the fly)")
    pred.add_argument("--input", required=True)
    pred.add_argument("--output", required=True)
    pred.add_argument("--ckpt", default=None, help="with a run dir: checkpoint path, or best/last")
    pred.add_argument("--batch-size", type=int, default=65536)
    for p in (exp, pred):
        p.add_argument("--num-threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    try:
        if args.command == "export":
            out = export(args.run_dir, args.out, args.ckpt)
            print(f"exported {args.run_dir} → {out}/{MODEL_FILE} (+ {META_FILE})")
        else:
            predict(args.model, args.input, args.output, args.ckpt, args.batch_size)
    except (KeyError, ValueError, FileNotFoundError, FileExistsError) as err:
        sys.exit(f"flip-ctr {args.command}: {err.args[0] if isinstance(err, KeyError) else err}")
