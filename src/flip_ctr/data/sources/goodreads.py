"""GoodReads loader (UCSD Book Graph, Wan & McAuley 2018; ``*.json.gz`` newline-delimited JSON).

Files in ``data_dir`` (or ``data_dir/goodreads``):

- interactions: ``goodreads_interactions*.json[.gz]`` — one JSON object per line with
  ``user_id``, ``book_id``, ``rating`` (0-5; 0 = shelved without a rating) and ``date_added``
  (and ``date_updated``), dates like ``"Tue Oct 17 14:33:58 -0700 2017"``. The remapped
  ``goodreads_interactions.csv`` is not read (it has no dates).
- books: ``goodreads_books*.json[.gz]`` — ``book_id``, ``title``, ``authors``
  ([{author_id, role}]), ``publisher``, ``publication_year``, ``publication_month``,
  ``num_pages``, ``language_code``, ``format``, ``is_ebook``, ``average_rating``,
  ``ratings_count``, ``popular_shelves`` ([{count, name}]), ``series`` ([ids]).
- optional ``goodreads_book_authors.json[.gz]`` (``author_id``, ``name``) for author names.

When several interaction or book files are present, the genre subsets are paired by name
(``goodreads_interactions_poetry.json.gz`` ↔ ``goodreads_books_poetry.json.gz``); otherwise
pass ``interactions_file=`` / ``books_file=``.

The dump has no user attributes, so 14 of the paper's "15 user/book fields" describe the
book. The 15 fields (column, text name, side):

 1. user_id            "user id"            user
 2. book_id            "book id"            item
 3. title              "book title"         item   (with the series suffix, as in the dump)
 4. author             "author"             item   (names of the authors with an empty role, ", "-joined; author ids when no authors file)
 5. publisher          "publisher"          item
 6. publication_year   "publication year"   item
 7. publication_month  "publication month"  item   (month name, e.g. "October")
 8. num_pages          "number of pages"    item
 9. language           "language"           item   (language_code, e.g. "eng")
10. format             "format"             item   (e.g. "Paperback")
11. is_ebook           "ebook"              item   ("yes"/"no")
12. average_rating     "average rating"     item   (as in the dump, e.g. "4.12")
13. popularity         "number of ratings"  item   (ratings_count bucketed by powers of 10: "<10", "10-99", ...)
14. shelf              "top shelf"          item   (most popular user shelf other than generic ones such as "to-read")
15. series             "part of a series"   item   ("yes"/"no")

``is_read`` and review fields are not used: they are (near) functions of the label.
Missing or empty values become "unknown".

Label: rating > 3 → 1, else 0 (FLIP_METHOD.md Table I; unrated shelvings are negatives).
Timestamp: ``date_added`` (``date_updated`` when ``date_added`` is empty), seconds since the
epoch. An interaction whose book is absent from the books file is an error.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
import time
import zlib
from pathlib import Path

import polars as pl

from flip_ctr.data.schema import (
    LABEL_COLUMN,
    ROW_COLUMN,
    TIME_COLUMN,
    DatasetSchema,
    DataError,
    Field,
    LabelRule,
    LoadedTable,
)
from flip_ctr.data.sources.table import (
    UNKNOWN,
    apply_label_rule,
    locate_dir,
    read_bytes,
    require_file,
    require_final_newline,
)

log = logging.getLogger(__name__)

GOODREADS_LABEL_RULE = LabelRule(threshold=3, drop_equal=False)  # rating > 3 → 1, else 0
GOODREADS_RATINGS = (0, 5)  # 1-5 stars, 0 = shelved without a rating
DATE_FORMAT = "%a %b %d %H:%M:%S %z %Y"

GOODREADS_SCHEMA = DatasetSchema(
    name="goodreads",
    fields=(
        Field("user_id", "user id", "user"),
        Field("book_id", "book id", "item"),
        Field("title", "book title", "item"),
        Field("author", "author", "item"),
        Field("publisher", "publisher", "item"),
        Field("publication_year", "publication year", "item"),
        Field("publication_month", "publication month", "item"),
        Field("num_pages", "number of pages", "item"),
        Field("language", "language", "item"),
        Field("format", "format", "item"),
        Field("is_ebook", "ebook", "item"),
        Field("average_rating", "average rating", "item"),
        Field("popularity", "number of ratings", "item"),
        Field("shelf", "top shelf", "item"),
        Field("series", "part of a series", "item"),
    ),
    time_column=TIME_COLUMN,
)

# Shelves every reader has; they say nothing about the book.
GENERIC_SHELVES = frozenset(
    {
        "to-read", "currently-reading", "read", "favorites", "favourites", "owned", "books-i-own",
        "owned-books", "own", "i-own", "my-books", "my-library", "library", "default", "wish-list",
        "wishlist", "to-buy", "kindle", "ebook", "ebooks", "e-book", "e-books", "audiobook",
        "audiobooks", "audio", "books", "did-not-finish", "dnf", "re-read", "have", "tbr",
    }
)
MONTHS = {str(i): name for i, name in enumerate(
    ["January", "February", "March", "April", "May", "June", "July", "August", "September",
     "October", "November", "December"], start=1)}

_INTERACTION_SCHEMA = {
    "user_id": pl.Utf8,
    "book_id": pl.Utf8,
    "rating": pl.Int64,
    "date_added": pl.Utf8,
    "date_updated": pl.Utf8,
}
_BOOK_SCHEMA = {
    "book_id": pl.Utf8,
    "title": pl.Utf8,
    "authors": pl.List(pl.Struct({"author_id": pl.Utf8, "role": pl.Utf8})),
    "publisher": pl.Utf8,
    "publication_year": pl.Utf8,
    "publication_month": pl.Utf8,
    "num_pages": pl.Utf8,
    "language_code": pl.Utf8,
    "format": pl.Utf8,
    "is_ebook": pl.Utf8,
    "average_rating": pl.Utf8,
    "ratings_count": pl.Utf8,
    "popular_shelves": pl.List(pl.Struct({"count": pl.Utf8, "name": pl.Utf8})),
    "series": pl.List(pl.Utf8),
}
_AUTHOR_SCHEMA = {"author_id": pl.Utf8, "name": pl.Utf8}

_REQUIRED_INTERACTION_KEYS = ("user_id", "book_id", "rating")  # a date is checked after parsing
_REQUIRED_BOOK_KEYS = ("book_id", "title")


def _json_kind_ok(value: object, kind: pl.DataType) -> bool:
    if value is None:
        return True
    if kind == pl.Int64:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == pl.Utf8:
        return isinstance(value, (str, int, float))
    if isinstance(kind, pl.List):
        return isinstance(value, list)
    return True


def _scan_ndjson(path: Path, raw: bytes, schema: dict, required: tuple[str, ...], first_line: int = 1) -> None:
    """Python line scan that raises the precise DataError for a problem polars detected
    (``raw`` starts at line ``first_line`` of ``path``)."""
    for lineno, line in enumerate(raw.split(b"\n"), start=first_line):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(
                f"{path} line {lineno}: byte 0x{line[err.start:err.start + 1].hex()} is not valid UTF-8 "
                f"(expected UTF-8 JSON lines)"
            ) from err
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path} line {lineno}: expected one JSON object per line, found invalid JSON ({err.msg} at column {err.colno})"
            ) from err
        if not isinstance(obj, dict):
            raise DataError(f"{path} line {lineno}: expected a JSON object, found {type(obj).__name__}")
        for key in required:
            if obj.get(key) is None or obj.get(key) == "":
                raise DataError(f"{path} line {lineno}: key {key!r} is missing or empty (required keys: {', '.join(required)})")
        for key, kind in schema.items():
            if key in obj and not _json_kind_ok(obj[key], kind):
                want = {pl.Int64: "an integer", pl.Utf8: "a string"}.get(kind, "a list")
                raise DataError(f"{path} line {lineno}: key {key!r}: expected {want}, got {obj[key]!r}")


def _line_of_row(raw: bytes, row: int, first_line: int = 1) -> int:
    """1-based line of the ``row``-th (0-based) non-blank line (``raw`` starts at ``first_line``)."""
    seen = -1
    for lineno, line in enumerate(raw.split(b"\n"), start=first_line):
        if line.strip():
            seen += 1
            if seen == row:
                return lineno
    return row + first_line


def _read_ndjson(path: Path, schema: dict, required: tuple[str, ...]) -> tuple[pl.DataFrame, bytes]:
    raw = read_bytes(path)
    require_final_newline(raw, path)
    return _parse_ndjson(path, raw, schema, required), raw


def _parse_ndjson(path: Path, raw: bytes, schema: dict, required: tuple[str, ...], first_line: int = 1) -> pl.DataFrame:
    """JSON lines ``raw`` (lines ``first_line``.. of ``path``) → a frame, every error naming its line."""
    try:
        frame = pl.read_ndjson(io.BytesIO(raw), schema=schema)
    except Exception as err:  # noqa: BLE001 - polars found a problem: locate it precisely
        _scan_ndjson(path, raw, schema, required, first_line)
        raise DataError(f"{path}: could not read as JSON lines ({err})") from err
    for key in required:
        col = frame[key]
        bad = col.is_null() | (col == "") if col.dtype == pl.Utf8 else col.is_null()
        if bad.any():
            i = int(bad.arg_true()[0])
            raise DataError(
                f"{path} line {_line_of_row(raw, i, first_line)}: key {key!r} is missing or empty "
                f"(required keys: {', '.join(required)})"
            )
    return frame


def _ndjson_chunks(path: Path, chunk_bytes: int):
    """``(raw, first line number)`` for successive runs of whole lines of about ``chunk_bytes``
    (gunzipped on the fly): a file of any size, never whole in memory."""
    require_file(path, "file")
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    if path.suffix == ".gz" and not gzipped:
        raise DataError(f"{path}: expected a gzip file (name ends in .gz), found no gzip header")
    line, seen_data = 1, False
    try:
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as fh:
            while lines := fh.readlines(chunk_bytes):
                raw = b"".join(lines)
                require_final_newline(raw, path, first_line=line)  # only the last chunk can lack one
                seen_data = seen_data or bool(raw.strip())
                yield raw, line
                line += len(lines)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: not a valid gzip file ({err})") from err
    if not seen_data:
        raise DataError(f"{path}: file is empty")


def _pick(folder: Path, given: str | Path | None, pattern: str, what: str, prefer_suffix: str | None = None) -> Path:
    if given is not None:
        path = Path(given)
        if not path.is_absolute() and not path.exists():
            path = folder / path
        return require_file(path, what)
    found = sorted(p for p in folder.glob(pattern) if re.search(r"\.json(\.gz)?$", p.name))
    if prefer_suffix is not None:
        paired = [p for p in found if re.sub(r"\.json(\.gz)?$", "", p.name).endswith(prefer_suffix)]
        if len(paired) == 1:
            return paired[0]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"{folder}: no {what} found (expected {pattern} with .json or .json.gz)")
    raise DataError(f"{folder}: several {what}s found ({', '.join(p.name for p in found)}); choose one explicitly")


def _text(expr: pl.Expr) -> pl.Expr:
    cleaned = expr.cast(pl.Utf8).str.replace_all(r"\s+", " ").str.strip_chars()
    return pl.when(cleaned.is_null() | (cleaned == "")).then(pl.lit(UNKNOWN)).otherwise(cleaned)


def _popularity(expr: pl.Expr) -> pl.Expr:
    n = expr.cast(pl.Utf8).str.strip_chars().cast(pl.Int64, strict=False)
    digits = n.cast(pl.Utf8).str.len_chars()
    low = pl.lit("1") + pl.lit("0").repeat_by(digits - 1).list.join("")
    high = pl.lit("9").repeat_by(digits).list.join("")
    return (
        pl.when(n.is_null() | (n < 0))
        .then(pl.lit(UNKNOWN))
        .when(n < 10)
        .then(pl.lit("<10"))
        .otherwise(low + pl.lit("-") + high)
    )


def _books_table(books: pl.DataFrame, authors: pl.DataFrame | None) -> pl.DataFrame:
    primary = pl.col("authors").list.eval(
        pl.element().filter(pl.element().struct.field("role").fill_null("") == "").struct.field("author_id")
    )
    primary = pl.when(primary.list.len() > 0).then(primary).otherwise(
        pl.col("authors").list.eval(pl.element().struct.field("author_id"))
    )
    frame = books.with_columns(primary.alias("_author_ids"))
    if authors is not None:
        names = dict(zip(authors["author_id"].to_list(), authors["name"].to_list()))
        frame = frame.with_columns(
            pl.col("_author_ids").list.eval(pl.element().replace_strict(names, default=pl.element(), return_dtype=pl.Utf8))
        )
    shelves = pl.col("popular_shelves").list.eval(
        pl.element().struct.field("name").filter(~pl.element().struct.field("name").is_in(list(GENERIC_SHELVES)))
    )
    return frame.select(
        _text(pl.col("book_id")).alias("book_id"),
        _text(pl.col("title")).alias("title"),
        _text(pl.col("_author_ids").list.join(", ")).alias("author"),
        _text(pl.col("publisher")).alias("publisher"),
        _text(pl.col("publication_year")).alias("publication_year"),
        _text(pl.col("publication_month").str.strip_chars().str.strip_chars_start("0").replace_strict(
            MONTHS, default=None, return_dtype=pl.Utf8
        )).alias("publication_month"),
        _text(pl.col("num_pages")).alias("num_pages"),
        _text(pl.col("language_code")).alias("language"),
        _text(pl.col("format")).alias("format"),
        _text(pl.col("is_ebook").str.to_lowercase().replace_strict(
            {"true": "yes", "false": "no"}, default=None, return_dtype=pl.Utf8
        )).alias("is_ebook"),
        _text(pl.col("average_rating")).alias("average_rating"),
        _popularity(pl.col("ratings_count")).alias("popularity"),
        _text(shelves.list.first()).alias("shelf"),
        pl.when(pl.col("series").list.len().fill_null(0) > 0).then(pl.lit("yes")).otherwise(pl.lit("no")).alias("series"),
    )


def goodreads_files(
    data_dir: str | Path,
    interactions_file: str | Path | None = None,
    books_file: str | Path | None = None,
    authors_file: str | Path | None = None,
) -> list[Path]:
    """The files :func:`load_goodreads` reads: interactions, books and, when present, authors."""
    folder = locate_dir(data_dir, [], [])
    if not any(folder.glob("goodreads_interactions*")) and (folder / "goodreads").is_dir():
        folder = folder / "goodreads"
    inter_path = _pick(folder, interactions_file, "goodreads_interactions*.json*", "GoodReads interactions file")
    genre = re.sub(r"\.json(\.gz)?$", "", inter_path.name).removeprefix("goodreads_interactions")
    books_path = _pick(folder, books_file, "goodreads_books*.json*", "GoodReads books file", prefer_suffix=genre or None)
    if authors_file is None:
        candidates = [folder / "goodreads_book_authors.json.gz", folder / "goodreads_book_authors.json"]
        authors = [p for p in candidates if p.is_file()][:1]
    else:
        authors = [require_file(Path(authors_file), "GoodReads authors file")]
    return [inter_path, books_path, *authors]


def _read_books(books_path: Path, authors_path: Path | None) -> pl.DataFrame:
    """The 14 book fields by book_id (books and authors files are read whole: one row per book)."""
    books_raw_frame, books_raw = _read_ndjson(books_path, _BOOK_SCHEMA, _REQUIRED_BOOK_KEYS)
    authors = None
    if authors_path is not None:
        authors, _ = _read_ndjson(authors_path, _AUTHOR_SCHEMA, ("author_id",))
    books = _books_table(books_raw_frame, authors)
    dup = ~books["book_id"].is_first_distinct()
    if dup.any():
        i = int(dup.arg_true()[0])
        raise DataError(f"{books_path} line {_line_of_row(books_raw, i)}: duplicate book_id {books['book_id'][i]!r}")
    return books


def _interaction_rows(
    inter: pl.DataFrame, raw: bytes, inter_path: Path, books: pl.DataFrame, books_path: Path, first_row: int = 0, first_line: int = 1
) -> pl.DataFrame:
    """Interactions (parsed from ``raw``, lines ``first_line``.. of ``inter_path``; rows numbered
    from ``first_row``) → the table's rows: 15 fields, label, timestamp, row in source."""
    date = pl.col("date_added").fill_null("").str.strip_chars()
    date = pl.when(date == "").then(pl.col("date_updated")).otherwise(date)
    inter = inter.with_row_index(ROW_COLUMN, offset=first_row).with_columns(
        pl.col(ROW_COLUMN).cast(pl.Int64),
        pl.col("user_id").cast(pl.Utf8).str.strip_chars(),
        pl.col("book_id").cast(pl.Utf8).str.strip_chars(),
        date.str.strip_chars().str.to_datetime(DATE_FORMAT, strict=False).dt.epoch("s").alias(TIME_COLUMN),
    )
    bad = inter[TIME_COLUMN].is_null()
    if bad.any():
        i = int(bad.arg_true()[0])
        raise DataError(
            f"{inter_path} line {_line_of_row(raw, i, first_line)}: key 'date_added': expected a date like "
            f"'Tue Oct 17 14:33:58 -0700 2017', got {inter['date_added'][i]!r}"
        )
    bad = ~inter["rating"].is_between(*GOODREADS_RATINGS)
    if bad.any():
        i = int(bad.arg_true()[0])
        raise DataError(
            f"{inter_path} line {_line_of_row(raw, i, first_line)}: key 'rating': expected an integer rating from "
            f"{GOODREADS_RATINGS[0]} to {GOODREADS_RATINGS[1]}, got {inter['rating'][i]!r}"
        )
    missing = ~inter["book_id"].is_in(books["book_id"].implode())
    if missing.any():
        i = int(missing.arg_true()[0])
        raise DataError(
            f"{inter_path} line {_line_of_row(raw, i, first_line)}: book_id {inter['book_id'][i]!r} does not appear in "
            f"{books_path} ({int(missing.sum())} interaction(s) reference a book missing from that file)"
        )
    table = inter.join(books, on="book_id", how="left", maintain_order="left").with_columns(_text(pl.col("user_id")).alias("user_id"))
    table = apply_label_rule(table, GOODREADS_LABEL_RULE, "rating", str(inter_path))
    return table.select(GOODREADS_SCHEMA.field_columns + [LABEL_COLUMN, TIME_COLUMN, ROW_COLUMN])


def load_goodreads(
    data_dir: str | Path,
    interactions_file: str | Path | None = None,
    books_file: str | Path | None = None,
    authors_file: str | Path | None = None,
) -> LoadedTable:
    """Load GoodReads interactions with 15 user/book fields (see the module docstring)."""
    start = time.perf_counter()
    inter_path, books_path, *authors = goodreads_files(data_dir, interactions_file, books_file, authors_file)
    authors_path = authors[0] if authors else None
    log.info("GoodReads: interactions %s, books %s, authors %s", inter_path, books_path, authors_path)
    inter, inter_raw = _read_ndjson(inter_path, _INTERACTION_SCHEMA, _REQUIRED_INTERACTION_KEYS)
    books = _read_books(books_path, authors_path)
    table = _interaction_rows(inter, inter_raw, inter_path, books, books_path)
    loaded = LoadedTable(table, GOODREADS_SCHEMA, [inter_path, books_path] + ([authors_path] if authors_path else []))
    loaded.validate()
    log.info(
        "GoodReads: %d rows, positive rate %.4f, %.2fs",
        loaded.table.height,
        float(loaded.table[LABEL_COLUMN].mean()),
        time.perf_counter() - start,
    )
    return loaded


# Bumped when the converted table below changes meaning (its directory name includes it).
GOODREADS_TABLE_FORMAT = 1


def goodreads_table(
    data_dir: str | Path,
    interactions_file: str | Path | None = None,
    books_file: str | Path | None = None,
    authors_file: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    chunk_bytes: int = 256 << 20,
) -> tuple[Path, Path]:
    """(Parquet table, YAML schema) of the GoodReads files for ``data.engine=streaming``: the
    rows :func:`load_goodreads` builds, converted once into ``<cache_dir>/goodreads_tables/<key>/``
    (key: the files' paths, sizes and modification times) one chunk of interaction lines at a
    time, so the interactions are never whole in memory (the books and authors files are: one
    row per book). Same checks, same errors (with line numbers) as :func:`load_goodreads`."""
    import yaml

    from flip_ctr.atomic import atomic_directory
    from flip_ctr.data.cache import default_cache_dir, short_hash

    inter_path, books_path, *authors = goodreads_files(data_dir, interactions_file, books_file, authors_file)
    authors_path = authors[0] if authors else None
    stamp = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in [inter_path, books_path, *authors]]
    key = short_hash([GOODREADS_TABLE_FORMAT, stamp])
    out = Path(cache_dir or default_cache_dir()) / "goodreads_tables" / key
    if (out / "schema.yaml").is_file():
        return out / "table", out / "schema.yaml"
    start = time.perf_counter()
    log.info("GoodReads: converting %s (+ %s) to Parquet in %s", inter_path, books_path, out)
    with atomic_directory(out, published_marker="schema.yaml") as tmp:
        books = _read_books(books_path, authors_path)
        (tmp / "table").mkdir()
        rows = 0
        for part, (raw, first_line) in enumerate(_ndjson_chunks(inter_path, chunk_bytes)):
            inter = _parse_ndjson(inter_path, raw, _INTERACTION_SCHEMA, _REQUIRED_INTERACTION_KEYS, first_line)
            chunk = _interaction_rows(inter, raw, inter_path, books, books_path, first_row=rows, first_line=first_line)
            # The streaming build numbers rows by their position in the files: keep it the line order.
            chunk.drop(ROW_COLUMN).write_parquet(tmp / "table" / f"part-{part:05d}.parquet")
            rows += chunk.height
            log.info("GoodReads: %d interactions converted (%.0fs)", rows, time.perf_counter() - start)
        schema = {
            "name": GOODREADS_SCHEMA.name,
            "fields": [{"column": f.column, "name": f.name, "side": f.side} for f in GOODREADS_SCHEMA.fields],
            "label": {"column": LABEL_COLUMN},
            "time_column": TIME_COLUMN,
        }
        (tmp / "schema.yaml").write_text(yaml.safe_dump(schema, sort_keys=False))
    return out / "table", out / "schema.yaml"


__all__ = ["GOODREADS_SCHEMA", "GOODREADS_LABEL_RULE", "GENERIC_SHELVES", "goodreads_files", "goodreads_table", "load_goodreads"]
