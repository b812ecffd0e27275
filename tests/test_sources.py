"""Dataset loaders: fixture files in the exact raw formats, malformed inputs, downloads, real data (slow)."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import time
import zipfile
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import fixtures_data as fx
from flip_ctr.data.schema import DataError
from flip_ctr.data.sources import LOADERS, load_dataset
from flip_ctr.data.sources import download as dl
from flip_ctr.data.sources.bookcrossing import load_bookcrossing, read_bx_csv, USERS_HEADER
from flip_ctr.data.sources.goodreads import load_goodreads
from flip_ctr.data.sources.movielens import load_ml1m, load_ml100k
from flip_ctr.data.sources.table import load_table

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def rows(loaded, *columns):
    return loaded.table.select(columns).rows()


# ----------------------------------------------------------------------------- ML-1M


def test_ml1m_labels_decoding_and_order(tmp_path):
    loaded = load_ml1m(fx.write_ml1m(tmp_path / "ml-1m"))
    t = loaded.table
    assert loaded.schema.field_columns == ["user_id", "gender", "age", "occupation", "zipcode", "movie_id", "title", "genre"]
    assert loaded.schema.field_names[4] == "zip code" and loaded.schema.fields[6].name == "movie title"
    assert [f.side for f in loaded.schema.fields] == ["user"] * 5 + ["item"] * 3
    # rating 3 rows (source rows 1, 4, 6) dropped; > 3 → 1, < 3 → 0; file order kept
    assert t["row_in_source"].to_list() == [0, 2, 3, 5, 7]
    assert t["label"].to_list() == [1, 0, 1, 0, 1]
    assert t["label"].dtype == pl.Int8 and t["timestamp"].dtype == pl.Int64
    assert t["timestamp"].to_list() == [978300760, 978301968, 978300275, 978824292, 978824294]
    by_user = dict(zip(t["user_id"], zip(t["gender"], t["age"], t["occupation"], t["zipcode"])))
    assert by_user["1"] == ("female", "under 18", "K-12 student", "48067")
    assert by_user["2"] == ("male", "56+", "self-employed", "70072")
    assert by_user["3"] == ("male", "25-34", "college/grad student", "55117")
    assert by_user["4"] == ("female", "45-49", "other", "02460")  # leading zero kept
    movies = dict(zip(t["movie_id"], zip(t["title"], t["genre"])))
    assert movies["1"] == ("Toy Story (1995)", "Animation, Children's, Comedy")
    assert movies["2"] == ("Misérables, Les (1995)", "Drama, Musical")  # ISO-8859-1 decoded


def test_ml1m_ratings_file_resolution(tmp_path, caplog):
    folder = fx.write_ml1m(tmp_path / "ml-1m", ratings_name="ratings.reconstructed.dat.gz")
    with caplog.at_level(logging.INFO, logger="flip_ctr.data.sources.movielens"):
        loaded = load_ml1m(tmp_path)  # the parent folder works too
    assert loaded.table.height == 5
    assert "ratings.reconstructed.dat.gz" in caplog.text
    # ratings.dat.gz beats the reconstructed file, ratings.dat beats both
    fx.write_lines(folder / "ratings.dat.gz", fx.ml1m_ratings_lines()[:2], gz=True)
    assert load_ml1m(folder).source_files[0].name == "ratings.dat.gz"
    fx.write_lines(folder / "ratings.dat", fx.ml1m_ratings_lines()[:1])
    assert load_ml1m(folder).table.height == 1
    # explicit file, relative to the folder
    assert load_ml1m(folder, ratings_file="ratings.dat.gz").table.height == 1
    with pytest.raises(DataError, match="nope.dat"):
        load_ml1m(folder, ratings_file="nope.dat")


# ----------------------------------------------------------------------------- ML-100K


def test_ml100k_original_and_atomic_give_identical_tables(tmp_path):
    original = load_ml100k(fx.write_ml100k_original(tmp_path / "orig"))
    atomic = load_ml100k(fx.write_ml100k_atomic(tmp_path / "atomic"))
    assert_frame_equal(original.table, atomic.table)
    assert original.schema == atomic.schema
    t = original.table
    assert t["row_in_source"].to_list() == [0, 2, 3, 4]  # the rating-3 row is dropped
    assert t["label"].to_list() == [1, 0, 1, 0]
    items = {r[0]: r[1:] for r in t.select("movie_id", "title", "release_year", "genre").rows()}
    assert items["1"] == ("Toy Story", "1995", "Animation, Children's, Comedy")
    assert items["3"] == ("Shanghai Triad (Yao a yao yao dao waipo qiao)", "1995", "Drama")
    assert items["4"] == ("Good Morning", "1971", "unknown")
    users = {r[0]: r[1:] for r in t.select("user_id", "age", "gender", "occupation", "zipcode").rows()}
    assert users["1"] == ("24", "male", "technician", "85711")
    assert users["3"] == ("23", "male", "writer", "32067")


def test_ml100k_detects_format_and_explains_missing(tmp_path):
    both = fx.write_ml100k_atomic(tmp_path / "both")
    fx.write_ml100k_original(both)
    assert load_ml100k(both, format="atomic").source_files[0].name == "ml-100k.inter"
    assert load_ml100k(both).source_files[0].name == "u.data"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"u\.data.*ml-100k\.inter"):
        load_ml100k(tmp_path / "empty")


# ----------------------------------------------------------------------------- Book-Crossing


def test_bookcrossing_fixture(tmp_path, caplog):
    folder = fx.write_bookcrossing(tmp_path / "bx")
    with caplog.at_level(logging.INFO):
        loaded = load_bookcrossing(folder)
    t = loaded.table
    assert loaded.schema.time_column is None and "timestamp" not in t.columns
    assert t.height == len(fx.BX_RATINGS_ROWS)  # every rating row is kept
    assert t["row_in_source"].to_list() == list(range(6))
    assert t["label"].to_list() == [0, 0, 1, 1, 1, 1]  # > 5 → 1 (5 and implicit 0 are negatives)
    users = {r[0]: r[1:] for r in t.select("user_id", "location", "age").rows()}
    assert users["1"] == ("nyc, new york, usa", "unknown")  # unquoted NULL age
    assert users["2"] == ("münchen, bayern, germany", "18")  # ISO-8859-1
    assert users["3"] == ("cernusco s , milan, italy", "31")  # quoted line break → space
    assert users["4"] == ('kuala lumpur, "n/a", malaysia', "unknown")  # \" escapes
    books = {r[0]: r[1:] for r in t.select("isbn", "title", "author", "year", "publisher").rows()}
    assert books["0060973129"] == ("Decision in Normandy", "Carlo D'Este", "unknown", "Harper & Row")
    assert books["0789466953"] == ("DK Readers: Creating the X-Men (Level 4)", "James Buckley", "2000", "DK Publishing Inc")
    assert books["9999999999"] == ("unknown",) * 4  # ISBN missing from BX-Books: kept, book fields unknown
    assert "1 of 6 ratings have an ISBN not in" in caplog.text
    dropped = load_bookcrossing(folder, missing_books="drop")
    assert dropped.table.height == 5 and "9999999999" not in dropped.table["isbn"].to_list()


def test_bookcrossing_fast_and_careful_parsers_agree(tmp_path):
    path = fx.write_lines(tmp_path / "r.csv", fx.bx_ratings_lines(), newline="\r\n")
    fast = read_bx_csv(path, ("User-ID", "ISBN", "Book-Rating"))
    careful = read_bx_csv(path, ("User-ID", "ISBN", "Book-Rating"), fast=False)
    assert_frame_equal(fast, careful)


def test_bookcrossing_real_users_file():
    path = SHARED / "bookcrossing" / "BX-Users.csv"
    if not path.exists():
        pytest.skip("shared BX-Users.csv not available")
    users = read_bx_csv(path, USERS_HEADER)
    assert users.height == 278_858
    row = users.filter(pl.col("User-ID") == "275081")
    assert row["Location"][0] == "cernusco s\n, milan, italy" and row["_line"][0] == 275_082  # the record starts there, ends on the next line
    assert users.filter(pl.col("User-ID") == "278858")["_line"][0] == 278_860  # lines after it stay exact
    assert users["Age"].to_list().count("NULL") > 100_000


# ----------------------------------------------------------------------------- GoodReads


def test_goodreads_fixture(tmp_path):
    loaded = load_goodreads(fx.write_goodreads(tmp_path / "goodreads"))
    assert loaded.schema.num_fields == 15
    assert [f.side for f in loaded.schema.fields].count("user") == 1
    t = loaded.table
    assert t["label"].to_list() == [1, 0, 0, 1]  # rating > 3
    # date_added, or date_updated when date_added is empty; time zones honoured
    assert t["timestamp"].to_list() == [1508276038, 978307200, 1332316800, 1332403200]
    first = t.row(0, named=True)
    assert first["title"] == "W.C. Fields: A Life on Film" and first["author"] == "Ronald J. Fields"
    assert first["publication_month"] == "September" and first["is_ebook"] == "no" and first["series"] == "no"
    assert first["popularity"] == "1000-9999" and first["shelf"] == "fantasy" and first["language"] == "eng"
    second = t.row(1, named=True)
    assert second["author"] == "Anita Diamant"  # the illustrator is not an author
    assert second["publication_month"] == "unknown" and second["is_ebook"] == "yes" and second["series"] == "yes"
    assert second["popularity"] == "<10" and second["shelf"] == "unknown"  # only generic shelves
    # without the authors file the author ids are used
    no_authors = load_goodreads(fx.write_goodreads(tmp_path / "g2", authors=None))
    assert no_authors.table["author"][0] == "604031"


# ----------------------------------------------------------------------------- your own table


def _write_schema(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_table_csv_and_parquet(tmp_path):
    csv_path = tmp_path / "shop.csv"
    csv_path.write_text("user,item_title,price,stars,ts\n007,Red shoe,9.5,5,100\n008,,3,3,50\n009,Hat,,1,75\n", encoding="utf-8")
    schema = _write_schema(
        tmp_path / "shop.yaml",
        "name: shop\nfields:\n  - {column: user, name: user id, side: user}\n"
        "  - {column: item_title, name: item title, side: item}\n  - {column: price, name: price}\n"
        "label: {column: stars, threshold: 3, drop_equal: true}\ntime_column: ts\n",
    )
    loaded = load_table(csv_path, schema)
    assert rows(loaded, "user", "item_title", "price", "label", "timestamp", "row_in_source") == [
        ("007", "Red shoe", "9.5", 1, 100, 0),
        ("009", "Hat", "unknown", 0, 75, 2),
    ]
    assert [f.side for f in loaded.schema.fields] == ["user", "item", "context"]
    pq = tmp_path / "shop.parquet"
    pl.DataFrame({"user": [7, 8], "item_title": ["a", None], "price": [1.5, 2.0], "stars": [1, 0], "ts": [5, 6]}).write_parquet(pq)
    schema2 = _write_schema(
        tmp_path / "s2.yaml",
        "name: shop\nfields: [{column: user, name: user id, side: user}, {column: item_title, name: item title, side: item}]\n"
        "label: {column: stars}\n",
    )
    loaded = load_table(pq, schema2)
    assert rows(loaded, "user", "item_title", "label") == [("7", "a", 1), ("8", "unknown", 0)]
    assert loaded.schema.time_column is None
    assert load_dataset("table", pq, schema_yaml=schema2).table.height == 2
    # the datamodule's call: LOADERS[name](data_dir=..., **loader_kwargs)
    assert LOADERS["table"](data_dir=tmp_path, path="shop.parquet", schema_yaml="s2.yaml").table.height == 2
    assert LOADERS["table"](data_dir=pq, schema_yaml=schema2).table.height == 2


@pytest.mark.parametrize(
    "yaml_text, needle",
    [
        ("name: s\nfields: [{column: a, name: a}]\nlabel: {column: y}\ncolour: red\n", "'colour'"),
        ("name: s\nfields: [{column: a, name: a}]\n", "'label'"),
        ("name: s\nfields: [{column: nope, name: a}]\nlabel: {column: y}\n", "'fields[0].column'"),
        ("name: s\nfields: [{column: a, name: a, side: left}]\nlabel: {column: y}\n", "'fields[0].side'"),
        ("name: s\nfields: [{column: a, name: a}]\nlabel: {column: y, treshold: 3}\n", "'label.treshold'"),
        ("name: s\nfields: [{column: a, name: a}]\nlabel: {column: y}\ntime_column: when\n", "'time_column'"),
    ],
)
def test_table_schema_errors_name_yaml_file_and_key(tmp_path, yaml_text, needle):
    (tmp_path / "t.csv").write_text("a,y\nx,1\n", encoding="utf-8")
    schema = _write_schema(tmp_path / "bad_schema.yaml", yaml_text)
    with pytest.raises(DataError) as err:
        load_table(tmp_path / "t.csv", schema)
    assert "bad_schema.yaml" in str(err.value) and needle in str(err.value)


# ----------------------------------------------------------------------------- malformed input


RATINGS = fx.ml1m_ratings_lines()


MALFORMED = {
    # case: (loader, writer(tmp_path) -> folder, file name in the message, line in the message, other text)
    "ml1m_field_count": (
        load_ml1m,
        lambda p: fx.write_ml1m(p, ratings_lines=RATINGS * 2 + ["3::1::4"] + RATINGS),
        "ratings.dat",
        17,
        "expected 4 '::'-separated fields UserID::MovieID::Rating::Timestamp, got 3",
    ),
    "ml1m_comma_separated": (
        load_ml1m,
        lambda p: fx.write_ml1m(p, ratings_lines=[r.replace("::", ",") for r in RATINGS]),
        "ratings.dat",
        1,
        "','-separated",
    ),
    "ml1m_non_numeric_rating": (
        load_ml1m,
        lambda p: fx.write_ml1m(p, ratings_lines=RATINGS[:4] + ["1::2::four::978300760"]),
        "ratings.dat",
        5,
        "'Rating': expected an integer rating from 1 to 5, got 'four'",
    ),
    # ratings outside the documented scale (whole stars 1-5): once accepted, 7 became a positive
    **{
        f"ml1m_rating_{name}": (
            load_ml1m,
            lambda p, r=rating: fx.write_ml1m(p, ratings_lines=RATINGS[:3] + [f"1::2::{r}::978300760"] + RATINGS[3:]),
            "ratings.dat",
            4,
            f"column 'Rating': expected an integer rating from 1 to 5, got '{rating}'",
        )
        for name, rating in (("7", "7"), ("minus_1", "-1"), ("3_5", "3.5"), ("0", "0"))
    },
    "ml100k_original_fractional_rating": (
        load_ml100k,
        lambda p: (fx.write_ml100k_original(p), fx.write_lines(p / "u.data", ["1\t1\t5\t1", "2\t2\t3.5\t2"]))[0],
        "u.data",
        2,
        "column 'rating': expected an integer rating from 1 to 5, got '3.5'",
    ),
    "ml100k_atomic_rating_out_of_range": (
        load_ml100k,
        lambda p: (fx.write_ml100k_atomic(p), fx.write_lines(
            p / "ml-100k.inter", ["user_id:token\titem_id:token\trating:float\ttimestamp:float", "1\t1\t7\t5"], encoding="utf-8"))[0],
        "ml-100k.inter",
        2,
        "column 'rating': expected an integer rating from 1 to 5, got '7'",
    ),
    # the last line cut inside the timestamp ("978824294" → "9788"): once read as a rating of 1970
    "ml1m_truncated_last_line": (
        load_ml1m,
        lambda p: (fx.write_ml1m(p), (p / "ratings.dat").write_bytes((p / "ratings.dat").read_bytes()[:-6]))[0],
        "ratings.dat",
        8,
        "does not end with a newline, so its last line may be truncated (it ends with '4::3::5::9788')",
    ),
    "ml100k_atomic_truncated_items": (
        load_ml100k,
        lambda p: (fx.write_ml100k_atomic(p), (p / "ml-100k.item").write_bytes((p / "ml-100k.item").read_bytes()[:-3]))[0],
        "ml-100k.item",
        5,
        "may be truncated",
    ),
    "ml1m_non_numeric_timestamp": (
        load_ml1m,
        lambda p: fx.write_ml1m(p, ratings_lines=RATINGS[:2] + ["1::2::4::2000-01-01"]),
        "ratings.dat",
        3,
        "'Timestamp': expected an integer",
    ),
    "ml1m_unknown_user": (
        load_ml1m,
        lambda p: fx.write_ml1m(p, ratings_lines=RATINGS[:6] + ["99::1::4::978300760"]),
        "ratings.dat",
        7,
        "UserID 99 does not appear in",
    ),
    "ml1m_unknown_movie": (
        load_ml1m,
        lambda p: fx.write_ml1m(p, ratings_lines=RATINGS[:1] + ["1::42::4::978300760"]),
        "ratings.dat",
        2,
        "movies.dat",
    ),
    "ml1m_bad_age_code": (
        load_ml1m,
        lambda p: (fx.write_ml1m(p), fx.write_lines(p / "users.dat", fx.ML1M_USERS[:2] + ["3::M::17::4::55117"]))[0],
        "users.dat",
        3,
        "'Age': expected one of 1, 18, 25",
    ),
    "ml1m_blank_line_inside": (
        load_ml1m,
        lambda p: fx.write_ml1m(p, ratings_lines=RATINGS[:3] + [""] + RATINGS[3:]),
        "ratings.dat",
        4,
        "blank line",
    ),
    "ml100k_atomic_bad_encoding": (
        load_ml100k,
        lambda p: (fx.write_ml100k_atomic(p), (p / "ml-100k.item").write_bytes(
            (p / "ml-100k.item").read_bytes().replace("Misérables".encode("utf-8"), "Misérables".encode("latin-1"))))[0],
        "ml-100k.item",
        3,
        "not valid UTF-8",
    ),
    "ml100k_atomic_missing_column": (
        load_ml100k,
        lambda p: (fx.write_ml100k_atomic(p), (p / "ml-100k.inter").write_text(
            "user_id:token\titem_id:token\ttimestamp:float\n1\t1\t5\n", encoding="utf-8"))[0],
        "ml-100k.inter",
        1,
        "missing column 'rating'",
    ),
    "ml100k_original_comma": (
        load_ml100k,
        lambda p: (fx.write_ml100k_original(p), fx.write_lines(p / "u.data", ["1,1,5,874965758"]))[0],
        "u.data",
        1,
        "expected 4 tab-separated fields",
    ),
    "ml100k_original_genre_flag": (
        load_ml100k,
        lambda p: (fx.write_ml100k_original(p), (p / "u.item").write_bytes(
            (p / "u.item").read_bytes().replace(b"|0|0|0\n", b"|0|0|x\n", 2)))[0],
        "u.item",
        1,
        "genre flag column 'Western': expected 0 or 1",
    ),
    "ml100k_unknown_item": (
        load_ml100k,
        lambda p: (fx.write_ml100k_original(p), fx.write_lines(p / "u.data", ["1\t1\t5\t1", "2\t7\t4\t2"]))[0],
        "u.data",
        2,
        "movie id 7 does not appear in",
    ),
    "bx_non_numeric_rating": (
        load_bookcrossing,
        # the quoted line break in the ISBN-less row shifts later records by one line
        lambda p: fx.write_bookcrossing(p, ratings=fx.bx_ratings_lines()[:3] + ['"1";"12\n34";"3"', '"1";"0195153448";"x"']),
        "BX-Book-Ratings.csv",
        6,
        "'Book-Rating': expected an integer rating from 0 to 10, got 'x'",
    ),
    "bx_rating_out_of_range": (
        load_bookcrossing,
        lambda p: fx.write_bookcrossing(p, ratings=fx.bx_ratings_lines()[:3] + ['"1";"0195153448";"11"']),
        "BX-Book-Ratings.csv",
        4,
        "'Book-Rating': expected an integer rating from 0 to 10, got '11'",
    ),
    "bx_truncated_ratings": (
        load_bookcrossing,
        lambda p: (fx.write_bookcrossing(p), (p / "BX-Book-Ratings.csv").write_bytes(
            (p / "BX-Book-Ratings.csv").read_bytes()[:-3]))[0],
        "BX-Book-Ratings.csv",
        7,
        "may be truncated",
    ),
    "bx_unknown_user": (
        load_bookcrossing,
        lambda p: fx.write_bookcrossing(p, ratings=fx.bx_ratings_lines() + ['"77";"0195153448";"3"']),
        "BX-Book-Ratings.csv",
        8,
        "User-ID 77 does not appear in",
    ),
    "bx_missing_header_column": (
        load_bookcrossing,
        lambda p: fx.write_bookcrossing(p, users=['"User-ID";"Location"', '"1";"nyc"']),
        "BX-Users.csv",
        1,
        "missing column(s) ['Age']",
    ),
    "bx_comma_separated": (
        load_bookcrossing,
        lambda p: fx.write_bookcrossing(p, ratings=[r.replace(";", ",") for r in fx.bx_ratings_lines()]),
        "BX-Book-Ratings.csv",
        1,
        "looks ','-separated",
    ),
    "bx_ragged_row": (
        load_bookcrossing,
        lambda p: fx.write_bookcrossing(p, ratings=fx.bx_ratings_lines()[:4] + ['"1";"0195153448"']),
        "BX-Book-Ratings.csv",
        5,
        "expected 3 ';'-separated values",
    ),
    "goodreads_invalid_json": (
        load_goodreads,
        lambda p: fx.write_goodreads(p, interactions=fx.GOODREADS_INTERACTIONS[:2] + ['{"user_id": "u", "book_id": 5'] ),
        "goodreads_interactions_poetry.json.gz",
        3,
        "invalid JSON",
    ),
    "goodreads_bad_date": (
        load_goodreads,
        lambda p: fx.write_goodreads(p, interactions=fx.GOODREADS_INTERACTIONS[:1] + [
            {**fx.GOODREADS_INTERACTIONS[0], "date_added": "2017-10-17"}]),
        "goodreads_interactions_poetry.json.gz",
        2,
        "expected a date like",
    ),
    "goodreads_missing_key": (
        load_goodreads,
        lambda p: fx.write_goodreads(p, interactions=fx.GOODREADS_INTERACTIONS[:3] + [
            {k: v for k, v in fx.GOODREADS_INTERACTIONS[0].items() if k != "rating"}]),
        "goodreads_interactions_poetry.json.gz",
        4,
        "key 'rating' is missing",
    ),
    "goodreads_non_numeric_rating": (
        load_goodreads,
        lambda p: fx.write_goodreads(p, interactions=fx.GOODREADS_INTERACTIONS[:1] + [
            {**fx.GOODREADS_INTERACTIONS[0], "rating": "five"}]),
        "goodreads_interactions_poetry.json.gz",
        2,
        "key 'rating': expected an integer",
    ),
    "goodreads_unknown_book": (
        load_goodreads,
        lambda p: fx.write_goodreads(p, interactions=fx.GOODREADS_INTERACTIONS + [
            {**fx.GOODREADS_INTERACTIONS[0], "book_id": "42"}]),
        "goodreads_interactions_poetry.json.gz",
        5,
        "book_id '42' does not appear in",
    ),
    "goodreads_rating_out_of_range": (
        load_goodreads,
        lambda p: fx.write_goodreads(p, interactions=fx.GOODREADS_INTERACTIONS[:2] + [{**fx.GOODREADS_INTERACTIONS[0], "rating": 6}]),
        "goodreads_interactions_poetry.json.gz",
        3,
        "key 'rating': expected an integer rating from 0 to 5, got 6",
    ),
    "goodreads_truncated_books": (
        load_goodreads,
        lambda p: (fx.write_goodreads(p), (p / "goodreads_books_poetry.json.gz").write_bytes(gzip.compress(
            gzip.decompress((p / "goodreads_books_poetry.json.gz").read_bytes())[:-1])))[0],
        "goodreads_books_poetry.json.gz",
        2,
        "may be truncated",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_input_names_file_and_line(tmp_path, case):
    loader, write, file_name, line, text = MALFORMED[case]
    folder = write(tmp_path / "data")
    with pytest.raises(DataError) as err:
        loader(folder)
    message = str(err.value)
    assert file_name in message and f"line {line}:" in message and text in message, message


@pytest.mark.parametrize(
    "loader, writer, victim, needle",
    [
        (load_ml1m, fx.write_ml1m, "users.dat", "not found"),
        (load_ml1m, fx.write_ml1m, "ratings.dat", "empty"),
        (load_ml100k, fx.write_ml100k_atomic, "ml-100k.user", "not found"),
        (load_ml100k, fx.write_ml100k_original, "u.item", "empty"),
        (load_bookcrossing, fx.write_bookcrossing, "BX-Books.csv", "not found"),
        (load_bookcrossing, fx.write_bookcrossing, "BX-Users.csv", "empty"),
        (load_goodreads, fx.write_goodreads, "goodreads_books_poetry.json.gz", "no GoodReads books file"),
        (load_goodreads, fx.write_goodreads, "goodreads_interactions_poetry.json.gz", "empty"),
    ],
)
def test_missing_and_empty_files(tmp_path, loader, writer, victim, needle):
    folder = writer(tmp_path / "d")
    if needle == "empty":
        data = gzip.compress(b"") if victim.endswith(".gz") else b""
        (folder / victim).write_bytes(data)
    else:
        (folder / victim).unlink()
    with pytest.raises(DataError) as err:
        loader(folder)
    assert needle in str(err.value)
    assert victim in str(err.value) or "books file" in str(err.value)


def test_table_bad_encoding_and_label(tmp_path):
    schema = _write_schema(tmp_path / "s.yaml", "name: s\nfields: [{column: a, name: a}]\nlabel: {column: y}\n")
    bad = tmp_path / "t.csv"
    bad.write_bytes(b"a,y\nok,1\nM\xfcnchen,0\n")
    with pytest.raises(DataError, match=r"t\.csv line 3: byte 0xfc is not valid UTF-8"):
        load_table(bad, schema)
    bad.write_bytes(b"a,y\nok,1\nx,2\n")
    with pytest.raises(DataError, match=r"t\.csv data row 2 \(line 3\): label column 'y': expected 0/1"):
        load_table(bad, schema)
    bad.write_bytes(b"a;y\nok;1\n")
    with pytest.raises(DataError, match="separator"):
        load_table(bad, schema)


# ----------------------------------------------------------------------------- registry


def test_registry():
    assert set(LOADERS) == {"ml1m", "ml100k", "bookcrossing", "goodreads", "table", "synthetic_goodreads"}
    with pytest.raises(DataError, match="unknown dataset 'ml10m'.*bookcrossing"):
        load_dataset("ml10m", ".")


def test_load_dataset_passes_kwargs(tmp_path):
    folder = fx.write_ml1m(tmp_path / "ml-1m", ratings_name="other.dat")
    assert load_dataset("ml1m", folder, ratings_file="other.dat").table.height == 5
    # every loader accepts data_dir= as a keyword (CTRDataModule calls them that way)
    assert LOADERS["ml1m"](data_dir=folder, ratings_file="other.dat").table.height == 5
    assert LOADERS["ml100k"](data_dir=fx.write_ml100k_atomic(tmp_path / "a")).table.height == 4
    assert LOADERS["bookcrossing"](data_dir=fx.write_bookcrossing(tmp_path / "b")).table.height == 6
    assert LOADERS["goodreads"](data_dir=fx.write_goodreads(tmp_path / "g")).table.height == 4


# ----------------------------------------------------------------------------- download


def _zip_bytes(folder: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{folder}/users.dat", "\n".join(fx.ML1M_USERS) + "\n")
        zf.writestr(f"{folder}/movies.dat", ("\n".join(fx.ML1M_MOVIES) + "\n").encode("latin-1"))
        zf.writestr(f"{folder}/ratings.dat", "\n".join(fx.ml1m_ratings_lines()) + "\n")
    return buf.getvalue()


def test_download_verifies_checksum_and_writes_atomically(tmp_path):
    payload = _zip_bytes("ml-1m")
    src = tmp_path / "mirror" / "ml-1m.zip"
    src.parent.mkdir()
    src.write_bytes(payload)
    good = dl.Archive(url=src.as_uri(), md5=hashlib.md5(payload).hexdigest(), folder="ml-1m")
    root = tmp_path / "data"
    out = dl.download_movielens("ml-1m", root, archive=good)  # real urllib opener, file:// URL
    assert out == root / "ml-1m" and load_ml1m(out).table.height == 5
    assert sorted(p.name for p in root.iterdir()) == ["ml-1m", "ml-1m.zip"]  # no temp files left

    calls = []

    def opener(url):
        calls.append(url)
        return io.BytesIO(payload[:-10] + b"corrupted!")

    bad = dl.Archive(url="https://example.invalid/ml-1m.zip", md5=good.md5, folder="ml-1m")
    root2 = tmp_path / "data2"
    with pytest.raises(DataError, match="checksum mismatch"):
        dl.download_movielens("ml-1m", root2, archive=bad, opener=opener)
    assert calls == [bad.url] and list(root2.iterdir()) == []  # nothing half-written

    sha = dl.Archive(url="https://example.invalid/x.zip", sha256=hashlib.sha256(payload).hexdigest(), folder="ml-1m")
    dest = dl.fetch(sha.url, tmp_path / "x.zip", sha, opener=lambda u: io.BytesIO(payload))
    assert dest.read_bytes() == payload
    with pytest.raises(DataError, match="without a checksum"):
        dl.fetch("https://example.invalid/y.zip", tmp_path / "y.zip", dl.Archive(url="u"), opener=lambda u: io.BytesIO(b""))


def test_resolve_data_dir_downloads_only_when_asked(tmp_path, monkeypatch):
    payload = _zip_bytes("ml-1m")
    src = tmp_path / "ml-1m.zip"
    src.write_bytes(payload)
    monkeypatch.setitem(dl.ARCHIVES, "ml-1m", dl.Archive(src.as_uri(), md5=hashlib.md5(payload).hexdigest(), folder="ml-1m"))
    root = tmp_path / "root"
    root.mkdir()
    assert dl.resolve_data_dir(str(root)) == root and not (root / "ml-1m").exists()  # no download by default
    assert dl.resolve_data_dir(str(root), download="ml1m") == root
    assert load_ml1m(root).table.height == 5
    src.unlink()  # present now: a second call does not fetch again
    assert dl.resolve_data_dir(str(root), download="ml-1m") == root


def test_published_checksums():
    assert dl.ARCHIVES["ml-1m"].md5 == "c4d9eecfca2ab87c1945afe126590906"
    assert dl.ARCHIVES["ml-100k"].md5 == "0e33842e24a9c977be4e0107933c0723"
    assert dl.ARCHIVES["ml-1m"].url == "https://files.grouplens.org/datasets/movielens/ml-1m.zip"


def test_resolve_data_dir_order(tmp_path, monkeypatch):
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    monkeypatch.setattr(dl, "SHARED_DATA_DIR", c)
    monkeypatch.setenv(dl.ENV_VAR, str(b))
    assert dl.resolve_data_dir(str(a)) == a
    assert dl.resolve_data_dir(None) == b
    monkeypatch.delenv(dl.ENV_VAR)
    assert dl.resolve_data_dir("") == c
    monkeypatch.setattr(dl, "SHARED_DATA_DIR", tmp_path / "missing")
    with pytest.raises(DataError, match="FLIP_CTR_DATA_DIR"):
        dl.resolve_data_dir(None)
    with pytest.raises(DataError, match="does not exist"):
        dl.resolve_data_dir(str(tmp_path / "nowhere"))


# ----------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_real_ml1m():
    if not (SHARED / "ml-1m" / "users.dat").exists():
        pytest.skip("shared ML-1M not available")
    start = time.perf_counter()
    loaded = load_ml1m(SHARED / "ml-1m")
    elapsed = time.perf_counter() - start
    t = loaded.table
    assert t.height == 739_012
    assert int(t["label"].sum()) == 575_281 and int((t["label"] == 0).sum()) == 163_731
    assert t["row_in_source"][0] == 0 and t["row_in_source"][1] == 3  # line 2 and 3 of the file are rating 3
    assert t["label"][:3].to_list() == [1, 1, 1]
    assert t.select(pl.col(c).n_unique() for c in ("user_id", "gender", "age", "occupation")).row(0) == (6040, 2, 7, 21)
    assert elapsed < 15, elapsed


@pytest.mark.slow
def test_real_ml100k():
    if not (SHARED / "ml-100k" / "ml-100k.inter").exists():
        pytest.skip("shared ML-100K not available")
    loaded = load_ml100k(SHARED / "ml-100k")
    t = loaded.table
    assert t.height == 100_000 - 27_145 == 72_855
    assert int(t["label"].sum()) == 55_375
    assert t.select(pl.col("user_id").n_unique(), pl.col("gender").n_unique()).row(0) == (943, 2)
    assert "unkonwn" not in t["title"].to_list()
