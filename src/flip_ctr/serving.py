"""Serving an ID-model stage (FLIP_ID, or an ID model trained from scratch): export and batch prediction.

``flip-ctr export RUN_DIR --out MODEL_DIR`` turns the run directory of a ``ctr`` or ``finetune_id``
stage (a ``flip-ctr train`` run, or ``<pipeline run>/finetune_id`` / ``scratch``) into::

    MODEL_DIR/model.onnx    ONNX graph (torch.onnx dynamo exporter): input feature_ids int64 [batch, F],
                            output prob float32 [batch]; runs in onnxruntime (Python, C++, Java, ...)
    MODEL_DIR/vocab.json    per field: column, OOV id and value → feature id (the values as the
                            dataset loader decodes them)
    MODEL_DIR/serving.json  metadata (dataset, columns, ID-model spec, source run and checkpoint) and
                            the SHA-256 of model.onnx and vocab.json

``flip-ctr predict MODEL_OR_RUN_DIR --input rows.parquet --output preds.parquet`` scores raw rows
(CSV or Parquet, one row per impression; the columns are the dataset's field columns, see
docs/serving.md) and writes the input columns plus ``prob``, one per input row, in input order.

Loading verifies both digests before parsing either file; predict refuses non-finite outputs.
Every refusal (bad model directory, bad input) is one line on stderr and exit status 2, with
nothing written.

Raw values go through :func:`decode_raw`, the value decoding the dataset loaders apply, so the
keys match the vocabulary the model was trained with; a value that is not in the vocabulary
(never seen in the training part) gets its field's OOV id, exactly as in training and evaluation.
The lookup stays in polars (vectorised, multi-threaded) rather than in the graph.

Predicting with an exported directory imports neither torch, Lightning nor transformers; export
(and predict on a run directory, exported in memory) needs torch but not Lightning: FLIP_ID is
served at the cost of the plain ID model.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from flip_ctr.atomic import atomic_directory, atomic_path
from flip_ctr.data.preprocess import OOV_TEXT, FeatureSpace
from flip_ctr.integrity import read_verified, sha256_bytes

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
VOCAB_FILE = "vocab.json"
META_FILE = "serving.json"
FORMAT_VERSION = 2  # 1: TorchScript model.pt (flip-ctr before issue 16)
# Stages whose LightningModule is ``self.model`` = one ID model (CTRModule and its FLIP_ID subclass).
ID_STAGES = ("ctr", "finetune_id")
# Rows per onnxruntime call: small enough that a batch's DNN activations stay in cache (per CPU-second,
# DCNv2 on ML-1M: 512 and 1024 rows ~100k rows/s, 8192 ~80k, 65536 ~70k; results/benchmarks/serving.md).
BATCH_SIZE = 1024
PARITY_ATOL = 1e-6
SERVING_EXTRA = "pip install 'flip-ctr[serving]' (onnx, onnxscript, onnxruntime)"


class ServingError(ValueError):
    """A refusal the operator can act on: one line naming the file, field or value."""


# -- the scorer: vocabularies + an onnxruntime session --------------------------------------------
@dataclass
class Scorer:
    dataset: str
    columns: list[str]
    vocab: list[dict[str, int]]  # per field: decoded value → global feature id
    oov: list[int]  # per field: its OOV id
    missing: list[list[str]]  # per field: raw values that mean "missing" (a table schema's missing:)
    session: object  # onnxruntime.InferenceSession

    def __call__(self, feature_ids: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"feature_ids": feature_ids})[0]


def _session(model: bytes, source: Path | str, num_threads: int | None = None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ServingError(f"onnxruntime is not installed: {SERVING_EXTRA}") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or 0  # 0: onnxruntime's choice (the physical cores)
    options.inter_op_num_threads = 1
    # no busy-waiting between ops: on a shared machine spinning threads halved 2-thread throughput
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise ServingError(f"{source}: onnxruntime cannot load it ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def vocab_json(space: FeatureSpace) -> bytes:
    vocab, oov = vocabularies(space)
    fields = [{"column": f.column, "oov": o, "missing": list(f.missing), "ids": v}
              for f, v, o in zip(space.schema.fields, vocab, oov)]
    return json.dumps({"dataset": space.schema.name, "fields": fields}, ensure_ascii=False).encode()


def make_scorer(model: bytes, vocab: bytes, source: Path | str, num_threads: int | None = None) -> Scorer:
    """From the bytes of model.onnx and vocab.json; ``source`` (the model directory) names them in errors."""
    try:
        table = json.loads(vocab)
        fields = table["fields"]
        columns, ids, oov = [f["column"] for f in fields], [f["ids"] for f in fields], [int(f["oov"]) for f in fields]
        missing = [list(f.get("missing") or []) for f in fields]
    except (ValueError, KeyError, TypeError) as err:
        raise ServingError(f"{source}/{VOCAB_FILE}: not a flip-ctr vocabulary ({_first_line(err)})") from None
    session = _session(model, f"{source}/{MODEL_FILE}", num_threads)
    return Scorer(str(table.get("dataset")), columns, ids, oov, missing, session)


# -- export: ID model → ONNX ----------------------------------------------------------------------
def vocabularies(space: FeatureSpace) -> tuple[list[dict[str, int]], list[int]]:
    """Per field: training-part value → global feature id, and the field's OOV id. Values that
    only occur outside the training part are left out: the ID model never learned them (OOV)."""
    offsets = space.field_offsets
    vocab = [
        {value: offsets[f] + k for k, value in enumerate(space.values[f][1 : space.num_seen[f] + 1], start=1)}
        for f in range(space.num_fields)
    ]
    return vocab, offsets[:-1]


def probability_module(model):
    """The ID model as served: feature ids → click probability (fp32), no autograd."""
    import torch

    class Probability(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, feature_ids):
            return torch.sigmoid(self.inner(feature_ids)[1].float())

    return Probability(model.float().eval().requires_grad_(False)).eval()


def parity_rows(space: FeatureSpace, n: int = 256, seed: int = 0) -> np.ndarray:
    """Feature ids to check an export on: every field OOV, every field's first known value, and
    ``n`` random rows of known values."""
    oov = np.asarray(space.field_offsets[:-1])
    seen = np.asarray(space.num_seen)
    rng = np.random.default_rng(seed)
    known = oov + (seen > 0) * (1 + (rng.random((n, len(oov))) * seen).astype(np.int64))
    return np.concatenate([oov[None], oov[None] + (seen > 0), known]).astype(np.int64)


def onnx_graph(model, space: FeatureSpace) -> bytes:
    """The ID model as an ONNX graph (torch.onnx's dynamo exporter, i.e. torch.export), unchecked."""
    import torch

    example = torch.from_numpy(parity_rows(space, n=2))
    # torch.onnx's exporter logs one warning per torchvision op it cannot register, and torch's
    # own pytree code warns about its LeafSpec: neither is ours to fix
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
            program = torch.onnx.export(
                probability_module(model), (example,), dynamo=True, input_names=["feature_ids"], output_names=["prob"],
                dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
            )
    except ImportError as err:
        raise ServingError(f"export needs {err.name or 'onnx'}: {SERVING_EXTRA}") from None
    return program.model_proto.SerializeToString()


def onnx_model(model, space: FeatureSpace) -> bytes:
    """:func:`onnx_graph`, checked against the eager model on :func:`parity_rows` to PARITY_ATOL
    in onnxruntime (a graph that gives NaN there is refused too)."""
    data = onnx_graph(model, space)
    _check_parity(probability_module(model), _session(data, "the exported graph"), space)
    return data


def _check_parity(served, session, space: FeatureSpace) -> None:
    import torch

    ids = parity_rows(space)
    with torch.inference_mode():
        expected = served(torch.from_numpy(ids)).numpy()
    for rows in (ids, ids[:1]):  # a batch, and a single row (the batch axis is dynamic)
        got = session.run(None, {"feature_ids": rows})[0]
        diff = float(np.abs(got - expected[: len(rows)]).max())
        if not diff <= PARITY_ATOL:
            raise ServingError(f"the ONNX graph differs from the eager model by {diff:.3g} (> {PARITY_ATOL}): not exported")


def feature_space(data_cfg) -> FeatureSpace:
    """The run's vocabularies, from the preprocessed-data cache (rebuilt from the data if absent).
    The same source and cache as CTRDataModule, without importing Lightning (which pulls in
    transformers through torchmetrics)."""
    from flip_ctr.data.preprocess import SplitConfig
    from flip_ctr.data.preprocess_large import load_artifact
    from flip_ctr.data.sources import data_source

    source = data_source(
        data_cfg.dataset, data_cfg.get("data_dir"), data_cfg.get("data_subdir"), dict(data_cfg.get("loader_kwargs") or {}),
        data_cfg.get("path"), data_cfg.get("schema"),
    )
    split = SplitConfig(test_fraction=data_cfg.get("test_fraction", 0.1), val_fraction=data_cfg.get("val_fraction", 0.1))
    return load_artifact(source, split, Path(data_cfg.cache_dir), data_cfg.get("engine", "memory")).space


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


def load_run(run_dir: str | Path, ckpt: str | None = None):
    """(ID model with the checkpoint's weights, feature space, metadata) of an ID-model stage run."""
    import torch
    from omegaconf import OmegaConf

    from flip_ctr.models.id import build_id_model
    from flip_ctr.stages.checkpoints import load_id_model_payload, submodule_state

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is neither an exported model ({META_FILE}) nor a run directory (config.yaml)")
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
        spec = dict(load_id_model_payload(Path(pretrained))["spec"])
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
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    except Exception as err:  # noqa: BLE001 - torch's errors for a damaged zip are untyped
        raise ServingError(f"{path}: not a readable checkpoint ({_first_line(err)})") from None
    model = build_id_model(**spec)
    model.load_state_dict(submodule_state(state, "model"))
    meta = {"run_dir": str(run_dir.resolve()), "checkpoint": str(path.resolve()), "stage": stage.name, "id_model": spec}
    return model, space, meta


def export(run_dir: str | Path, out: str | Path, ckpt: str | None = None) -> Path:
    """Writes MODEL_DIR atomically (temp dir renamed into place); returns it."""
    import torch

    out = Path(out)
    if out.exists() and not (out / META_FILE).is_file() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not an exported model: refusing to overwrite it")
    model, space, meta = load_run(run_dir, ckpt)
    files = {MODEL_FILE: onnx_model(model, space), VOCAB_FILE: vocab_json(space)}
    meta.update(
        format_version=FORMAT_VERSION,
        dataset=space.schema.name,
        columns=space.schema.field_columns,
        field_names=space.schema.field_names,
        missing={f.column: list(f.missing) for f in space.schema.fields if f.missing},
        num_features=space.num_features,
        vocabulary_sizes=list(space.num_seen),
        inputs={"feature_ids": f"int64 [batch, {space.num_fields}]"},
        outputs={"prob": "float32 [batch]"},
        torch=torch.__version__,
    )
    return write_model_dir(out, files, meta)


def write_model_dir(out: Path, files: dict[str, bytes], meta: dict) -> Path:
    """``files`` + serving.json (``meta`` and the SHA-256 of every file), as one atomic directory."""
    meta = {**meta, "sha256": {name: sha256_bytes(data) for name, data in files.items()}}
    with atomic_directory(out) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; a model dir is meant to be shared
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    return out


# -- load: a model directory (verified) or a run directory (exported in memory) ------------------------
def read_meta(model_dir: Path) -> dict:
    path = model_dir / META_FILE
    try:
        meta = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise ServingError(f"{path}: unreadable ({_first_line(err)}); re-export the model") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise ServingError(
            f"{path}: format_version {version!r}, this flip-ctr reads {FORMAT_VERSION} (1 was TorchScript): "
            "re-export with `flip-ctr export`"
        )
    return meta


def load_model_dir(model_dir: str | Path, num_threads: int | None = None) -> Scorer:
    """An exported model directory, each file checked against its SHA-256 in serving.json first."""
    model_dir = Path(model_dir)
    digests = read_meta(model_dir).get("sha256") or {}
    data = {name: read_verified(model_dir / name, digests.get(name), model_dir / META_FILE) for name in (MODEL_FILE, VOCAB_FILE)}
    return make_scorer(data[MODEL_FILE], data[VOCAB_FILE], model_dir, num_threads)


def load_scorer(path: str | Path, ckpt: str | None = None, num_threads: int | None = None) -> Scorer:
    """An exported model directory (or a file in one), or a run directory (exported in memory)."""
    path = Path(path)
    if path.is_file() and (path.parent / META_FILE).is_file():
        path = path.parent
    if (path / META_FILE).is_file():
        return load_model_dir(path, num_threads)
    model, space, _ = load_run(path, ckpt)
    return make_scorer(onnx_model(model, space), vocab_json(space), f"{path} (exported in memory)", num_threads)


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
    elif dataset == "bookcrossing" and name == "age":  # the loader's NULL, in any case
        s = pl.select(pl.when(s.str.to_uppercase() == "NULL").then(pl.lit(OOV_TEXT)).otherwise(s)).to_series()
    elif dataset == "bookcrossing" and name == "year":
        s = s.replace({"0": OOV_TEXT})
    return s.alias(name)


def encode_rows(scorer: Scorer, frame: pl.DataFrame, source: Path | str = "input") -> tuple[np.ndarray, np.ndarray]:
    """(feature ids [N, F], whether each value was out of vocabulary [N, F]). A missing field
    column, or one whose type holds no single text/number per row, is a ServingError naming it."""
    columns, dataset = scorer.columns, scorer.dataset
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise ServingError(
            f"{source}: no field column(s) {absent}; a {dataset} model expects the columns {columns} ({_value_hint(dataset)})"
        )
    ids = np.empty((frame.height, len(columns)), dtype=np.int64)
    for f, (name, table, oov, markers) in enumerate(zip(columns, scorer.vocab, scorer.oov, scorer.missing)):
        _check_field_type(frame[name], source)
        ids[:, f] = _lookup(frame[name], dataset, name, table, oov, markers)
    return ids, ids == np.asarray(scorer.oov)


def _value_hint(dataset: str) -> str:
    from flip_ctr.data.sources import LOADERS

    if dataset in LOADERS and dataset != "table":
        return f"values as the {dataset} loader decodes them, or raw; see docs/serving.md"
    return "raw values as in the training table; see docs/serving.md"


def _lookup(column: pl.Series, dataset: str, name: str, table: dict[str, int], oov: int, missing: list[str]) -> np.ndarray:
    """decode_raw + vocabulary lookup of one field column. Decoded once per distinct value (a few
    thousand in a million rows; the string decoding per row was most of predict's time outside
    the model), then mapped back onto the rows (nulls and NaN are distinct values too)."""
    distinct = column.unique()
    ids = decode_raw(distinct, dataset, name, missing).replace_strict(table, default=oov, return_dtype=pl.Int64)
    return column.replace_strict(distinct, ids, return_dtype=pl.Int64).to_numpy()


# Types with one value per row that decode_raw turns into the loader's text (lists, structs,
# binary, dates, ... would become strings no vocabulary holds).
_SCALAR_TYPES = (pl.String, pl.Categorical, pl.Enum, pl.Boolean, pl.Null)


def _check_field_type(column: pl.Series, source: Path | str) -> None:
    dtype = column.dtype
    if dtype.is_numeric() or dtype.base_type() in _SCALAR_TYPES:
        return
    kept = column.drop_nulls().head(1).to_list()
    example = f" (first value {kept[0]!r})" if kept else ""
    raise ServingError(
        f"{source}: field column {column.name!r} has type {dtype}{example}; a field column holds one text or number per row"
    )


def predict_ids(scorer: Scorer, ids: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
    out = [scorer(ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)]
    return np.concatenate(out) if out else np.empty(0, dtype=np.float32)


def refuse_non_finite(probs: np.ndarray, model: Path | str) -> None:
    """A NaN/inf probability is a damaged or diverged model, never a score to hand on."""
    bad = np.flatnonzero(~np.isfinite(probs))
    if bad.size:
        shown = ", ".join(str(i) for i in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise ServingError(
            f"{model}: non-finite probabilities for {bad.size} of {probs.size} rows (0-based data rows {shown}); "
            "nothing written: the model is damaged or diverged"
        )


# -- files ---------------------------------------------------------------------------------------
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv"}


def _file_format(path: Path, role: str) -> str:
    try:
        return _FORMATS[path.suffix.lower()]
    except KeyError:
        raise ServingError(f"{path}: the {role} must be a .parquet, .pq, .csv or .tsv file") from None


def read_rows(path: Path) -> pl.DataFrame:
    kind = _file_format(path, "input")
    if not path.is_file():
        raise ServingError(f"{path}: {'is a directory' if path.is_dir() else 'no such file'}")
    if path.stat().st_size == 0:
        raise ServingError(f"{path}: empty file (0 bytes: no header, no rows)")
    try:
        if kind == "parquet":
            return pl.read_parquet(path)
        # every column as text, so identifiers such as "007" keep their leading zeros
        return pl.read_csv(path, separator="\t" if kind == "tsv" else ",", infer_schema=False)
    except (pl.exceptions.PolarsError, OSError, ValueError) as err:
        raise ServingError(f"{path}: cannot read it as {kind} ({_first_line(err)})") from None


def write_rows(frame: pl.DataFrame, path: Path) -> None:
    """Atomic: written to a temp sibling, then renamed, so a reader never sees half a file."""
    kind = _file_format(path, "output")
    with atomic_path(path) as tmp:
        if kind == "parquet":
            frame.write_parquet(tmp)
        else:
            frame.write_csv(tmp, separator="\t" if kind == "tsv" else ",")


def predict(model: str | Path, input_path: str | Path, output_path: str | Path, ckpt: str | None = None,
            batch_size: int = BATCH_SIZE, num_threads: int | None = None) -> pl.DataFrame:
    input_path, output_path = Path(input_path), Path(output_path)
    _file_format(output_path, "output")  # before any work: a bad name costs nothing
    scorer = load_scorer(model, ckpt, num_threads)
    frame = read_rows(input_path)
    ids, unseen = encode_rows(scorer, frame, input_path)
    probs = predict_ids(scorer, ids, batch_size)
    refuse_non_finite(probs, model)
    out = frame.with_columns(pl.Series("prob", probs, dtype=pl.Float32))
    write_rows(out, output_path)
    per_field = ", ".join(f"{c} {n}" for c, n in zip(scorer.columns, unseen.sum(axis=0)) if n)
    print(
        f"wrote {out.height} probabilities to {output_path}; {int(unseen.any(axis=1).sum())} row(s) with a value "
        f"unseen in training (scored with the field's OOV embedding){': ' + per_field if per_field else ''}"
    )
    return out


# Refusals: one line on stderr, exit 2 (IntegrityError and ServingError are ValueErrors).
_REFUSALS = (ValueError, FileNotFoundError, FileExistsError)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="flip-ctr", description="Export and batch prediction of ID-model stages.")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="run dir → model dir (model.onnx + vocab.json + serving.json)")
    exp.add_argument("run_dir")
    exp.add_argument("--out", required=True)
    exp.add_argument("--ckpt", default=None, help="checkpoint path, or best/last (default: best, else last)")
    pred = sub.add_parser("predict", help="raw rows (CSV/Parquet) → rows + prob")
    pred.add_argument("model", help="exported model dir, or a run dir (exported in memory)")
    pred.add_argument("--input", required=True)
    pred.add_argument("--output", required=True)
    pred.add_argument("--ckpt", default=None, help="with a run dir: checkpoint path, or best/last")
    pred.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    for p in (exp, pred):
        p.add_argument("--num-threads", type=int, default=None, help="threads (default: onnxruntime's and torch's choice)")
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            if args.num_threads:
                import torch

                torch.set_num_threads(args.num_threads)
            out = export(args.run_dir, args.out, args.ckpt)
            print(f"exported {args.run_dir} → {out}/{MODEL_FILE} (+ {VOCAB_FILE}, {META_FILE})")
        else:
            predict(args.model, args.input, args.output, args.ckpt, args.batch_size, args.num_threads)
    except _REFUSALS as err:
        print(f"flip-ctr {args.command}: {str(err).replace(chr(10), ' ')}", file=sys.stderr)
        sys.exit(2)
