"""MovieLens loaders: ML-1M (GroupLens ``.dat``) and ML-100K (GroupLens original or atomic).

Both return the loader contract of :mod:`flip_ctr.data.schema`: one row per rating (in the
ratings file's order, ``row_in_source`` = 0-based position in that file), readable Utf8 field
values, ``label`` and ``timestamp``.

Label rule (both datasets, FLIP_METHOD.md Table I for ML-1M): rating > 3 → 1, rating < 3 → 0,
rating == 3 dropped. ML-100K has no rule in the paper; it uses the same rule so that the two
MovieLens datasets are comparable (the drop is logged).

Ratings must be whole stars 1-5 (the documented scale); any other value is an error naming its
line, as is a file that does not end with a newline (possibly truncated).

Missing values: a genre list with no genre becomes ``"unknown"``; ML-100K titles/years that
the source marks as unknown become ``"unknown"``. No row is dropped except by the label rule,
and a rating that references a user or movie absent from the users/movies file is an error.
"""

from __future__ import annotations

import logging
import time
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
    LINE_COLUMN,
    UNKNOWN,
    apply_label_rule,
    cast_number,
    cast_rating,
    check_references,
    check_unique,
    locate_dir,
    read_text,
    require_file,
    split_delimited,
    text_lines,
)

log = logging.getLogger(__name__)

# rating > 3 → 1, < 3 → 0, == 3 dropped
MOVIELENS_LABEL_RULE = LabelRule(threshold=3, drop_equal=True)
# the GroupLens README: "Ratings are made on a 5-star scale (whole-star ratings only)"
MOVIELENS_RATINGS = (1, 5)

ML1M_AGES = {
    1: "under 18",
    18: "18-24",
    25: "25-34",
    35: "35-44",
    45: "45-49",
    50: "50-55",
    56: "56+",
}
ML1M_OCCUPATIONS = {
    0: "other",
    1: "academic/educator",
    2: "artist",
    3: "clerical/admin",
    4: "college/grad student",
    5: "customer service",
    6: "doctor/health care",
    7: "executive/managerial",
    8: "farmer",
    9: "homemaker",
    10: "K-12 student",
    11: "lawyer",
    12: "programmer",
    13: "retired",
    14: "sales/marketing",
    15: "scientist",
    16: "self-employed",
    17: "technician/engineer",
    18: "tradesman/craftsman",
    19: "unemployed",
    20: "writer",
}
GENDERS = {"M": "male", "F": "female"}

# Order of the 19 genre flag columns of ML-100K u.item (u.genre).
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

ML1M_SCHEMA = DatasetSchema(
    name="ml1m",
    fields=(
        Field("user_id", "user id", "user"),
        Field("gender", "gender", "user"),
        Field("age", "age", "user"),
        Field("occupation", "occupation", "user"),
        Field("zipcode", "zip code", "user"),
        Field("movie_id", "movie id", "item"),
        Field("title", "movie title", "item"),
        Field("genre", "genre", "item"),
    ),
    time_column=TIME_COLUMN,
)

ML100K_SCHEMA = DatasetSchema(
    name="ml100k",
    fields=(
        Field("user_id", "user id", "user"),
        Field("age", "age", "user"),
        Field("gender", "gender", "user"),
        Field("occupation", "occupation", "user"),
        Field("zipcode", "zip code", "user"),
        Field("movie_id", "movie id", "item"),
        Field("title", "movie title", "item"),
        Field("release_year", "release year", "item"),
        Field("genre", "genre", "item"),
    ),
    time_column=TIME_COLUMN,
)

ML1M_RATINGS_CANDIDATES = ("ratings.dat", "ratings.dat.gz", "ratings.reconstructed.dat.gz")
# GroupLens files are ISO-8859-1; a UTF-8 re-encoded copy is accepted too (see decode_text).
_GROUPLENS_ENCODING = "latin-1-or-utf-8"


def _map_codes(
    frame: pl.DataFrame, column: str, mapping: dict, path: Path, what: str, *, numeric: bool
) -> pl.Series:
    """Decode a code column with ``mapping``; an unknown code raises DataError with its line."""
    codes = cast_number(frame, column, path, what=what) if numeric else frame[column].str.strip_chars()
    decoded = codes.replace_strict(mapping, default=None, return_dtype=pl.Utf8)
    bad = decoded.is_null()
    if bad.any():
        i = int(bad.arg_true()[0])
        allowed = ", ".join(str(k) for k in mapping)
        raise DataError(
            f"{path} line {frame[LINE_COLUMN][i]}: column {what!r}: expected one of {allowed}, got {frame[column][i]!r}"
        )
    return decoded


def _readable_genres(genres: pl.Series, sep: str) -> pl.Series:
    """"Animation|Children's|Comedy" → "Animation, Children's, Comedy"; empty → "unknown"."""
    parts = genres.str.strip_chars().str.split(sep).list.eval(pl.element().str.strip_chars()).list.eval(
        pl.element().filter(pl.element() != "")
    )
    joined = parts.list.join(", ")
    return joined.replace("", UNKNOWN)


def _finish(
    ratings: pl.DataFrame,
    users: pl.DataFrame,
    items: pl.DataFrame,
    schema: DatasetSchema,
    source_files: list[Path],
    where: str,
) -> LoadedTable:
    """Join ratings (user_key, item_key, rating, timestamp, row) with user and item fields."""
    table = ratings.join(users, on="user_key", how="left", maintain_order="left").join(
        items, on="item_key", how="left", maintain_order="left"
    )
    table = apply_label_rule(table, MOVIELENS_LABEL_RULE, "rating", where)
    columns = schema.field_columns + [LABEL_COLUMN, TIME_COLUMN, ROW_COLUMN]
    loaded = LoadedTable(table.select(columns), schema, source_files)
    loaded.validate()
    return loaded


# --------------------------------------------------------------------------------------
# ML-1M
# --------------------------------------------------------------------------------------


def _resolve_ml1m_ratings(folder: Path, ratings_file: str | Path | None) -> Path:
    if ratings_file is not None:
        path = Path(ratings_file)
        if not path.is_absolute() and not path.exists():
            path = folder / path
        return require_file(path, "ML-1M ratings file (UserID::MovieID::Rating::Timestamp)")
    for name in ML1M_RATINGS_CANDIDATES:
        if (folder / name).is_file():
            return folder / name
    raise DataError(
        f"{folder}: no ML-1M ratings file found (looked for {', '.join(ML1M_RATINGS_CANDIDATES)}); "
        f"pass ratings_file=... or download ML-1M (flip_ctr.data.sources.download)"
    )


def _ml1m_users(path: Path) -> pl.DataFrame:
    raw = split_delimited(path, "::", ["UserID", "Gender", "Age", "Occupation", "Zip-code"], encoding=_GROUPLENS_ENCODING)
    users = raw.select(
        cast_number(raw, "UserID", path).alias("user_key"),
        _map_codes(raw, "Gender", GENDERS, path, "Gender", numeric=False).alias("gender"),
        _map_codes(raw, "Age", ML1M_AGES, path, "Age", numeric=True).alias("age"),
        _map_codes(raw, "Occupation", ML1M_OCCUPATIONS, path, "Occupation", numeric=True).alias("occupation"),
        raw["Zip-code"].str.strip_chars().replace("", UNKNOWN).alias("zipcode"),
        raw[LINE_COLUMN],
    )
    check_unique(users, "user_key", path, "UserID")
    return users.with_columns(pl.col("user_key").cast(pl.Utf8).alias("user_id")).drop(LINE_COLUMN)


def _ml1m_movies(path: Path) -> pl.DataFrame:
    raw = split_delimited(path, "::", ["MovieID", "Title", "Genres"], encoding=_GROUPLENS_ENCODING)
    movies = raw.select(
        cast_number(raw, "MovieID", path).alias("item_key"),
        raw["Title"].str.strip_chars().replace("", UNKNOWN).alias("title"),
        _readable_genres(raw["Genres"], "|").alias("genre"),
        raw[LINE_COLUMN],
    )
    check_unique(movies, "item_key", path, "MovieID")
    return movies.with_columns(pl.col("item_key").cast(pl.Utf8).alias("movie_id")).drop(LINE_COLUMN)


def _ml1m_ratings(path: Path) -> pl.DataFrame:
    raw = split_delimited(path, "::", ["UserID", "MovieID", "Rating", "Timestamp"], encoding="latin-1")
    return pl.DataFrame(
        {
            "user_key": cast_number(raw, "UserID", path),
            "item_key": cast_number(raw, "MovieID", path),
            "rating": cast_rating(raw, "Rating", path, *MOVIELENS_RATINGS),
            TIME_COLUMN: cast_number(raw, "Timestamp", path),
            LINE_COLUMN: raw[LINE_COLUMN],
        }
    ).with_row_index(ROW_COLUMN).with_columns(pl.col(ROW_COLUMN).cast(pl.Int64))


def ml1m_files(data_dir: str | Path, ratings_file: str | Path | None = None) -> list[Path]:
    """The files :func:`load_ml1m` reads: ratings, users.dat, movies.dat."""
    folder = locate_dir(data_dir, ["ml-1m"], ["users.dat", "movies.dat"])
    users_path = require_file(folder / "users.dat", "ML-1M users file users.dat (UserID::Gender::Age::Occupation::Zip-code)")
    movies_path = require_file(folder / "movies.dat", "ML-1M movies file movies.dat (MovieID::Title::Genres)")
    return [_resolve_ml1m_ratings(folder, ratings_file), users_path, movies_path]


def load_ml1m(data_dir: str | Path, ratings_file: str | Path | None = None) -> LoadedTable:
    """Load MovieLens-1M from ``data_dir`` (the folder with users.dat/movies.dat, or its parent).

    Ratings file: ``ratings_file`` if given (absolute, or relative to the folder), else the
    first of ratings.dat, ratings.dat.gz, ratings.reconstructed.dat.gz. Files are ISO-8859-1
    (a UTF-8 copy is accepted), ``::``-separated, plain or gzip.

    Fields (in order): user id, gender (male/female), age (decoded range, e.g. "25-34"),
    occupation (decoded, e.g. "college/grad student"), zip code, movie id, movie title (as in
    movies.dat, with the year), genre ("Animation, Children's, Comedy").
    Label: rating > 3 → 1, < 3 → 0, == 3 dropped (739,012 rows on the full data).
    """
    start = time.perf_counter()
    ratings_path, users_path, movies_path = ml1m_files(data_dir, ratings_file)
    log.info("ML-1M: reading ratings from %s", ratings_path)

    users = _ml1m_users(users_path)
    movies = _ml1m_movies(movies_path)
    ratings = _ml1m_ratings(ratings_path)
    check_references(ratings, "user_key", users["user_key"], ratings_path, users_path, "UserID")
    check_references(ratings, "item_key", movies["item_key"], ratings_path, movies_path, "MovieID")
    loaded = _finish(ratings, users, movies, ML1M_SCHEMA, [ratings_path, users_path, movies_path], str(ratings_path))
    log.info(
        "ML-1M: %d rows (of %d ratings), positive rate %.4f, %.2fs",
        loaded.table.height,
        ratings.height,
        float(loaded.table[LABEL_COLUMN].mean()),
        time.perf_counter() - start,
    )
    return loaded


# --------------------------------------------------------------------------------------
# ML-100K
# --------------------------------------------------------------------------------------

_ORIGINAL_FILES = ("u.data", "u.user", "u.item")
_ATOMIC_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")


def _split_title_year(title: pl.Series) -> tuple[pl.Series, pl.Series]:
    """"Toy Story (1995)" → ("Toy Story", "1995"); no trailing "(YYYY)" → (title, null)."""
    stripped = title.str.strip_chars()
    year = stripped.str.extract(r"\((\d{4})\)$", 1)
    base = stripped.str.replace(r"\s*\(\d{4}\)$", "").str.strip_chars()
    return base, year


def _ml100k_original(data_path: Path, user_path: Path, item_path: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:

    raw = split_delimited(data_path, "\t", ["user id", "item id", "rating", "timestamp"], encoding="latin-1")
    ratings = pl.DataFrame(
        {
            "user_key": cast_number(raw, "user id", data_path),
            "item_key": cast_number(raw, "item id", data_path),
            "rating": cast_rating(raw, "rating", data_path, *MOVIELENS_RATINGS),
            TIME_COLUMN: cast_number(raw, "timestamp", data_path),
            LINE_COLUMN: raw[LINE_COLUMN],
        }
    )

    raw = split_delimited(user_path, "|", ["user id", "age", "gender", "occupation", "zip code"], encoding=_GROUPLENS_ENCODING)
    users = raw.select(
        cast_number(raw, "user id", user_path).alias("user_key"),
        cast_number(raw, "age", user_path).cast(pl.Utf8).alias("age"),
        _map_codes(raw, "gender", GENDERS, user_path, "gender", numeric=False).alias("gender"),
        raw["occupation"].str.strip_chars().replace("", UNKNOWN).alias("occupation"),
        raw["zip code"].str.strip_chars().replace("", UNKNOWN).alias("zipcode"),
        raw[LINE_COLUMN],
    )

    columns = ["movie id", "movie title", "release date", "video release date", "IMDb URL", *ML100K_GENRES]
    raw = split_delimited(item_path, "|", columns, encoding=_GROUPLENS_ENCODING)
    for genre in ML100K_GENRES:
        flags = raw[genre].str.strip_chars()
        bad = ~flags.is_in(["0", "1"])
        if bad.any():
            i = int(bad.arg_true()[0])
            raise DataError(
                f"{item_path} line {raw[LINE_COLUMN][i]}: genre flag column {genre!r}: expected 0 or 1, got {raw[genre][i]!r}"
            )
    genre_list = pl.concat_list(
        [pl.when(pl.col(g).str.strip_chars() == "1").then(pl.lit(g)).otherwise(pl.lit(None, pl.Utf8)) for g in ML100K_GENRES]
    ).list.drop_nulls()
    title, title_year = _split_title_year(raw["movie title"])
    date_year = raw["release date"].str.strip_chars().str.extract(r"(\d{4})$", 1)
    items = raw.select(
        cast_number(raw, "movie id", item_path).alias("item_key"),
        title.replace("", UNKNOWN).alias("title"),
        title_year.fill_null(date_year).fill_null(UNKNOWN).alias("release_year"),
        genre_list.list.join(", ").replace("", UNKNOWN).alias("genre"),
        raw[LINE_COLUMN],
    )
    return ratings, users, items


def _atomic_header(path: Path, lines: list[str], required: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """Map each required column (aliases allowed) to its index in the typed header ``name:type``."""
    header = lines[0].rstrip("\r").split("\t")
    names = [h.split(":", 1)[0].strip() for h in header]
    index: dict[str, int] = {}
    for key, aliases in required.items():
        found = [names.index(a) for a in aliases if a in names]
        if not found:
            hint = ""
            if len(header) == 1:
                for other in (",", ";", "|", "::"):
                    if other in header[0]:
                        hint = f" (the header looks {other!r}-separated; atomic files are tab-separated)"
                        break
            raise DataError(
                f"{path} line 1: missing column {aliases[0]!r} in the header "
                f"(expected tab-separated typed columns like '{aliases[0]}:token', found {header}){hint}"
            )
        index[key] = found[0]
    return index


def _atomic_table(path: Path, required: dict[str, tuple[str, ...]]) -> pl.DataFrame:
    lines = text_lines(read_text(path, "utf-8"))
    index = _atomic_header(path, lines, required)
    ncols = len(lines[0].rstrip("\r").split("\t"))
    header_names = [f"c{i}" for i in range(ncols)]
    raw = split_delimited(path, "\t", header_names, encoding="utf-8", header=True, lines=lines)
    return raw.select([raw[f"c{i}"].alias(key) for key, i in index.items()] + [raw[LINE_COLUMN]])


def _clean_token(col: pl.Series) -> pl.Series:
    # the RecBole conversion wrote the unknown movie's title/year as "unkonwn"
    return col.str.strip_chars().replace({"": UNKNOWN, "unkonwn": UNKNOWN})


def _ml100k_atomic(inter_path: Path, user_path: Path, item_path: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:

    raw = _atomic_table(
        inter_path,
        {"user": ("user_id",), "item": ("item_id",), "rating": ("rating",), "timestamp": ("timestamp",)},
    )
    ratings = pl.DataFrame(
        {
            "user_key": cast_number(raw, "user", inter_path, what="user_id"),
            "item_key": cast_number(raw, "item", inter_path, what="item_id"),
            "rating": cast_rating(raw, "rating", inter_path, *MOVIELENS_RATINGS),
            TIME_COLUMN: cast_number(raw, "timestamp", inter_path, dtype=pl.Float64).floor().cast(pl.Int64),
            LINE_COLUMN: raw[LINE_COLUMN],
        }
    )

    raw = _atomic_table(
        user_path,
        {
            "user": ("user_id",),
            "age": ("age",),
            "gender": ("gender",),
            "occupation": ("occupation",),
            "zip": ("zip_code", "zipcode", "zip"),
        },
    )
    users = raw.select(
        cast_number(raw, "user", user_path, what="user_id").alias("user_key"),
        cast_number(raw, "age", user_path).cast(pl.Utf8).alias("age"),
        _map_codes(raw, "gender", GENDERS, user_path, "gender", numeric=False).alias("gender"),
        _clean_token(raw["occupation"]).alias("occupation"),
        _clean_token(raw["zip"]).alias("zipcode"),
        raw[LINE_COLUMN],
    )

    raw = _atomic_table(
        item_path,
        {
            "item": ("item_id",),
            "title": ("movie_title", "title"),
            "year": ("release_year",),
            "genre": ("class", "genre", "genres"),
        },
    )
    year = _clean_token(raw["year"])
    items = raw.select(
        cast_number(raw, "item", item_path, what="item_id").alias("item_key"),
        _clean_token(raw["title"]).alias("title"),
        # a release year that is not four digits (one RecBole row has "V") is unknown
        pl.when(year.str.contains(r"^\d{4}$")).then(year).otherwise(pl.lit(UNKNOWN)).alias("release_year"),
        _readable_genres(raw["genre"], " ").alias("genre"),
        raw[LINE_COLUMN],
    )
    return ratings, users, items


_ML100K_FILES = {
    "original": (
        ("u.data", "ML-100K ratings file u.data (user id<TAB>item id<TAB>rating<TAB>timestamp)"),
        ("u.user", "ML-100K users file u.user (user id|age|gender|occupation|zip code)"),
        ("u.item", "ML-100K items file u.item (movie id|title|release date|...|19 genre flags)"),
    ),
    "atomic": (
        ("ml-100k.inter", "ML-100K atomic interactions file"),
        ("ml-100k.user", "ML-100K atomic users file"),
        ("ml-100k.item", "ML-100K atomic items file"),
    ),
}


def ml100k_files(data_dir: str | Path, format: str = "auto") -> list[Path]:  # noqa: A002
    """The files :func:`load_ml100k` reads: ratings, users, items (of the chosen or detected format)."""
    folder = locate_dir(data_dir, ["ml-100k"], _ORIGINAL_FILES + _ATOMIC_FILES)
    if format == "auto":
        has_original, has_atomic = (folder / "u.data").exists(), (folder / "ml-100k.inter").exists()
        if not (has_original or has_atomic):
            raise DataError(
                f"{folder}: no ML-100K data found: expected the GroupLens files {', '.join(_ORIGINAL_FILES)} "
                f"or the atomic files {', '.join(_ATOMIC_FILES)}"
            )
        format = "original" if has_original else "atomic"  # noqa: A001
    if format not in _ML100K_FILES:
        raise DataError(f"ML-100K format must be 'auto', 'original' or 'atomic', got {format!r}")
    return [require_file(folder / name, what) for name, what in _ML100K_FILES[format]]


def load_ml100k(data_dir: str | Path, format: str = "auto") -> LoadedTable:  # noqa: A002
    """Load MovieLens-100K from ``data_dir`` (the dataset folder, or its parent).

    Two layouts are accepted (``format="auto"`` picks the one present, the GroupLens original
    if both are):

    - ``original``: GroupLens u.data (tab: user, item, rating, timestamp), u.user
      (``|``: id, age, gender, occupation, zip), u.item (``|``, ISO-8859-1: id, title, release
      date, video release date, IMDb URL, 19 genre flags).
    - ``atomic``: RecBole atomic files ml-100k.inter/.user/.item (UTF-8, tab-separated, typed
      header such as ``user_id:token``).

    Both give the same table for the same content. Fields: user id, age (raw number as
    text), gender (male/female), occupation, zip code, movie id, movie title (without the
    trailing "(YYYY)"), release year (atomic: as given; original: the "(YYYY)" of the title,
    else the year of the release date; "unknown" if neither), genre (", "-joined names;
    "unknown" when no genre flag is set).

    Label rule: the paper gives none for ML-100K, so it uses the ML-1M rule: rating > 3 → 1,
    rating < 3 → 0, rating == 3 dropped (the number dropped is logged).
    """
    start = time.perf_counter()
    files = ml100k_files(data_dir, format)
    is_original = files[0].name == "u.data"
    ratings, users, items = (_ml100k_original if is_original else _ml100k_atomic)(*files)
    log.info("ML-100K: reading the %s format from %s", "original" if is_original else "atomic", files[0].parent)

    check_unique(users, "user_key", files[1], "user id")
    check_unique(items, "item_key", files[2], "movie id")
    check_references(ratings, "user_key", users["user_key"], files[0], files[1], "user id")
    check_references(ratings, "item_key", items["item_key"], files[0], files[2], "movie id")
    users = users.drop(LINE_COLUMN).with_columns(pl.col("user_key").cast(pl.Utf8).alias("user_id"))
    items = items.drop(LINE_COLUMN).with_columns(pl.col("item_key").cast(pl.Utf8).alias("movie_id"))
    ratings = ratings.with_row_index(ROW_COLUMN).with_columns(pl.col(ROW_COLUMN).cast(pl.Int64))
    loaded = _finish(ratings, users, items, ML100K_SCHEMA, files, str(files[0]))
    log.info(
        "ML-100K: %d rows (of %d ratings), positive rate %.4f, %.2fs",
        loaded.table.height,
        ratings.height,
        float(loaded.table[LABEL_COLUMN].mean()),
        time.perf_counter() - start,
    )
    return loaded


__all__ = [
    "ML1M_AGES",
    "ML1M_OCCUPATIONS",
    "ML100K_GENRES",
    "ML1M_SCHEMA",
    "ML100K_SCHEMA",
    "MOVIELENS_LABEL_RULE",
    "load_ml1m",
    "load_ml100k",
    "ml1m_files",
    "ml100k_files",
]
