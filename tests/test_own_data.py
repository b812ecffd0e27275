"""Bringing your own data (docs/own_data.md): the table schema's text labels and missing markers,
the documented one-liners (`data=table`, `data=bookcrossing`, `data=goodreads`) and the cache
they leave behind.

The end-to-end tests run the real CLI on tiny fixture files, one epoch each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import fixtures_data as fx
from flip_ctr.data.preprocess import SplitConfig, build_artifact, read_artifact
from flip_ctr.data.preprocess_large import preprocess_large
from flip_ctr.data.schema import DataError
from flip_ctr.data.sources import data_source
from flip_ctr.data.sources.table import load_table

SHOP_SCHEMA = """\
name: my_shop
fields:
  - {column: user, name: user id, side: user}
  - {column: age_band, name: age, side: user}
  - {column: item, name: item id, side: item}
  - {column: category, name: category, side: item}
  - {column: price_band, name: price, side: item, missing: [NA]}   # "?" is a real price band here
label: {column: bought, positive: yes, negative: no}
missing: ["?"]
"""


def write_shop(folder: Path, rows: int = 400, seed: int = 0) -> tuple[Path, Path]:
    """A table as a user brings it: a "yes"/"no" label, "?" (and, in one field, "NA") for missing
    values, no time column. The label depends on (user, category), so a model can learn it."""
    rng = np.random.default_rng(seed)
    lines = ["user,age_band,item,category,price_band,bought"]
    for _ in range(rows):
        u, i = int(rng.integers(0, 30)), int(rng.integers(0, 40))
        category = ["shoes", "hats", "bags", "?"][i % 4]
        age = "?" if rng.random() < 0.1 else ["18-24", "25-34", "35-49", "50+"][u % 4]
        price = ["low", "?", "high", "NA"][(u + i) % 4]
        likes = (u % 2 == 0) == (i % 4 < 2)
        lines.append(f"u{u:03d},{age},i{i:03d},{category},{price},{'yes' if likes != (rng.random() < 0.1) else 'no'}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shop.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "shop.yaml").write_text(SHOP_SCHEMA, encoding="utf-8")
    return folder / "shop.csv", folder / "shop.yaml"


def schema_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "schema.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- text labels, missing markers


def test_text_label_and_missing_markers(tmp_path):
    table, schema = write_shop(tmp_path)
    loaded = load_table(table, schema)
    raw = pl.read_csv(table, infer_schema=False)
    assert loaded.table["label"].to_list() == (raw["bought"] == "yes").cast(pl.Int8).to_list()
    t = loaded.table
    # "?" is the one missing value in every field but price_band, whose own list replaces the table's
    assert "?" not in t["age_band"].to_list() and (t["age_band"] == "unknown").sum() == (raw["age_band"] == "?").sum()
    assert (t["category"] == "unknown").sum() == (raw["category"] == "?").sum() > 0
    assert (t["price_band"] == "unknown").sum() == (raw["price_band"] == "NA").sum() > 0
    assert (t["price_band"] == "?").sum() == (raw["price_band"] == "?").sum() > 0
    assert loaded.schema.name == "my_shop" and loaded.schema.time_column is None
    assert [f.missing for f in loaded.schema.fields] == [("?",)] * 4 + [("NA",)]


@pytest.mark.parametrize(
    "label, values, expected",
    [
        ("{column: y, positive: yes}", ["yes", " yes ", "no", "maybe"], [1, 1, 0, 0]),  # YAML `yes` is text
        ("{column: y, positive: [Y, yes]}", ["Y", "n", "yes"], [1, 0, 1]),
        ("{column: y, positive: 1}", ["1", "2", "0"], [1, 0, 0]),
        ("{column: y, positive: clicked, negative: [skipped, ignored]}", ["clicked", "ignored", "skipped"], [1, 0, 0]),
    ],
)
def test_text_label_rules(tmp_path, label, values, expected):
    csv = tmp_path / "t.csv"
    csv.write_text("a,y\n" + "".join(f"x{k},{v}\n" for k, v in enumerate(values)), encoding="utf-8")
    schema = schema_file(tmp_path, f"name: t\nfields: [{{column: a, name: a}}]\nlabel: {label}\n")
    assert load_table(csv, schema).table["label"].to_list() == expected


@pytest.mark.parametrize(
    "yaml_label, rows, needle",
    [
        # a value that is neither positive nor negative: file, data row, line, column, value, expectation
        ("{column: y, positive: yes, negative: no}", ["yes", "no", "maybe"],
         "t.csv data row 3 (line 4): label column 'y': expected one of positive ['yes'] / negative ['no']"),
        # a missing marker in the label column is an error, not a silent drop
        ("{column: y, positive: yes}", ["yes", "?", "no"], "t.csv data row 2 (line 3): label column 'y' is missing (got '?')"),
        ("{column: y, threshold: 3}", ["5", "?"], "t.csv data row 2 (line 3): label column 'y' is missing (got '?')"),
        ("{column: y, threshold: 3}", ["5", "yes"], "label column 'y': expected a number, got 'yes' (text labels: set label.positive"),
        # a typo in positive would make every row negative
        ("{column: y, positive: yse}", ["yes", "no"], "key 'label.positive': no row of"),
    ],
)
def test_label_errors_name_row_column_and_value(tmp_path, yaml_label, rows, needle):
    csv = tmp_path / "t.csv"
    csv.write_text("a,y\n" + "".join(f"x{k},{v}\n" for k, v in enumerate(rows)), encoding="utf-8")
    schema = schema_file(tmp_path, f'name: t\nmissing: ["?"]\nfields: [{{column: a, name: a}}]\nlabel: {yaml_label}\n')
    with pytest.raises(DataError) as err:
        load_table(csv, schema)
    assert needle in str(err.value), str(err.value)


@pytest.mark.parametrize(
    "text, key",
    [
        ("name: t\nfields: [{column: a, name: a}]\nlabel: {column: y, positive: yes, threshold: 3}\n", "'label.positive'"),
        ("name: t\nfields: [{column: a, name: a}]\nlabel: {column: y, negative: no}\n", "'label.negative'"),
        ("name: t\nfields: [{column: a, name: a}]\nlabel: {column: y, positive: [yes, no], negative: no}\n", "'label.negative'"),
        ("name: t\nfields: [{column: a, name: a}]\nlabel: {column: y}\nmissing: [[1]]\n", "'missing'"),
        ("name: t\nfields: [{column: a, name: a, missing: {x: 1}}]\nlabel: {column: y}\n", "'fields[0].missing'"),
        ("name: my shop/1\nfields: [{column: a, name: a}]\nlabel: {column: y}\n", "'name'"),
    ],
)
def test_schema_errors_name_the_key(tmp_path, text, key):
    csv = tmp_path / "t.csv"
    csv.write_text("a,y\nx,yes\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_table(csv, schema_file(tmp_path, text))
    assert "schema.yaml: key " + key in str(err.value), str(err.value)


def test_streaming_path_applies_the_same_rules(tmp_path):
    table, schema = write_shop(tmp_path)
    parquet = tmp_path / "shop.parquet"
    pl.read_csv(table, infer_schema=False).write_parquet(parquet)
    reference = build_artifact(load_table(parquet, schema), SplitConfig())
    preprocess_large(parquet, schema, tmp_path / "large")
    artifact = read_artifact(tmp_path / "large")
    assert artifact.space.values == reference["space"].values and artifact.space.schema == reference["space"].schema
    np.testing.assert_array_equal(np.asarray(artifact.value_ids), reference["value_ids"])
    np.testing.assert_array_equal(np.asarray(artifact.labels), reference["labels"])


def test_directory_of_parquet_files_and_data_dir_as_the_table(tmp_path):
    table, schema = write_shop(tmp_path)
    frame = pl.read_csv(table, infer_schema=False)
    parts = tmp_path / "parts"
    parts.mkdir()
    frame[:150].write_parquet(parts / "part-0.parquet")
    frame[150:].write_parquet(parts / "part-1.parquet")
    (parts / "notes.txt").write_text("not read")
    whole = load_table(table, schema).table
    split = load_table(parts, schema).table
    assert split.drop("row_in_source").equals(whole.drop("row_in_source"))
    assert split["row_in_source"].to_list() == list(range(400))  # counted across the files
    # data.data_dir=<the table file> works like data.path (the table.py docstring's promise)
    source = data_source("table", data_dir=str(table), schema=str(schema))
    assert source.files == (table, schema) and source.load().table.equals(whole)
    # ... and is the same cache entry: only where the files are differs, not which files or how they are read
    from flip_ctr.data import cache

    same = data_source("table", path=str(table), schema=str(schema))
    locate = lambda s: cache.locate(tmp_path / "c", s.dataset, s.options, list(s.files), {}).path  # noqa: E731
    assert locate(source) == locate(same)
    assert data_source("table", path=str(parts), schema=str(schema)).files == (parts / "part-0.parquet", parts / "part-1.parquet", schema)


# ----------------------------------------------------------------------------- the documented one-liners


def flip_ctr(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run([sys.executable, "-m", "flip_ctr.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


QUICK = ["trainer.max_epochs=1", "num_threads=1", "logger=none"]
NOISE = ("litlogger", "LeafSpec", "not writable", "MISSING")


def built_entries(log: str) -> int:
    return log.count("preprocessing table from")


def test_table_one_liner_twice_then_an_edit_keeping_size_and_mtime(tmp_path):
    table, schema = write_shop(tmp_path / "data")
    # run and cache folders beside the table: they must not change the cache key
    one_liner = ["train", "data=table", f"data.path={table}", f"data.schema={schema}", *QUICK]
    first = flip_ctr(*one_liner, cwd=tmp_path / "data")
    assert first.returncode == 0, first.stderr[-3000:]
    second = flip_ctr(*one_liner, cwd=tmp_path / "data")
    assert second.returncode == 0, second.stderr[-3000:]
    cache = tmp_path / "data" / ".cache" / "flip_ctr"
    entries = lambda: sorted(p.name for p in cache.iterdir() if p.is_dir())  # noqa: E731
    assert (built_entries(first.stdout), built_entries(second.stdout)) == (1, 0)
    assert len(entries()) == 1
    for proc in (first, second):
        assert not [n for n in NOISE if n in proc.stdout + proc.stderr], [n for n in NOISE if n in proc.stdout + proc.stderr]
    runs = sorted((tmp_path / "data" / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 2 and all("_my_shop_" in r.name for r in runs)  # run folders: the schema's name
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["dataset"] == "my_shop" and metrics["plm"] is None  # no PLM in an ID model from scratch
    assert "| my_shop |" in first.stdout

    # one value edited, size and mtime restored: noticed, rebuilt, the old entry pruned
    before = table.stat()
    data = table.read_bytes()
    edited = data.replace(b"\nu0", b"\nu9", 1)  # the first row's user
    assert len(edited) == len(data) and edited != data
    old_entry = entries()
    table.write_bytes(edited)
    os.utime(table, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (table.stat().st_size, table.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    third = flip_ctr(*one_liner, cwd=tmp_path / "data")
    assert third.returncode == 0, third.stderr[-3000:]
    assert built_entries(third.stdout) == 1
    assert len(entries()) == 1 and entries() != old_entry

    # serving: "?" and a null are the one missing value the model learned, in every field but price_band
    from flip_ctr import serving

    newest = max((tmp_path / "data" / "outputs" / "train" / "runs").iterdir())  # trained on the edited table
    scorer = serving.load_scorer(newest)
    raw = pl.DataFrame({"user": ["u001", "u001", "u001"], "age_band": ["?", None, "unknown"], "item": ["i002"] * 3,
                        "category": ["?", None, " ? "], "price_band": ["NA", None, "NA"]})
    ids, unseen = serving.encode_rows(scorer, raw)
    assert (ids == ids[0]).all() and not unseen[:, 1].any()  # "unknown" age was seen in training: not OOV
    assert list(scorer.missing) == [["?"]] * 4 + [["NA"]]


@pytest.mark.parametrize("dataset", ["bookcrossing", "goodreads"])
def test_bookcrossing_and_goodreads_one_liners(tmp_path, dataset):
    if dataset == "bookcrossing":
        data = fx.write_bookcrossing(tmp_path / "bx", ratings=fx.bx_training_ratings())
    else:
        data = fx.write_goodreads(tmp_path / "goodreads", interactions=fx.goodreads_training_interactions())
    proc = flip_ctr("train", f"data={dataset}", f"data.data_dir={data}", *QUICK, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    assert f"_{dataset}_" in run.name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"] == dataset and metrics["num_test_rows"] == 24
