"""The contract between dataset loaders and everything downstream.

A loader reads raw files and returns a :class:`LoadedTable`: one polars DataFrame in which
every field column already holds the *readable* text value of the feature (decoded age
ranges, occupation names, genres joined with ", "), plus the label and (where the source has
one) a timestamp, and a :class:`DatasetSchema` that says which columns are fields, how to
name them in the text template and which side (user / item / context) they describe.

The same string is used for the ID vocabulary and for the text template, so the two
modalities always describe the same feature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

LABEL_COLUMN = "label"
TIME_COLUMN = "timestamp"
# Original position of the row in its source file; used as the tie-breaker of the
# chronological sort so that equal timestamps keep file order (deterministic split).
ROW_COLUMN = "row_in_source"

SIDES = ("user", "item", "context")


class DataError(ValueError):
    """Malformed input data. The message names the file, the line/field and what was expected."""


@dataclass(frozen=True)
class Field:
    """One categorical feature field.

    column:  column name in the loaded table.
    name:    human field name used in the text template ("<name> is <value>.").
    side:    "user", "item" or "context" (CTR-BERT's two towers split on this).
    missing: raw values that mean "missing" (mapped to "unknown" in training and in serving).
    """

    column: str
    name: str
    side: str = "context"
    # Raw values that mean "missing" (a table schema's ``missing:``): the loader mapped them to the
    # one missing value, and serving maps them the same way.
    missing: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "missing", tuple(self.missing))  # a list read back from JSON
        if self.side not in SIDES:
            raise ValueError(f"field {self.column!r}: side must be one of {SIDES}, got {self.side!r}")


@dataclass(frozen=True)
class LabelRule:
    """Binary label from a rating: ``rating > threshold`` is positive.

    With ``drop_equal`` the rows whose rating equals the threshold are removed (ML-1M:
    rating 3 is neither liked nor disliked, FLIP_METHOD.md Table I).
    """

    threshold: float
    drop_equal: bool = False

    def apply(self, table: pl.DataFrame, rating_column: str) -> pl.DataFrame:
        rating = pl.col(rating_column)
        if self.drop_equal:
            table = table.filter(rating != self.threshold)
        return table.with_columns((rating > self.threshold).cast(pl.Int8).alias(LABEL_COLUMN))


@dataclass(frozen=True)
class DatasetSchema:
    name: str
    fields: tuple[Field, ...]
    label_column: str = LABEL_COLUMN
    time_column: str | None = TIME_COLUMN

    def __post_init__(self) -> None:
        columns = [f.column for f in self.fields]
        if len(set(columns)) != len(columns):
            raise ValueError(f"dataset {self.name!r}: duplicate field columns {columns}")
        if not columns:
            raise ValueError(f"dataset {self.name!r}: no fields")

    @property
    def field_columns(self) -> list[str]:
        return [f.column for f in self.fields]

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    def fields_on_side(self, side: str) -> list[int]:
        """Indices of the fields that describe ``side`` ("user", "item" or "context")."""
        return [i for i, f in enumerate(self.fields) if f.side == side]


@dataclass
class LoadedTable:
    """What every loader returns.

    table columns: every ``schema.field_columns`` as Utf8 (readable value, never null:
    missing values are the string "unknown" or similar, decided by the loader and documented),
    ``label`` Int8 in {0, 1}, ``timestamp`` Int64 when ``schema.time_column`` is set, and
    ``row_in_source`` Int64 (0-based order in the source file).
    """

    table: pl.DataFrame
    schema: DatasetSchema
    source_files: list[Path] = field(default_factory=list)

    def validate(self) -> None:
        """Checks the contract above; raises DataError naming the offending column."""
        missing = [c for c in self.schema.field_columns + [LABEL_COLUMN, ROW_COLUMN] if c not in self.table.columns]
        if self.schema.time_column and self.schema.time_column not in self.table.columns:
            missing.append(self.schema.time_column)
        where = ", ".join(str(p) for p in self.source_files) or self.schema.name
        if missing:
            raise DataError(f"{where}: loaded table lacks columns {missing}")
        if self.table.height == 0:
            raise DataError(f"{where}: no rows left after loading (empty file or every row filtered out)")
        for column in self.schema.field_columns:
            if self.table[column].dtype != pl.Utf8:
                raise DataError(f"{where}: field column {column!r} must be text (Utf8), got {self.table[column].dtype}")
            nulls = self.table[column].null_count()
            if nulls:
                raise DataError(f"{where}: field column {column!r} has {nulls} null values")
        labels = set(self.table[LABEL_COLUMN].unique().to_list())
        if not labels <= {0, 1}:
            raise DataError(f"{where}: label column holds {sorted(labels)}, expected only 0 and 1")
