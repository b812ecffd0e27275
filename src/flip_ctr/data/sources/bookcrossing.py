"""Book-Crossing loader (the ``BX-CSV-Dump`` of Ziegler et al., 2005).

Files (in ``data_dir`` or ``data_dir/bookcrossing``): ``BX-Users.csv``, ``BX-Books.csv`` and
``BX-Book-Ratings.csv``; ``;``-separated, every value double-quoted except the unquoted
``NULL`` age, ISO-8859-1 (a UTF-8 copy is accepted), CRLF line endings. The dump is a MySQL
export: a quote inside a value is written ``\\"`` and a backslash ``\\\\``, and quoted values
may hold line breaks. Parsing therefore uses a real CSV parser: polars for files without
backslash escapes (the 1.1M-row ratings file), Python's ``csv`` module with ``\\`` as escape
character otherwise. A few rows of the public BX-Books.csv end a value with a stray backslash
(``"...Readers)\\";"James Buckley"``), which escape-aware parsing would merge with the next
value; such a record, when its field count is wrong, is re-parsed without escapes (and the
stray trailing backslash removed), and accepted if that yields the right field count.

Fields: user id, location, age ("unknown" for NULL), isbn, book title, author, publication
year ("unknown" for the dump's 0), publisher. Value clean-up (documented): surrounding
whitespace is stripped, line breaks inside a value become a space, and HTML entities in book
title/author/publisher (``&amp;``) are unescaped. Empty values become "unknown".

Label: Book-Rating > 5 → 1, else 0 (implicit 0 ratings are negatives). A Book-Rating that is not
an integer from 0 to 10 is an error naming its line. The dump has no
timestamps: ``schema.time_column`` is None and ``row_in_source`` (the ratings file order) is
the chronological proxy.

Ratings whose ISBN is not in BX-Books: ``missing_books="unknown"`` (default) keeps them with
title/author/year/publisher "unknown" (the ISBN field keeps the rating's ISBN);
``missing_books="drop"`` removes them (an inner join with the books file). Either way the
count is logged. A rating whose user is not in BX-Users is an error.
"""

from __future__ import annotations

import csv
import html
import io
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from flip_ctr.data.schema import LABEL_COLUMN, ROW_COLUMN, DatasetSchema, DataError, Field, LabelRule, LoadedTable
from flip_ctr.data.sources.table import (
    LINE_COLUMN,
    UNKNOWN,
    apply_label_rule,
    cast_number,
    cast_rating,
    check_references,
    locate_dir,
    read_text,
    require_file,
)

log = logging.getLogger(__name__)

BX_LABEL_RULE = LabelRule(threshold=5, drop_equal=False)  # rating > 5 → 1, else 0
BX_RATINGS = (0, 10)  # "explicit (1-10) or implicit (0)" (the dump's documentation)

USERS_HEADER = ("User-ID", "Location", "Age")
BOOKS_HEADER = (
    "ISBN",
    "Book-Title",
    "Book-Author",
    "Year-Of-Publication",
    "Publisher",
    "Image-URL-S",
    "Image-URL-M",
    "Image-URL-L",
)
RATINGS_HEADER = ("User-ID", "ISBN", "Book-Rating")

BOOKCROSSING_SCHEMA = DatasetSchema(
    name="bookcrossing",
    fields=(
        Field("user_id", "user id", "user"),
        Field("location", "location", "user"),
        Field("age", "age", "user"),
        Field("isbn", "isbn", "item"),
        Field("title", "book title", "item"),
        Field("author", "author", "item"),
        Field("year", "publication year", "item"),
        Field("publisher", "publisher", "item"),
    ),
    time_column=None,
)

_CSV = {"delimiter": ";", "quotechar": '"', "doublequote": True, "strict": False}


class _Feeder:
    """Line iterator for csv.reader that remembers which physical lines each record used."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        self.pos = 0

    def __iter__(self) -> _Feeder:
        return self

    def __next__(self) -> str:
        if self.pos >= len(self.lines):
            raise StopIteration
        self.pos += 1
        return self.lines[self.pos - 1]


def _physical_lines(text: str) -> list[str]:
    # split on "\n" only: str.splitlines would also split on U+0085 (byte 0x85 in ISO-8859-1)
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _check_header(path: Path, first_line: str, header: Sequence[str]) -> None:
    found = next(csv.reader([first_line.rstrip("\r\n")], **_CSV), [])
    names = [f.strip().lower() for f in found]
    expected = [h.lower() for h in header]
    if names == expected:
        return
    missing = [h for h in header if h.lower() not in names]
    hint = ""
    if len(found) == 1:
        for other in (",", "\t", "|"):
            if other in found[0]:
                hint = f" (the header looks {other!r}-separated; the BX dump is ';'-separated)"
                break
    raise DataError(
        f"{path} line 1: expected the ';'-separated header {';'.join(header)}, found {found}"
        + (f" (missing column(s) {missing})" if missing else "")
        + hint
    )


def _python_parse(path: Path, lines: list[str], header: Sequence[str]) -> pl.DataFrame:
    """Escape-aware parse with exact line numbers; see the module docstring for the fallback."""
    n = len(header)
    feeder = _Feeder(lines)
    reader = csv.reader(feeder, escapechar="\\", **_CSV)
    next(reader)  # header, checked by the caller
    columns: list[list[str]] = [[] for _ in range(n)]
    line_numbers: list[int] = []
    repaired = 0
    while True:
        start = feeder.pos + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise DataError(f"{path} line {start}: malformed CSV record ({err})") from err
        records = [row]
        if len(row) != n:
            if not row or (len(row) == 1 and not row[0].strip()):
                if all(not ln.strip() for ln in lines[start - 1 :]):
                    break  # blank lines at the end
                raise DataError(f"{path} line {start}: blank line, expected {n} ';'-separated values {';'.join(header)}")
            chunk = "".join(lines[start - 1 : feeder.pos])
            retry = list(csv.reader(io.StringIO(chunk, newline=""), **_CSV))
            if retry and all(len(r) == n for r in retry):
                records = [[v[:-1] if v.endswith("\\") else v for v in r] for r in retry]
                repaired += len(retry)
            else:
                raise DataError(
                    f"{path} line {start}: expected {n} ';'-separated values {';'.join(header)}, got {len(row)}: "
                    f"{chunk[:160]!r}"
                )
        for rec in records:
            for k in range(n):
                columns[k].append(rec[k])
            line_numbers.append(start)
    if repaired:
        log.info("%s: %d record(s) with a stray backslash before a closing quote re-parsed without escapes", path, repaired)
    frame = pl.DataFrame({h: pl.Series(h, c, dtype=pl.Utf8) for h, c in zip(header, columns)})
    return frame.with_columns(pl.Series(LINE_COLUMN, line_numbers, dtype=pl.Int64))


def _polars_parse(text: str, header: Sequence[str]) -> pl.DataFrame | None:
    """Fast RFC-4180 parse; None when the file needs the careful path (escapes, ragged rows)."""
    if '\\"' in text or "\\\\" in text:
        return None
    try:
        frame = pl.read_csv(
            io.BytesIO(text.encode("utf-8")),
            separator=";",
            quote_char='"',
            has_header=True,
            infer_schema=False,
            empty_string_is_null=True,  # quoted "" stays "", a missing value (ragged row) is null
            truncate_ragged_lines=False,
        )
    except Exception:  # noqa: BLE001 - any polars parse problem → the careful path reports it
        return None
    if frame.width != len(header) or any(frame[c].null_count() for c in frame.columns):
        return None
    frame.columns = list(header)
    # line numbers are only exact without quoted line breaks; errors re-parse carefully
    return frame.with_columns(pl.int_range(2, frame.height + 2, dtype=pl.Int64).alias(LINE_COLUMN))


def read_bx_csv(path: Path, header: Sequence[str], *, fast: bool = True) -> pl.DataFrame:
    """All columns of a BX CSV file as Utf8, plus the 1-based start line ``_line`` of each record."""
    text = read_text(path, "latin-1-or-utf-8")
    lines = _physical_lines(text)
    _check_header(path, lines[0], header)
    if len(lines) < 2 or not "".join(lines[1:]).strip():
        raise DataError(f"{path}: no data rows (only a header)")
    frame = _polars_parse(text, header) if fast else None
    if frame is None:
        frame = _python_parse(path, lines, header)
    return frame


def _clean(col: pl.Series, *, unescape: bool = False) -> pl.Series:
    out = col.str.replace_all(r"\s*[\r\n]+\s*", " ").str.strip_chars()
    if unescape:
        out = out.map_elements(lambda v: html.unescape(v) if "&" in v else v, return_dtype=pl.Utf8)
    return out.replace("", UNKNOWN)


def bookcrossing_files(data_dir: str | Path, **_options) -> list[Path]:
    """The files :func:`load_bookcrossing` reads: ratings, users, books (its options change none of them)."""
    folder = locate_dir(data_dir, ["bookcrossing", "BX-CSV-Dump", "book-crossing"], ["BX-Book-Ratings.csv", "BX-Users.csv"])
    return [
        require_file(folder / "BX-Book-Ratings.csv", 'Book-Crossing ratings file ("User-ID";"ISBN";"Book-Rating")'),
        require_file(folder / "BX-Users.csv", 'Book-Crossing users file ("User-ID";"Location";"Age")'),
        require_file(folder / "BX-Books.csv", 'Book-Crossing books file ("ISBN";"Book-Title";...)'),
    ]


def _build(files: list[Path], missing_books: str, fast: bool) -> LoadedTable:
    ratings_path, users_path, books_path = files

    raw = read_bx_csv(users_path, USERS_HEADER, fast=fast)
    age = raw["Age"].str.strip_chars()
    users = raw.select(
        cast_number(raw, "User-ID", users_path).alias("user_key"),
        _clean(raw["Location"]).alias("location"),
        pl.when(age.str.to_uppercase().is_in(["NULL", ""])).then(pl.lit(UNKNOWN)).otherwise(age).alias("age"),
        raw[LINE_COLUMN],
    )
    dup = ~users["user_key"].is_first_distinct()
    if dup.any():
        i = int(dup.arg_true()[0])
        raise DataError(f"{users_path} line {users[LINE_COLUMN][i]}: duplicate User-ID {users['user_key'][i]}")

    raw = read_bx_csv(books_path, BOOKS_HEADER, fast=fast)
    year = raw["Year-Of-Publication"].str.strip_chars()
    books = raw.select(
        raw["ISBN"].str.strip_chars().alias("isbn"),
        _clean(raw["Book-Title"], unescape=True).alias("title"),
        _clean(raw["Book-Author"], unescape=True).alias("author"),
        pl.when(year.is_in(["0", ""])).then(pl.lit(UNKNOWN)).otherwise(year).alias("year"),
        _clean(raw["Publisher"], unescape=True).alias("publisher"),
    )
    dup = books["isbn"].is_duplicated()
    if dup.any():
        n_dup = int(books["isbn"].is_first_distinct().not_().sum())
        log.warning("%s: %d duplicate ISBN row(s); the first occurrence of each ISBN is used", books_path, n_dup)
        books = books.unique("isbn", keep="first", maintain_order=True)

    raw = read_bx_csv(ratings_path, RATINGS_HEADER, fast=fast)
    ratings = pl.DataFrame(
        {
            "user_key": cast_number(raw, "User-ID", ratings_path),
            "isbn": raw["ISBN"].str.strip_chars(),
            "rating": cast_rating(raw, "Book-Rating", ratings_path, *BX_RATINGS),
            LINE_COLUMN: raw[LINE_COLUMN],
        }
    ).with_row_index(ROW_COLUMN).with_columns(pl.col(ROW_COLUMN).cast(pl.Int64))
    empty = ratings["isbn"] == ""
    if empty.any():
        i = int(empty.arg_true()[0])
        raise DataError(f"{ratings_path} line {ratings[LINE_COLUMN][i]}: column 'ISBN': expected an ISBN, got an empty value")
    check_references(ratings, "user_key", users["user_key"], ratings_path, users_path, "User-ID")

    known = ratings["isbn"].is_in(books["isbn"].implode())
    n_missing = int((~known).sum())
    if missing_books == "drop":
        ratings = ratings.filter(known)
        log.info("%s: dropped %d of %d ratings whose ISBN is not in %s", ratings_path, n_missing, known.len(), books_path)
    elif missing_books == "unknown":
        log.info(
            "%s: %d of %d ratings have an ISBN not in %s; their book fields are %r",
            ratings_path,
            n_missing,
            known.len(),
            books_path,
            UNKNOWN,
        )
    else:
        raise DataError(f"missing_books must be 'unknown' or 'drop', got {missing_books!r}")

    table = (
        ratings.join(users.drop(LINE_COLUMN), on="user_key", how="left", maintain_order="left")
        .join(books, on="isbn", how="left", maintain_order="left")
        .with_columns(
            pl.col("user_key").cast(pl.Utf8).alias("user_id"),
            pl.col("isbn").replace("", UNKNOWN),
            *[pl.col(c).fill_null(UNKNOWN) for c in ("title", "author", "year", "publisher")],
        )
    )
    table = apply_label_rule(table, BX_LABEL_RULE, "rating", str(ratings_path))
    columns = BOOKCROSSING_SCHEMA.field_columns + [LABEL_COLUMN, ROW_COLUMN]
    loaded = LoadedTable(table.select(columns), BOOKCROSSING_SCHEMA, [ratings_path, users_path, books_path])
    loaded.validate()
    return loaded


def load_bookcrossing(data_dir: str | Path, missing_books: str = "unknown") -> LoadedTable:
    """Load Book-Crossing from ``data_dir`` (the folder with the three BX-*.csv files, or its parent).

    See the module docstring for parsing, value clean-up, the label rule (rating > 5) and
    ``missing_books``.
    """
    start = time.perf_counter()
    files = bookcrossing_files(data_dir)
    try:
        loaded = _build(files, missing_books, fast=True)
    except DataError:
        # the fast polars path numbers lines approximately; re-parse carefully so the error
        # names the exact line (or succeeds, if the fast parse was the problem)
        loaded = _build(files, missing_books, fast=False)
    log.info(
        "Book-Crossing: %d rows, positive rate %.4f, %.2fs",
        loaded.table.height,
        float(loaded.table[LABEL_COLUMN].mean()),
        time.perf_counter() - start,
    )
    return loaded


__all__ = ["BOOKCROSSING_SCHEMA", "BX_LABEL_RULE", "bookcrossing_files", "load_bookcrossing", "read_bx_csv"]
