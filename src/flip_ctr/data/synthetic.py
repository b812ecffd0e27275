"""Synthetic interaction logs with the shape of GoodReads, for scale tests and benchmarks.

``generate(out_dir, SyntheticSpec(num_rows=20_000_000))`` writes ``out_dir/table.parquet``
(one row group per chunk, so memory stays at one chunk plus the entity tables) and
``out_dir/schema.yaml``: a table in the format of :func:`flip_ctr.data.sources.table.load_table`
(the ``table`` loader) and of :mod:`flip_ctr.data.preprocess_large`.

Shape (the defaults, at 20M rows; FLIP_METHOD.md Table I: GoodReads ~20M samples, 15 fields,
~4.5M features). The 15 fields are those of the GoodReads loader
(:mod:`flip_ctr.data.sources.goodreads`): ``user_id`` (32-hex ids, like the dump), ``book_id``
and 13 book attributes, each a fixed function of the book:

- users and books are drawn per row from Zipf-like (power-law rank) distributions
  ``p(r) ∝ (r + q)^-s`` over ``num_users`` / ``num_books`` ranks, ranks shuffled to ids, so a
  few ids are very frequent and a long tail appears once or never (at 20M rows 1.16M
  users and 1.28M books are seen in the training part; 4.39M ID features and 4.48M distinct
  values over the 15 fields);
- ``title`` (≈ one per book, plus a series suffix for books in a series), ``author`` and
  ``publisher`` (power-law over ``num_authors`` / ``num_publishers``), ``shelf`` (power-law over
  ``num_shelves``), ``language`` and ``format`` (power-law over short lists), publication year
  and month, page count (log-normal), e-book flag, average rating, popularity bucket, series flag;
- a few percent of book attributes are null or empty (the loaders' "unknown");
- ``timestamp``: uniform seconds in [2007-01-01, 2017-11-01), so the chronological sort does
  real work and some timestamps tie;
- ``label``: Bernoulli(sigmoid(user bias + book bias + rating effect)), about 55% positive.

Everything is a deterministic function of ``seed`` (numpy ``default_rng``), independent of
``chunk_rows``: entity tables are drawn once, and row chunks draw from ``seed`` + chunk index
of fixed-size blocks (``block_rows``), so a different chunking writes the same rows.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

FIELDS: tuple[tuple[str, str, str], ...] = (
    ("user_id", "user id", "user"),
    ("book_id", "book id", "item"),
    ("title", "book title", "item"),
    ("author", "author", "item"),
    ("publisher", "publisher", "item"),
    ("publication_year", "publication year", "item"),
    ("publication_month", "publication month", "item"),
    ("num_pages", "number of pages", "item"),
    ("language", "language", "item"),
    ("format", "format", "item"),
    ("is_ebook", "ebook", "item"),
    ("average_rating", "average rating", "item"),
    ("popularity", "number of ratings", "item"),
    ("shelf", "top shelf", "item"),
    ("series", "part of a series", "item"),
)
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December")
FORMATS = ("Paperback", "Hardcover", "Kindle Edition", "Mass Market Paperback", "ebook", "Audiobook", "Audio CD",
           "Nook", "Trade Paperback", "Board Book", "Library Binding", "Comic", "Graphic Novel", "Unknown Binding")
LANGUAGES = ("eng", "en-US", "en-GB", "spa", "fre", "ger", "ita", "por", "jpn", "ara", "ind", "nl", "swe", "pol",
             "tur", "rus", "fin", "dan", "nor", "gre", "per", "heb", "zho", "kor", "cze", "hun", "rum", "vie")
SHELVES = ("fantasy", "romance", "young-adult", "fiction", "mystery", "history", "non-fiction", "classics",
           "science-fiction", "comics", "poetry", "biography", "children", "horror", "thriller", "paranormal")
_SYLLABLES = ("ka", "lo", "mi", "ren", "sa", "to", "vel", "an", "dor", "el", "fi", "gar", "ha", "is", "jo", "kel",
              "lin", "mor", "na", "or", "pe", "qui", "ra", "sil", "tan", "ul", "vor", "wen", "xa", "yor", "zen", "bri")
DAY = 86_400
T_START = 1_167_609_600  # 2007-01-01 UTC
T_END = 1_509_494_400  # 2017-11-01 UTC


@dataclass
class SyntheticSpec:
    num_rows: int = 20_000_000
    num_users: int = 1_200_000
    num_books: int = 1_500_000
    num_authors: int = 800_000
    num_publishers: int = 300_000
    num_shelves: int = 30_000
    user_exponent: float = 0.9  # s of p(r) ∝ (r + q)^-s, per row
    book_exponent: float = 1.0  # per row
    author_exponent: float = 0.8  # per book
    publisher_exponent: float = 0.9  # per book
    rank_offset: float = 10.0  # q: flattens the head a little (the top id is not 10% of the log)
    series_fraction: float = 0.3
    null_fraction: float = 0.03  # per nullable book attribute
    seed: int = 0
    block_rows: int = 1_000_000  # rows drawn per random block (fixed: makes output independent of chunking)
    name: str = "synthetic_goodreads"
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# sampling helpers
# ------------------------------------------------------------------------------------------
def power_law_cdf(size: int, exponent: float, offset: float = 0.0) -> np.ndarray:
    """CDF over ranks 0..size-1 of ``p(r) ∝ (r + 1 + offset)^-exponent`` (float64)."""
    weights = (np.arange(1, size + 1, dtype=np.float64) + offset) ** (-exponent)
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return cdf


def sample_cdf(cdf: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    idx = np.searchsorted(cdf, rng.random(n), side="right")
    return np.minimum(idx, len(cdf) - 1)


def expected_distinct(size: int, exponent: float, offset: float, draws: int) -> float:
    """Expected number of distinct ranks seen in ``draws`` draws (tunes the vocabulary sizes)."""
    p = np.diff(power_law_cdf(size, exponent, offset), prepend=0.0)
    return float(np.sum(-np.expm1(draws * np.log1p(-np.minimum(p, 1 - 1e-12)))))


def _words(n: int, rng: np.random.Generator, syllables: int = 3, capital: bool = True) -> list[str]:
    """``n`` distinct pseudo-words of 2..syllables syllables."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        k = int(rng.integers(2, syllables + 1))
        w = "".join(_SYLLABLES[i] for i in rng.integers(0, len(_SYLLABLES), k))
        if w not in seen:
            seen.add(w)
            out.append(w.capitalize() if capital else w)
    return out


def _names(ids: np.ndarray, first: pl.Series, last: pl.Series) -> pl.Series:
    """Unique 'First Last' per id (id → two digits in base len(first), len(last))."""
    a = pl.Series(ids % len(first), dtype=pl.UInt32)
    b = pl.Series((ids // len(first)) % len(last), dtype=pl.UInt32)
    return pl.select(pl.concat_str([first.gather(a), pl.lit(" "), last.gather(b)])).to_series()


# ------------------------------------------------------------------------------------------
# entity tables
# ------------------------------------------------------------------------------------------
class _Entities:
    """Per-user and per-book tables (strings as polars Series, gathered per row chunk)."""

    def __init__(self, spec: SyntheticSpec) -> None:
        rng = np.random.default_rng([spec.seed, 1])
        nu, nb = spec.num_users, spec.num_books
        # users: 32-hex ids (as in the GoodReads dump); rank → id by a random permutation
        hi = rng.integers(0, 2**63, nu, dtype=np.int64)
        lo = rng.integers(0, 2**63, nu, dtype=np.int64)
        self.user_id = pl.Series("user_id", [f"{a:016x}{b:016x}" for a, b in zip(hi.tolist(), lo.tolist())])
        self.user_cdf = power_law_cdf(nu, spec.user_exponent, spec.rank_offset)
        self.user_of_rank = rng.permutation(nu)
        self.user_bias = rng.normal(0.0, 0.8, nu).astype(np.float32)

        # books: numeric ids (sparse in a 0..10^8 range, like GoodReads book ids)
        self.book_cdf = power_law_cdf(nb, spec.book_exponent, spec.rank_offset)
        self.book_of_rank = rng.permutation(nb)
        rank_of_book = np.empty(nb, dtype=np.int64)
        rank_of_book[self.book_of_rank] = np.arange(nb)
        book_num = np.sort(rng.choice(100_000_000, nb, replace=False))
        self.book_bias = rng.normal(0.0, 0.6, nb).astype(np.float32)
        vocab = pl.Series(_words(4000, rng))
        first, last = pl.Series(_words(800, rng, 2)), pl.Series(_words(1000, rng, 3))

        title = pl.select(
            pl.concat_str(
                [
                    vocab.gather(pl.Series(rng.integers(0, len(vocab), nb), dtype=pl.UInt32)),
                    pl.lit(" "),
                    vocab.gather(pl.Series(rng.integers(0, len(vocab), nb), dtype=pl.UInt32)).str.to_lowercase(),
                    pl.lit(" "),
                    vocab.gather(pl.Series(rng.integers(0, len(vocab), nb), dtype=pl.UInt32)).str.to_lowercase(),
                ]
            )
        ).to_series()
        in_series = rng.random(nb) < spec.series_fraction
        series_name = _names(rng.integers(0, 200_000, nb), vocab, vocab)
        series_no = pl.Series(rng.integers(1, 8, nb)).cast(pl.Utf8)
        title = pl.select(
            pl.when(pl.Series(in_series))
            .then(pl.concat_str([title, pl.lit(" ("), series_name, pl.lit(", #"), series_no, pl.lit(")")]))
            .otherwise(title)
        ).to_series()

        authors = sample_cdf(power_law_cdf(spec.num_authors, spec.author_exponent, 5.0), nb, rng)
        publishers = sample_cdf(power_law_cdf(spec.num_publishers, spec.publisher_exponent, 5.0), nb, rng)
        suffix = pl.Series(["Press", "Books", "Publishing", "House", "Media", "Editions"])
        pub_name = pl.select(
            pl.concat_str(
                [
                    vocab.gather(pl.Series(publishers % len(vocab), dtype=pl.UInt32)),
                    pl.lit(" "),
                    vocab.gather(pl.Series((publishers // len(vocab)) % len(vocab), dtype=pl.UInt32)),
                    pl.lit(" "),
                    suffix.gather(pl.Series(publishers % len(suffix), dtype=pl.UInt32)),
                ]
            )
        ).to_series()
        year = (2017 - np.minimum(rng.exponential(12.0, nb), 116)).astype(np.int64)
        pages = np.clip(rng.lognormal(5.6, 0.6, nb), 8, 5000).astype(np.int64)
        lang = sample_cdf(power_law_cdf(len(LANGUAGES) + 70, 2.0), nb, rng)
        lang_names = list(LANGUAGES) + [f"x{i:02d}" for i in range(70)]
        fmt = sample_cdf(power_law_cdf(len(FORMATS), 1.5), nb, rng)
        shelf = sample_cdf(power_law_cdf(spec.num_shelves, 1.05, 2.0), nb, rng)
        shelf_names = pl.Series(list(SHELVES) + _words(spec.num_shelves - len(SHELVES), rng, 4, capital=False))
        rating = np.clip(rng.normal(3.9, 0.3, nb), 1.0, 5.0)
        # popularity: a book's expected number of ratings in the full catalogue ~ its Zipf weight
        expected_ratings = 3e7 * np.diff(self.book_cdf, prepend=0.0)[rank_of_book]
        bucket = np.clip(np.floor(np.log10(np.maximum(expected_ratings, 1.0))).astype(np.int64), 0, 6)
        bucket_names = pl.Series(["<10", "10-99", "100-999", "1000-9999", "10000-99999", "100000-999999", ">=1000000"])

        def nullable(series: pl.Series) -> pl.Series:
            draw = rng.random(nb)
            empty = draw < spec.null_fraction / 3  # a third of the missing values are "" rather than null
            null = (draw >= spec.null_fraction / 3) & (draw < spec.null_fraction)
            return pl.select(
                pl.when(pl.Series(null)).then(None).when(pl.Series(empty)).then(pl.lit("")).otherwise(series)
            ).to_series()

        u32 = lambda a: pl.Series(a, dtype=pl.UInt32)  # noqa: E731
        self.book = pl.DataFrame(
            {
                "book_id": pl.Series(book_num).cast(pl.Utf8),
                "title": title,
                "author": _names(authors, first, last),
                "publisher": nullable(pub_name),
                "publication_year": nullable(pl.Series(year).cast(pl.Utf8)),
                "publication_month": nullable(pl.Series(list(MONTHS)).gather(u32(rng.integers(0, 12, nb)))),
                "num_pages": nullable(pl.Series(pages).cast(pl.Utf8)),
                "language": nullable(pl.Series(lang_names).gather(u32(lang))),
                "format": nullable(pl.Series(list(FORMATS)).gather(u32(fmt))),
                "is_ebook": pl.Series(np.where(np.isin(fmt, [2, 4, 7]), "yes", "no")),
                "average_rating": pl.Series(np.round(rating, 2)).cast(pl.Utf8),
                "popularity": bucket_names.gather(u32(bucket)),
                "shelf": shelf_names.gather(u32(shelf)),
                "series": pl.Series(np.where(in_series, "yes", "no")),
            }
        )
        self.rating_effect = ((rating - 3.9) / 0.3 * 0.4).astype(np.float32)


def _chunk(spec: SyntheticSpec, ent: _Entities, start: int, stop: int) -> pl.DataFrame:
    """Rows [start, stop) of the log (drawn from the fixed random blocks that cover them)."""
    parts = []
    first_block, last_block = start // spec.block_rows, (stop - 1) // spec.block_rows
    for block in range(first_block, last_block + 1):
        b0 = block * spec.block_rows
        n = min(spec.block_rows, spec.num_rows - b0)
        rng = np.random.default_rng([spec.seed, 2, block])
        users = ent.user_of_rank[sample_cdf(ent.user_cdf, n, rng)]
        books = ent.book_of_rank[sample_cdf(ent.book_cdf, n, rng)]
        ts = rng.integers(T_START, T_END, n, dtype=np.int64)
        logit = 0.2 + ent.user_bias[users] + ent.book_bias[books] + ent.rating_effect[books]
        label = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)
        lo, hi = max(start, b0) - b0, min(stop, b0 + n) - b0
        parts.append((users[lo:hi], books[lo:hi], ts[lo:hi], label[lo:hi]))
    users, books, ts, label = (np.concatenate(x) for x in zip(*parts))
    frame = ent.book[books]
    frame = frame.insert_column(0, ent.user_id.gather(pl.Series(users, dtype=pl.UInt32)))
    return frame.with_columns(pl.Series("timestamp", ts), pl.Series("label", label))


def schema_yaml(spec: SyntheticSpec) -> str:
    lines = [f"name: {spec.name}", "fields:"]
    lines += [f"  - {{column: {c}, name: {n}, side: {s}}}" for c, n, s in FIELDS]
    lines += ["label: {column: label}", "time_column: timestamp", ""]
    return "\n".join(lines)


def generate(
    out_dir: str | Path,
    spec: SyntheticSpec | None = None,
    chunk_rows: int = 1_000_000,
    compression: str = "zstd",
    log=None,
) -> dict:
    """Writes ``out_dir/table.parquet`` (+ ``schema.yaml``, ``spec.json``); returns a summary."""
    import json

    import pyarrow.parquet as pq

    spec = spec or SyntheticSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ent = _Entities(spec)
    t_entities = time.perf_counter() - t0
    path = out / "table.parquet"
    tmp = out / ".table.parquet.tmp"
    writer = None
    try:
        for start in range(0, spec.num_rows, chunk_rows):
            stop = min(start + chunk_rows, spec.num_rows)
            table = _chunk(spec, ent, start, stop).to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression=compression)
            writer.write_table(table, row_group_size=chunk_rows)
            if log:
                log(f"  synthetic rows {stop:,}/{spec.num_rows:,} ({time.perf_counter() - t0:.0f}s)")
    finally:
        if writer is not None:
            writer.close()
    tmp.replace(path)
    (out / "schema.yaml").write_text(schema_yaml(spec))
    (out / "spec.json").write_text(json.dumps(asdict(spec), indent=1))
    return {
        "path": str(path),
        "schema_yaml": str(out / "schema.yaml"),
        "rows": spec.num_rows,
        "fields": len(FIELDS),
        "seconds": time.perf_counter() - t0,
        "entity_tables_s": t_entities,
        "bytes": path.stat().st_size,
    }


def expected_vocabulary(spec: SyntheticSpec) -> dict[str, float]:
    """Expected distinct users and books at ``spec.num_rows`` rows (the big vocabularies)."""
    return {
        "user_id": expected_distinct(spec.num_users, spec.user_exponent, spec.rank_offset, spec.num_rows),
        "book_id": expected_distinct(spec.num_books, spec.book_exponent, spec.rank_offset, spec.num_rows),
    }


__all__ = ["FIELDS", "SyntheticSpec", "generate", "schema_yaml", "power_law_cdf", "sample_cdf", "expected_distinct",
           "expected_vocabulary"]
