"""Loaded table → cached, split, id-encoded artifact.

Steps (FLIP_METHOD.md, "Datasets and protocol"):

1. Sort chronologically (timestamp, then the row's position in its source file, so equal
   timestamps keep file order and the split is deterministic).
2. First ``floor(0.9 N)`` rows are the training part, the rest the test set. The last
   ``val_fraction`` of the training part (again chronological) is held out for early stopping
   and model selection; the test set is never used for selection.
3. Per field, a value dictionary over *all* rows, ordered so that the values seen in the
   training part come first (most frequent first). Local index 0 is the field's OOV slot.
   The ID model only knows training values: a value first seen in the test set maps to OOV
   for the ID side, while the text side still renders its real text (a PLM can read a movie
   title it never saw in training).
4. Feature frequencies over the training part (the NCE noise distribution of MTM).

The artifact is a directory of ``.npy`` arrays plus ``manifest.json`` (with a digest per file),
written to a temporary directory and renamed into place, so an interrupted run never leaves
a half-written cache. A cache whose files do not match the manifest is rebuilt. Which entry a
dataset maps to (by the content of the files its loader reads) and the pruning of superseded
entries: :mod:`flip_ctr.data.cache`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from flip_ctr.atomic import atomic_directory
from flip_ctr.data import cache
from flip_ctr.data.cache import CACHE_FORMAT_VERSION
from flip_ctr.data.schema import ROW_COLUMN, DatasetSchema, Field, LoadedTable

log = logging.getLogger(__name__)

# Above this many rows (or distinct values, for tokenization), data preparation logs each field
# as it goes: at Criteo scale a field takes minutes, and silence looks like a hang.
LONG_WORK_VALUES = 100_000

OOV_TEXT = "unknown"


@dataclass(frozen=True)
class SplitConfig:
    test_fraction: float = 0.1
    val_fraction: float = 0.1  # of the training part, taken from its chronological end

    def sizes(self, num_rows: int) -> tuple[int, int, int]:
        """(fit, val, test) row counts. ``floor`` on the training part reproduces the paper's
        ML-1M test set exactly (739,012 rows → 73,902 test rows)."""
        if not 0 < self.test_fraction < 1 or not 0 <= self.val_fraction < 1:
            raise ValueError(f"bad split fractions: test={self.test_fraction}, val={self.val_fraction}")
        num_train = int(np.floor(num_rows * (1 - self.test_fraction)))
        num_val = int(np.floor(num_train * self.val_fraction))
        return num_train - num_val, num_val, num_rows - num_train


@dataclass
class FeatureSpace:
    """Per-field value dictionaries and the global feature-id layout.

    Field f owns global ids ``[field_offsets[f], field_offsets[f] + num_seen[f] + 1)``: its OOV
    id first, then every value seen in the training part. ``num_features`` ids in total; id
    ``num_features`` is the shared ``<MASK>`` feature (one extra embedding row).
    ``values[f][k]`` is the text of local index k (k=0 is OOV); indices above ``num_seen[f]``
    are values that only occur outside the training part (text side only).
    """

    schema: DatasetSchema
    values: list[list[str]]
    num_seen: list[int]

    @property
    def field_offsets(self) -> list[int]:
        offsets = [0]
        for seen in self.num_seen:
            offsets.append(offsets[-1] + seen + 1)
        return offsets

    @property
    def num_features(self) -> int:
        return self.field_offsets[-1]

    @property
    def mask_feature_id(self) -> int:
        return self.num_features

    @property
    def num_fields(self) -> int:
        return len(self.values)

    def lookup(self, table: pl.DataFrame) -> np.ndarray:
        """Raw field values → global feature ids [N, F]; unseen values → the field's OOV id."""
        columns = []
        for f, column in enumerate(self.schema.field_columns):
            if column not in table.columns:
                raise KeyError(f"input lacks field column {column!r}; expected columns {self.schema.field_columns}")
            seen = pl.DataFrame(
                {"value": self.values[f][1 : self.num_seen[f] + 1], "local": np.arange(1, self.num_seen[f] + 1, dtype=np.int64)}
            )
            local = (
                table.select(pl.col(column).cast(pl.Utf8).fill_null(OOV_TEXT).alias("value"))
                .join(seen, on="value", how="left", maintain_order="left")["local"]
                .fill_null(0)
                .to_numpy()
            )
            columns.append(local + self.field_offsets[f])
        return np.stack(columns, axis=1).astype(np.int64)


@dataclass
class Artifact:
    """The preprocessed dataset, rows in chronological order: [0, n_fit) fit, [n_fit, n_fit+n_val)
    validation, the rest test."""

    path: Path
    space: FeatureSpace
    value_ids: np.ndarray  # [N, F] int32, per-field local index into space.values
    labels: np.ndarray  # [N] int8
    row_in_source: np.ndarray  # [N] int64
    feature_frequencies: np.ndarray  # [num_features] int64, counts over the training part
    num_fit: int
    num_val: int
    num_test: int

    @property
    def split_ranges(self) -> dict[str, tuple[int, int]]:
        a, b = self.num_fit, self.num_fit + self.num_val
        return {"fit": (0, a), "val": (a, b), "test": (b, b + self.num_test), "train": (0, b)}

    def feature_ids(self, rows: np.ndarray | slice) -> np.ndarray:
        """Global feature ids for ``rows``: unseen (test-only) values become the field's OOV id."""
        local = self.value_ids[rows].astype(np.int64)
        seen = np.asarray(self.space.num_seen)
        local = np.where(local > seen, 0, local)
        return local + np.asarray(self.space.field_offsets[:-1])


def build_artifact(loaded: LoadedTable, split: SplitConfig) -> dict:
    """Pure computation (no I/O): returns the arrays and metadata of an artifact."""
    loaded.validate()
    schema = loaded.schema
    sort_keys = ([schema.time_column] if schema.time_column else []) + [ROW_COLUMN]
    table = loaded.table.sort(sort_keys, maintain_order=True)
    num_fit, num_val, num_test = split.sizes(table.height)
    num_train = num_fit + num_val
    if min(num_fit, num_test) == 0:
        raise ValueError(f"dataset {schema.name!r} has {table.height} rows: too few for a train/test split")

    values, num_seen, local_columns, frequencies = [], [], [], []
    is_train = pl.int_range(pl.len()) < num_train
    report = log.info if table.height >= LONG_WORK_VALUES else log.debug
    start = time.perf_counter()
    for index, column in enumerate(schema.field_columns):
        counts = (
            table.select(pl.col(column).alias("value"), is_train.alias("train"))
            .group_by("value")
            .agg(pl.col("train").sum().alias("train_count"))
        )
        dictionary, seen = value_dictionary(counts)
        local = table.select(pl.col(column).alias("value")).join(
            dictionary.select("value", "local"), on="value", how="left", maintain_order="left"
        )["local"]
        values.append([OOV_TEXT] + dictionary["value"].to_list())
        num_seen.append(seen.height)
        local_columns.append(local.to_numpy().astype(np.int32))
        frequencies.append(np.concatenate([[0], seen["train_count"].to_numpy().astype(np.int64)]))
        report(
            "indexed field %d/%d %r: %d values (%d seen in training) (%.1fs)",
            index + 1, len(schema.field_columns), column, dictionary.height, seen.height, time.perf_counter() - start,
        )
    return {
        "space": FeatureSpace(schema=schema, values=values, num_seen=num_seen),
        "value_ids": np.stack(local_columns, axis=1),
        "labels": table["label"].to_numpy().astype(np.int8),
        "row_in_source": table[ROW_COLUMN].to_numpy().astype(np.int64),
        "feature_frequencies": np.concatenate(frequencies),
        "num_fit": num_fit,
        "num_val": num_val,
        "num_test": num_test,
    }


_ARRAYS = ("value_ids", "labels", "row_in_source", "feature_frequencies")


def value_dictionary(counts: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One field's dictionary from its per-value training counts (``value``, ``train_count``):
    seen values first, most frequent first, ties broken by the value text (deterministic), then
    the test-only values by text; ``local`` numbers them from 1 (0 is OOV). Returns the
    dictionary and its seen part."""
    seen = counts.filter(pl.col("train_count") > 0).sort(["train_count", "value"], descending=[True, False])
    unseen = counts.filter(pl.col("train_count") == 0).sort("value")
    dictionary = pl.concat([seen, unseen])
    return dictionary.with_columns(pl.int_range(1, dictionary.height + 1, dtype=pl.Int32).alias("local")), seen


def _schema_to_json(schema: DatasetSchema) -> dict:
    return {
        "name": schema.name,
        "fields": [asdict(f) for f in schema.fields],
        "label_column": schema.label_column,
        "time_column": schema.time_column,
    }


def _schema_from_json(data: dict) -> DatasetSchema:
    return DatasetSchema(
        name=data["name"],
        fields=tuple(Field(**f) for f in data["fields"]),
        label_column=data["label_column"],
        time_column=data["time_column"],
    )


def write_artifact(parts: dict, path: Path, source: dict | None = None) -> None:
    """Writes atomically: everything goes to a sibling temp dir that is renamed into place.
    ``source``: what the artifact was built from (:func:`flip_ctr.data.cache.locate`)."""
    # Parallel sweep jobs may build the same cache: if another one published it first, keep theirs.
    with atomic_directory(path, published_marker="manifest.json") as tmp:
        for name in _ARRAYS:
            np.save(tmp / f"{name}.npy", parts[name])
        space: FeatureSpace = parts["space"]
        with open(tmp / "values.json", "w") as fh:
            json.dump(space.values, fh)
        write_manifest(tmp, space.schema, space.num_seen, parts["num_fit"], parts["num_val"], parts["num_test"], source)


def write_manifest(
    directory: Path, schema: DatasetSchema, num_seen: list[int], num_fit: int, num_val: int, num_test: int, source: dict | None = None
) -> None:
    """Written last into an artifact directory: the digest of every array and of values.json
    (checked by read_artifact), the schema, the split sizes and the source files (cache pruning)."""
    files = {f"{name}.npy": cache.hash_file(directory / f"{name}.npy") for name in _ARRAYS}
    files["values.json"] = cache.hash_file(directory / "values.json")
    manifest = {
        "format_version": CACHE_FORMAT_VERSION,
        "schema": _schema_to_json(schema),
        "num_seen": num_seen,
        "num_fit": num_fit,
        "num_val": num_val,
        "num_test": num_test,
        "files": files,
        "source": source,
    }
    with open(directory / "manifest.json", "w") as fh:
        json.dump(manifest, fh, indent=1)


class StaleCacheError(RuntimeError):
    pass


def read_artifact(path: Path, verify: bool = True) -> Artifact:
    """Loads an artifact (arrays memory-mapped). Raises StaleCacheError if anything is off."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        if manifest.get("format_version") != CACHE_FORMAT_VERSION:
            raise StaleCacheError(f"{path}: cache format {manifest.get('format_version')} != {CACHE_FORMAT_VERSION}")
        if verify:
            for name, digest in manifest["files"].items():
                if cache.hash_file(path / name) != digest:
                    raise StaleCacheError(f"{path / name}: content does not match manifest digest")
        # the [N, F] ids and per-row arrays are memory-mapped (read-only); the small frequency
        # table is read into memory, so torch.as_tensor gets a writable array
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode=None if name == "feature_frequencies" else "r") for name in _ARRAYS}
        values = json.loads((path / "values.json").read_text())
    except StaleCacheError:
        raise
    except (OSError, ValueError, KeyError) as err:
        raise StaleCacheError(f"{path}: unreadable cache ({err})") from err
    space = FeatureSpace(schema=_schema_from_json(manifest["schema"]), values=values, num_seen=manifest["num_seen"])
    return Artifact(
        path=path,
        space=space,
        num_fit=manifest["num_fit"],
        num_val=manifest["num_val"],
        num_test=manifest["num_test"],
        **arrays,
    )


def load_or_build(source, split: SplitConfig, cache_dir: Path) -> Artifact:
    """The cached artifact of ``source`` (a :class:`flip_ctr.data.sources.DataSource`: ``dataset``,
    ``options``, ``files``, ``load()``) and ``split``, built when absent, stale or corrupt. A new
    entry supersedes (removes) the entries of the same request built from older file content."""
    entry = cache.locate(Path(cache_dir), source.dataset, source.options, list(source.files), asdict(split))
    if entry.path.exists():
        try:
            artifact = read_artifact(entry.path)
            log.info("using cached preprocessed data %s", entry.path)
            return artifact
        except StaleCacheError as err:
            log.warning("rebuilding cache: %s", err)
    start = time.perf_counter()
    log.info("preprocessing %s from %s (cached afterwards in %s)", source.dataset, ", ".join(map(str, source.files)), entry.path)
    loaded = source.load()
    log.info("read %d rows of %s (%.1fs); building the feature index", loaded.table.height, source.dataset, time.perf_counter() - start)
    parts = build_artifact(loaded, split)
    write_artifact(parts, entry.path, entry.source)
    cache.prune_superseded(entry)
    log.info(
        "preprocessed %s: %d fit / %d val / %d test rows, %d features, in %.1fs → %s",
        loaded.schema.name,
        parts["num_fit"],
        parts["num_val"],
        parts["num_test"],
        parts["space"].num_features,
        time.perf_counter() - start,
        entry.path,
    )
    return read_artifact(entry.path, verify=False)
