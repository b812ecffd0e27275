"""Writers of tiny raw-data fixtures in the exact on-disk formats the loaders read.

Each writer takes a folder, writes the files and returns the folder. Contents are small and
hand-checkable; tests/test_sources.py documents the expected loaded values.
"""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

# ---------------------------------------------------------------- MovieLens-1M (GroupLens .dat)

ML1M_USERS = [
    "1::F::1::10::48067",
    "2::M::56::16::70072",
    "3::M::25::4::55117",
    "4::F::45::0::02460",
]
ML1M_MOVIES = [
    "1::Toy Story (1995)::Animation|Children's|Comedy",
    "2::Misérables, Les (1995)::Drama|Musical",
    "3::Heat (1995)::Action|Crime|Thriller",
]
# user, movie, rating, timestamp; rating 3 rows are dropped by the label rule
ML1M_RATINGS = [
    (1, 1, 5, 978300760),
    (1, 2, 3, 978302109),
    (2, 3, 1, 978301968),
    (3, 1, 4, 978300275),
    (3, 3, 3, 978824291),
    (4, 2, 2, 978824292),
    (2, 1, 3, 978824293),
    (4, 3, 5, 978824294),
]


def ml1m_ratings_lines(ratings=ML1M_RATINGS) -> list[str]:
    return [f"{u}::{m}::{r}::{t}" for u, m, r, t in ratings]


def write_lines(path: Path, lines: list[str], *, encoding: str = "latin-1", newline: str = "\n", gz: bool = False) -> Path:
    data = "".join(line + newline for line in lines).encode(encoding)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_ml1m(folder: Path, *, ratings_name: str = "ratings.dat", ratings_lines: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_lines(folder / "users.dat", ML1M_USERS)
    write_lines(folder / "movies.dat", ML1M_MOVIES)
    lines = ratings_lines if ratings_lines is not None else ml1m_ratings_lines()
    write_lines(folder / ratings_name, lines, gz=ratings_name.endswith(".gz"))
    return folder


# ---------------------------------------------------------------- MovieLens-100K

# user id, age, gender, occupation, zip
ML100K_USERS = [(1, 24, "M", "technician", "85711"), (2, 53, "F", "other", "94043"), (3, 23, "M", "writer", "32067")]
# movie id, title (original, with year), release date, genre flags (indices into the 19 genres)
ML100K_ITEMS = [
    (1, "Toy Story (1995)", "01-Jan-1995", [3, 4, 5]),
    (2, "Misérables, Les (1995)", "01-Jan-1995", [8, 12]),
    (3, "Shanghai Triad (Yao a yao yao dao waipo qiao) (1995)", "01-Jan-1995", [8]),
    (4, "Good Morning", "01-Jan-1971", []),
]
ML100K_RATINGS = [(1, 1, 5, 874965758), (2, 2, 3, 876893171), (3, 3, 1, 878542960), (1, 4, 4, 876893119), (2, 1, 2, 889751712)]
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)


def write_ml100k_original(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_lines(folder / "u.data", [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in ML100K_RATINGS])
    write_lines(folder / "u.user", [f"{u}|{a}|{g}|{o}|{z}" for u, a, g, o, z in ML100K_USERS])
    items = []
    for mid, title, date, genres in ML100K_ITEMS:
        flags = "|".join("1" if k in genres else "0" for k in range(19))
        items.append(f"{mid}|{title}|{date}||http://us.imdb.com/M/title-exact?x|{flags}")
    write_lines(folder / "u.item", items)
    return folder


def write_ml100k_atomic(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in ML100K_RATINGS]
    write_lines(folder / "ml-100k.inter", inter, encoding="utf-8")
    users = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
    users += [f"{u}\t{a}\t{g}\t{o}\t{z}" for u, a, g, o, z in ML100K_USERS]
    write_lines(folder / "ml-100k.user", users, encoding="utf-8")
    items = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    for mid, title, date, genres in ML100K_ITEMS:
        base, year = title, date[-4:]
        if title.endswith(")") and title[-5:-1].isdigit():
            base, year = title[:-7], title[-5:-1]
        names = " ".join(ML100K_GENRES[k] for k in genres) or "unknown"
        items.append(f"{mid}\t{base}\t{year}\t{names}")
    write_lines(folder / "ml-100k.item", items, encoding="utf-8")
    return folder


# ---------------------------------------------------------------- Book-Crossing (BX-CSV-Dump)

BX_USERS = [
    '"User-ID";"Location";"Age"',
    '"1";"nyc, new york, usa";NULL',
    '"2";"münchen, bayern, germany";"18"',
    # a quoted value with a line break (as in the real dump), and MySQL-escaped quotes
    '"3";"cernusco s\n, milan, italy";"31"',
    '"4";"kuala lumpur, \\"n/a\\", malaysia";NULL',
]
BX_BOOKS_HEADER = '"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher";"Image-URL-S";"Image-URL-M";"Image-URL-L"'
BX_BOOKS = [
    BX_BOOKS_HEADER,
    '"0195153448";"Classical Mythology";"Mark P. O. Morford";"2002";"Oxford University Press";"s";"m";"l"',
    '"0002005018";"Clara Callan";"Richard Bruce Wright";"2001";"HarperFlamingo Canada";"s";"m";"l"',
    '"0060973129";"Decision in Normandy";"Carlo D\'Este";"0";"Harper &amp; Row";"s";"m";"l"',
    # a stray backslash before a closing quote, as in a few rows of the real BX-Books.csv
    '"0789466953";"DK Readers: Creating the X-Men (Level 4)\\";"James Buckley";"2000";"DK Publishing Inc";"s";"m";"l"',
]
# user, isbn, rating: > 5 is positive, 0 (implicit) is negative
BX_RATINGS_ROWS = [
    ("1", "0195153448", "0"),
    ("2", "0002005018", "5"),
    ("2", "0060973129", "6"),
    ("3", "0789466953", "10"),
    ("4", "9999999999", "8"),  # ISBN not in BX-Books
    ("1", "0002005018", "7"),
]


def bx_ratings_lines(rows=BX_RATINGS_ROWS) -> list[str]:
    return ['"User-ID";"ISBN";"Book-Rating"'] + [f'"{u}";"{i}";"{r}"' for u, i, r in rows]


def write_bookcrossing(folder: Path, *, users=None, books=None, ratings=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_lines(folder / "BX-Users.csv", users or BX_USERS, newline="\r\n")
    write_lines(folder / "BX-Books.csv", books or BX_BOOKS, newline="\r\n")
    write_lines(folder / "BX-Book-Ratings.csv", ratings or bx_ratings_lines(), newline="\r\n")
    return folder


# ---------------------------------------------------------------- GoodReads (UCSD Book Graph)


def goodreads_book(book_id: str, **over) -> dict:
    book = {
        "isbn": "0312853122",
        "text_reviews_count": "1",
        "series": [],
        "country_code": "US",
        "language_code": "eng",
        "popular_shelves": [{"count": "3", "name": "to-read"}, {"count": "2", "name": "fantasy"}],
        "asin": "",
        "is_ebook": "false",
        "average_rating": "4.00",
        "kindle_asin": "",
        "similar_books": [],
        "description": "",
        "format": "Paperback",
        "link": "https://www.goodreads.com/book/show/x",
        "authors": [{"author_id": "604031", "role": ""}],
        "publisher": "St. Martin's Press",
        "num_pages": "256",
        "publication_day": "1",
        "isbn13": "9780312853129",
        "publication_month": "9",
        "edition_information": "",
        "publication_year": "1984",
        "url": "https://www.goodreads.com/book/show/x",
        "image_url": "https://images.gr-assets.com/x.jpg",
        "book_id": book_id,
        "ratings_count": "3",
        "work_id": "4948",
        "title": f"Book {book_id}",
        "title_without_series": f"Book {book_id}",
    }
    book.update(over)
    return book


GOODREADS_BOOKS = [
    goodreads_book("5333265", title="W.C. Fields: A Life on Film", ratings_count="1234"),
    goodreads_book(
        "1333909",
        title="Good Harbor",
        series=["189911"],
        is_ebook="true",
        authors=[{"author_id": "626222", "role": ""}, {"author_id": "9", "role": "Illustrator"}],
        publication_month="",
        popular_shelves=[{"count": "9", "name": "to-read"}, {"count": "5", "name": "currently-reading"}],
    ),
]
GOODREADS_AUTHORS = [{"author_id": "604031", "name": "Ronald J. Fields"}, {"author_id": "626222", "name": "Anita Diamant"}]
GOODREADS_INTERACTIONS = [
    {"user_id": "8842281e1d1347389f2ab93d60773d4d", "book_id": "5333265", "review_id": "r1", "is_read": True,
     "rating": 5, "review_text_incomplete": "", "date_added": "Tue Oct 17 14:33:58 -0700 2017",
     "date_updated": "Tue Oct 17 14:34:30 -0700 2017", "read_at": "", "started_at": ""},
    {"user_id": "8842281e1d1347389f2ab93d60773d4d", "book_id": "1333909", "review_id": "r2", "is_read": False,
     "rating": 0, "review_text_incomplete": "", "date_added": "",
     "date_updated": "Mon Jan 01 00:00:00 +0000 2001", "read_at": "", "started_at": ""},
    {"user_id": "72fb0d0087d28c832f15776b0d936598", "book_id": "1333909", "review_id": "r3", "is_read": True,
     "rating": 3, "review_text_incomplete": "", "date_added": "Wed Mar 21 08:00:00 +0000 2012",
     "date_updated": "Wed Mar 21 08:00:00 +0000 2012", "read_at": "", "started_at": ""},
    {"user_id": "72fb0d0087d28c832f15776b0d936598", "book_id": "5333265", "review_id": "r4", "is_read": True,
     "rating": 4, "review_text_incomplete": "", "date_added": "Thu Mar 22 08:00:00 +0000 2012",
     "date_updated": "", "read_at": "", "started_at": ""},
]


def write_jsonl(path: Path, rows: list, *, gz: bool = True) -> Path:
    data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_goodreads(folder: Path, *, interactions=None, books=None, authors=GOODREADS_AUTHORS) -> Path:
    write_jsonl(folder / "goodreads_interactions_poetry.json.gz", interactions or GOODREADS_INTERACTIONS)
    write_jsonl(folder / "goodreads_books_poetry.json.gz", books or GOODREADS_BOOKS)
    if authors is not None:
        write_jsonl(folder / "goodreads_book_authors.json.gz", authors)
    return folder


# ---------------------------------------------------------------- enough rows to train on

def bx_training_ratings(n: int = 240) -> list[str]:
    """``n`` ratings of the fixture users and books (every user-book pair, ratings 0-10 whose
    label depends on the user and the book), enough for a train/validation/test split."""
    users, isbns = ["1", "2", "3", "4"], ["0195153448", "0002005018", "0060973129", "0789466953", "9999999999"]
    rows = []
    for k in range(n):
        u, i = users[k % 4], isbns[(k // 4) % 5]
        likes = (int(u) % 2 == 0) == (isbns.index(i) % 2 == 0)
        rows.append((u, i, str(8 + k % 3 if likes else k % 5)))
    return bx_ratings_lines(rows)


def goodreads_training_interactions(n: int = 240) -> list[dict]:
    """``n`` interactions of two users with the two fixture books, one a day (date_added), ratings 0-5."""
    base = GOODREADS_INTERACTIONS[0]
    users = [base["user_id"], GOODREADS_INTERACTIONS[2]["user_id"]]
    books = [b["book_id"] for b in GOODREADS_BOOKS]
    rows = []
    for k in range(n):
        u, b = k % 2, (k // 2) % 2
        rating = 5 - k % 2 if u == b else k % 3
        added = datetime(2001, 1, 1, tzinfo=timezone.utc) + timedelta(hours=7 * k)
        rows.append({**base, "user_id": users[u], "book_id": books[b], "rating": rating,
                     "date_added": added.strftime("%a %b %d %H:%M:%S %z %Y")})
    return rows
