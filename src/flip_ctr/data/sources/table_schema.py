"""The YAML schema of your own table (``data=table``), and its value rules as polars expressions.

Both table paths apply the same rules from here: :func:`flip_ctr.data.sources.table.load_table`
(in memory) and :mod:`flip_ctr.data.preprocess_large` (streaming). The keys::

    name: my_shop                          # the dataset's name: metrics, tables, run folders, serving
    fields:
      - {column: user, name: user id, side: user}
      - {column: item_title, name: item title, side: item}
      - {column: hour, name: hour of day, missing: ["-1"]}   # per-field markers replace the table's
    label: {column: clicked}                                 # already 0/1 (or true/false)
    # label: {column: stars, threshold: 3, drop_equal: true} # stars > 3 → 1, == 3 dropped
    # label: {column: bought, positive: "yes"}               # text: "yes" → 1, any other value → 0
    # label: {column: bought, positive: [yes, y], negative: [no, n]}  # and anything else is an error
    missing: ["?", "NA"]                   # optional: values that mean "missing" in every field
    time_column: ts                        # optional
    separator: ","                         # optional, CSV only (default ",", ".tsv": tab)

Values in the YAML file are text unless they are numbers: ``yes``/``no``/``on``/``off`` stay
text (only ``true``/``false`` are booleans), so ``positive: yes`` means the string "yes".

Value rules: a field value that is null, empty or (after stripping surrounding whitespace) one of
the field's missing markers becomes the one missing value ``"unknown"`` (the serving path maps
the same markers, and a null, to it). A label that is null, empty or a marker is an error, never a
silent drop.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from flip_ctr.data.schema import DataError

UNKNOWN = "unknown"

TOP_KEYS = {"name", "fields", "label", "time_column", "separator", "missing"}
REQUIRED_TOP = ("name", "fields", "label")
FIELD_KEYS = {"column", "name", "side", "missing"}
LABEL_KEYS = {"column", "threshold", "drop_equal", "positive", "negative"}
SIDES = ("user", "item", "context")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _yaml_loader():
    """SafeLoader with YAML 1.2 booleans: only true/false, so ``yes``/``no``/``on`` stay text."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    bool_tag = "tag:yaml.org,2002:bool"
    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != bool_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    return Loader


def _key_error(yaml_path: Path, key: str, message: str) -> DataError:
    return DataError(f"{yaml_path}: key {key!r}: {message}")


def _text_list(value: Any, yaml_path: Path, key: str) -> tuple[str, ...]:
    """A value or a list of values (text or numbers) → a tuple of strings."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise _key_error(yaml_path, key, f"expected a value or a list of values (text or numbers), got {item!r}")
    return tuple(str(item).strip() for item in items)


def _no_unknown_keys(mapping: dict, allowed: set[str], yaml_path: Path, prefix: str = "") -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise _key_error(yaml_path, f"{prefix}{unknown[0]}", f"unknown key (allowed: {sorted(allowed)})")


def _non_empty_text(mapping: dict, key: str, yaml_path: Path, shown: str) -> str:
    if key not in mapping:
        raise _key_error(yaml_path, shown, "missing")
    value = mapping[key]
    if not isinstance(value, str) or not value:
        raise _key_error(yaml_path, shown, f"expected a non-empty string, got {value!r}")
    return value


def _parse_yaml(yaml_path: Path) -> dict:
    import yaml

    from flip_ctr.data.sources.table import decode_text, read_bytes

    text = decode_text(read_bytes(yaml_path), yaml_path, "utf-8")
    try:
        spec = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise DataError(f"{yaml_path}: not valid YAML ({err})") from err
    if not isinstance(spec, dict):
        raise DataError(f"{yaml_path}: expected a mapping with keys {list(REQUIRED_TOP)}, got {type(spec).__name__}")
    return spec


def _fields(spec: dict, yaml_path: Path, table_missing: tuple[str, ...]) -> list[dict]:
    fields = spec["fields"]
    if not isinstance(fields, list) or not fields:
        raise _key_error(yaml_path, "fields", "expected a non-empty list of {column, name, side}")
    out = []
    for i, f in enumerate(fields):
        key = f"fields[{i}]"
        if not isinstance(f, dict):
            raise _key_error(yaml_path, key, f"expected a mapping {{column, name, side}}, got {f!r}")
        _no_unknown_keys(f, FIELD_KEYS, yaml_path, f"{key}.")
        column = _non_empty_text(f, "column", yaml_path, f"{key}.column")
        name = _non_empty_text(f, "name", yaml_path, f"{key}.name")
        side = f.get("side", "context")
        if side not in SIDES:
            raise _key_error(yaml_path, f"{key}.side", f"expected user, item or context, got {side!r}")
        missing = _text_list(f["missing"], yaml_path, f"{key}.missing") if "missing" in f else table_missing
        out.append({"column": column, "name": name, "side": side, "missing": missing})
    columns = [f["column"] for f in out]
    dups = sorted({c for c in columns if columns.count(c) > 1})
    if dups:
        raise _key_error(yaml_path, "fields", f"column(s) {dups} listed more than once")
    return out


def _label(spec: dict, yaml_path: Path, columns: list[str], table_missing: tuple[str, ...]) -> dict:
    label = spec["label"]
    if not isinstance(label, dict):
        raise _key_error(yaml_path, "label", f"expected a mapping {{column, threshold | positive}}, got {label!r}")
    _no_unknown_keys(label, LABEL_KEYS, yaml_path, "label.")
    column = _non_empty_text(label, "column", yaml_path, "label.column")
    if column in columns:
        raise _key_error(yaml_path, "label.column", f"{column!r} is also listed as a field")
    out: dict[str, Any] = {"column": column, "missing": table_missing}
    if "threshold" in label and "positive" in label:
        raise _key_error(yaml_path, "label.positive", "give either threshold (numeric labels) or positive (text labels), not both")
    if "threshold" in label:
        threshold = label["threshold"]
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise _key_error(yaml_path, "label.threshold", f"expected a number, got {threshold!r}")
        out["threshold"] = float(threshold)
    if "drop_equal" in label:
        if not isinstance(label["drop_equal"], bool):
            raise _key_error(yaml_path, "label.drop_equal", f"expected true/false, got {label['drop_equal']!r}")
        if "threshold" not in label:
            raise _key_error(yaml_path, "label.drop_equal", "only meaningful together with label.threshold")
        out["drop_equal"] = label["drop_equal"]
    if "negative" in label and "positive" not in label:
        raise _key_error(yaml_path, "label.negative", "only meaningful together with label.positive")
    if "positive" in label:
        out["positive"] = _text_list(label["positive"], yaml_path, "label.positive")
        if "negative" in label:
            out["negative"] = _text_list(label["negative"], yaml_path, "label.negative")
            both = sorted(set(out["positive"]) & set(out["negative"]))
            if both:
                raise _key_error(yaml_path, "label.negative", f"value(s) {both} are also listed as positive")
    return out


def read_table_schema(schema_yaml: str | Path) -> dict[str, Any]:
    """Parse and validate the YAML schema (structure only, not the table's columns).

    Returns the normalised spec: every field carries its ``missing`` markers (its own, else the
    table's), the label its rule (``threshold``/``drop_equal`` or ``positive``/``negative``).
    """
    yaml_path = Path(schema_yaml)
    spec = _parse_yaml(yaml_path)
    _no_unknown_keys(spec, TOP_KEYS, yaml_path)
    for key in REQUIRED_TOP:
        if key not in spec:
            raise _key_error(yaml_path, key, f"missing (required keys: {', '.join(REQUIRED_TOP)})")
    name = _non_empty_text(spec, "name", yaml_path, "name")
    if not NAME_PATTERN.fullmatch(name):
        raise _key_error(yaml_path, "name", f"expected letters, digits, '_', '-' or '.' (it names run folders), got {name!r}")
    missing = _text_list(spec["missing"], yaml_path, "missing") if "missing" in spec else ()
    fields = _fields(spec, yaml_path, missing)
    label = _label(spec, yaml_path, [f["column"] for f in fields], missing)
    time_column = spec.get("time_column")
    if time_column is not None and (not isinstance(time_column, str) or not time_column):
        raise _key_error(yaml_path, "time_column", f"expected a column name, got {time_column!r}")
    separator = spec.get("separator")
    if separator is not None and (not isinstance(separator, str) or len(separator) != 1):
        raise _key_error(yaml_path, "separator", f"expected one character, got {separator!r}")
    return {"name": name, "fields": fields, "label": label, "time_column": time_column, "separator": separator, "missing": missing}


def check_columns(spec: dict, columns: list[str], yaml_path: Path, where: str) -> None:
    """Every column the schema names must exist in the table."""
    needed = [(f"fields[{i}].column", f["column"]) for i, f in enumerate(spec["fields"])]
    needed.append(("label.column", spec["label"]["column"]))
    if spec["time_column"]:
        needed.append(("time_column", spec["time_column"]))
    for key, column in needed:
        if column not in columns:
            raise DataError(f"{yaml_path}: key {key!r}: column {column!r} not found in {where} (its columns: {columns[:30]})")


# ------------------------------------------------------------------------------------------
# value rules as expressions
# ------------------------------------------------------------------------------------------
def _text(column: str, dtype: pl.DataType) -> pl.Expr:
    return pl.col(column) if dtype == pl.Utf8 else pl.col(column).cast(pl.Utf8)


def is_missing(column: str, dtype: pl.DataType, markers: tuple[str, ...]) -> pl.Expr:
    """Null, empty/blank, or one of ``markers`` after stripping surrounding whitespace."""
    stripped = _text(column, dtype).str.strip_chars()
    return stripped.is_null() | (stripped == "") | stripped.is_in(list(markers))


def field_value(field: dict, dtype: pl.DataType, *, strip: bool) -> pl.Expr:
    """A field's text value; missing (see :func:`is_missing`) → ``"unknown"``."""
    text = _text(field["column"], dtype)
    if strip:
        text = text.str.strip_chars()
    missing = is_missing(field["column"], dtype, field["missing"])
    return pl.when(missing).then(pl.lit(UNKNOWN)).otherwise(text)


def numeric_label(column: str, dtype: pl.DataType) -> pl.Expr:
    """Label as Float64: booleans and true/false text as 1/0; null where it is not a number."""
    col = pl.col(column)
    if dtype == pl.Boolean:
        return col.cast(pl.Float64)
    if dtype == pl.Utf8:
        lowered = col.str.strip_chars().str.to_lowercase()
        return lowered.replace({"true": "1", "false": "0"}).cast(pl.Float64, strict=False)
    return col.cast(pl.Float64, strict=False)


def text_label(label: dict, dtype: pl.DataType) -> pl.Expr:
    """``positive`` values → 1.0, ``negative`` values (or, without ``negative``, any other) → 0.0, else null."""
    text = _text(label["column"], dtype).str.strip_chars()
    negative = text.is_in(list(label["negative"])) if "negative" in label else pl.lit(True)
    return pl.when(text.is_in(list(label["positive"]))).then(1.0).when(negative).then(0.0).otherwise(None)


def label_rule(label: dict, dtype: pl.DataType) -> tuple[pl.Expr, pl.Expr | None]:
    """(the Int8 label, the rows kept or None for all): threshold/drop_equal, positive, or 0/1."""
    value = text_label(label, dtype) if "positive" in label else numeric_label(label["column"], dtype)
    if "threshold" not in label:
        return value.cast(pl.Int8), None
    keep = value != label["threshold"] if label.get("drop_equal") else None
    return (value > label["threshold"]).cast(pl.Int8), keep


def _label_problems(label: dict, dtype: pl.DataType, yaml_path: Path) -> list[tuple[pl.Expr, Callable[[Any], str]]]:
    """(condition, message for the offending value), in the order they are checked."""
    column = label["column"]
    shown = f"label column {column!r}"
    problems: list[tuple[pl.Expr, Callable[[Any], str]]] = [
        (is_missing(column, dtype, label["missing"]), lambda v: f"{shown} is missing (got {v!r}); every row needs a label")
    ]
    if "positive" in label:
        expected = f"one of positive {list(label['positive'])} / negative {list(label['negative'])}" if "negative" in label else ""
        if expected:
            problems.append((text_label(label, dtype).is_null(), lambda v: f"{shown}: expected {expected} ({yaml_path}), got {v!r}"))
        return problems
    numeric = numeric_label(column, dtype)
    problems.append((numeric.is_null(), lambda v: f"{shown}: expected a number, got {v!r} (text labels: set label.positive in {yaml_path})"))
    if "threshold" not in label:
        problems.append((
            ~numeric.is_in([0.0, 1.0]),
            lambda v: f"{shown}: expected 0/1 (no threshold in {yaml_path}), got {v!r}; add `threshold:` to binarise ratings "
            "or `positive:` for text labels",
        ))
    return problems


def row_location(source: str, row: int, line_offset: int = 0) -> str:
    """"FILE data row 3 (line 4)": ``row`` is 0-based; ``line_offset`` (CSV: 2) gives the line."""
    return f"{source} data row {row + 1}" + (f" (line {row + line_offset})" if line_offset else "")


def check_labels(lf: pl.LazyFrame, label: dict, dtype: pl.DataType, yaml_path: Path, source: str,
                 line_offset: int, row_column: str) -> None:
    """The first row whose label breaks a rule → DataError naming the file, row, column and value.

    ``lf`` must carry the 0-based row position in ``row_column``. A text label whose positive
    value(s) match no row is an error too (a typo would otherwise make every row negative).
    """
    column = label["column"]
    for condition, message in _label_problems(label, dtype, yaml_path):
        found = lf.filter(condition.fill_null(True)).select(row_column, column).head(1).collect(engine="streaming")
        if found.height:
            row, value = found.row(0)
            raise DataError(f"{row_location(source, row, line_offset)}: {message(value)}")
    if "positive" in label:
        positives = lf.select(text_label(label, dtype).sum()).collect(engine="streaming").item()
        if not positives:
            raise DataError(
                f"{yaml_path}: key 'label.positive': no row of {source} has label column "
                f"{column!r} equal to {list(label['positive'])} (values are compared as text after stripping spaces)"
            )


__all__ = [
    "UNKNOWN",
    "read_table_schema",
    "check_columns",
    "is_missing",
    "field_value",
    "numeric_label",
    "text_label",
    "label_rule",
    "check_labels",
    "row_location",
]
