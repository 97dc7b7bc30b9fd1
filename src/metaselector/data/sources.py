"""Parse each publisher's raw files into one interactions table.

The table has one row per rating or review with columns `user`, `item`, `rating`,
`label` (0/1), `timestamp` (Unix seconds) and the dataset's categorical side columns;
item tags (genres, categories) come separately, one list per item.
Every parser reports a malformed line by file and line number.
"""

from __future__ import annotations

import ast
import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError

ML1M_AGE_BUCKETS = (1, 18, 25, 35, 45, 50, 56)


@dataclass
class RawData:
    """A dataset parsed from its raw files, before feature encoding."""

    name: str
    interactions: pd.DataFrame
    # item -> list of tags (genres or categories); items missing here have none.
    item_tags: dict[object, list[str]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    return path


def _line_of(path: Path, line_number: int, encoding: str = "utf-8") -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding=encoding, errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if number == line_number:
                return line.rstrip("\n")[:120]
    return ""


# Unix seconds that datetime arithmetic can represent (pandas' nanosecond range is 1677..2262).
TIMESTAMP_RANGE = (-9_000_000_000, 9_000_000_000)
INTEGER_COLUMNS = ("user", "item", "timestamp", "age", "occupation", "movieId")


def check_numeric(
    frame: pd.DataFrame, columns: list[str], path: Path, expected: str,
    header_lines: int, encoding: str = "utf-8",
) -> pd.DataFrame:
    """Convert `columns` to numbers; on the first bad row raise naming its file line. A value is
    bad if it is not a number, not finite, not whole where an id or a time is expected, or a
    timestamp outside what dates can hold."""
    bad = np.zeros(len(frame), dtype=bool)
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
        wrong = ~np.isfinite(numbers)
        if column in INTEGER_COLUMNS:
            wrong |= np.isfinite(numbers) & (numbers != np.round(numbers))
        if column == "timestamp":
            wrong |= (numbers < TIMESTAMP_RANGE[0]) | (numbers > TIMESTAMP_RANGE[1])
        bad |= wrong
        frame[column] = values
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        number = row + 1 + header_lines
        raise InputError(
            f"{path}: line {number}: expected {expected}, got {_line_of(path, number, encoding)!r}"
        )
    return frame


def check_labels(frame: pd.DataFrame, path: Path | str) -> None:
    """A CTR model needs both classes: refuse data whose labels are all 0 or all 1."""
    classes = np.unique(frame["label"].to_numpy())
    if len(frame) and len(classes) < 2:
        kind = "positive" if classes[0] == 1 else "negative"
        raise InputError(f"{path}: every label is {kind}; training needs both positive and negative samples")


def read_table(path: Path, **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, ValueError) as err:
        raise InputError(f"{path}: {str(err).strip().splitlines()[-1] if str(err).strip() else 'not readable'}") \
            from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: file is empty") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not valid {kwargs.get('encoding', 'utf-8')} text ({err.reason})") from None


def add_labels(frame: pd.DataFrame, threshold: float = 4.0) -> pd.DataFrame:
    frame["label"] = (frame["rating"] >= threshold).astype(np.int8)
    return frame


def _double_colon(path: Path, names: list[str], numeric: list[str], expected: str) -> pd.DataFrame:
    """Read a MovieLens-1M `::` file with the fast C parser: ':' splits, odd columns empty."""
    width = 2 * len(names) - 1
    try:
        frame = pd.read_csv(path, sep=":", header=None, names=list(range(width)), encoding="latin-1", dtype=str,
                            keep_default_na=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError):
        frame = None
    # Every separator column must be empty: a single ':' inside a field shifts the fields.
    shifted = None if frame is None else (frame.iloc[:, 1::2] != "").any(axis=1).to_numpy()
    if frame is None or shifted.any():
        number = _first_line_without(path, len(names)) if frame is None else int(np.flatnonzero(shifted)[0]) + 1
        if number is None:
            raise InputError(f"{path}: not readable as '::'-separated text")
        raise InputError(f"{path}: line {number}: expected {expected}, got {_line_of(path, number, 'latin-1')!r}")
    frame = frame.iloc[:, 0::2]
    frame.columns = names
    return check_numeric(frame, numeric, path, expected, 0, "latin-1")


def _first_line_without(path: Path, fields: int) -> int | None:
    """The number of the first line that does not split into `fields` fields on '::'."""
    with open(path, encoding="latin-1", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if len(line.rstrip("\n").split("::")) != fields:
                return number
    return None


def load_movielens_1m(folder: Path) -> RawData:
    ratings_path = require_file(folder / "ratings.dat")
    users_path = require_file(folder / "users.dat")
    movies_path = require_file(folder / "movies.dat")
    ratings = _double_colon(
        ratings_path, ["user", "item", "rating", "timestamp"], ["user", "item", "rating", "timestamp"],
        "UserID::MovieID::Rating::Timestamp (numbers)",
    )
    users = _double_colon(
        users_path, ["user", "gender", "age", "occupation", "zip"], ["user", "age", "occupation"],
        "UserID::Gender::Age::Occupation::Zip-code",
    )
    tags: dict[object, list[str]] = {}
    with open(movies_path, encoding="latin-1") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.rstrip("\n").split("::")
            if len(parts) != 3 or not parts[0].isdigit():
                raise InputError(f"{movies_path}: line {number}: expected MovieID::Title::Genres, got {line[:120]!r}")
            tags[int(parts[0])] = [g for g in parts[2].split("|") if g]
    return _finish_movielens("movielens-1m", ratings, users, tags, [ratings_path, users_path, movies_path])


def _finish_movielens(name, ratings, users, tags, files) -> RawData:
    ratings = ratings.astype({"user": np.int64, "item": np.int64, "timestamp": np.int64})
    users = users.astype({"user": np.int64}).drop_duplicates("user").set_index("user")
    for column in ("gender", "age", "occupation"):
        ratings[column] = ratings["user"].map(users[column]).astype(str)
    check_labels(add_labels(ratings), files[0])
    return RawData(name, ratings, tags, files)


def load_movielens_100k(folder: Path) -> RawData:
    data_path = require_file(folder / "u.data")
    user_path = require_file(folder / "u.user")
    item_path = require_file(folder / "u.item")
    ratings = read_table(
        data_path, sep="\t", header=None, names=["user", "item", "rating", "timestamp"], dtype=str,
        keep_default_na=False,
    )
    ratings = check_numeric(ratings, ["user", "item", "rating", "timestamp"], data_path,
                             "user id<TAB>item id<TAB>rating<TAB>timestamp (numbers)", 0)
    users = read_table(user_path, sep="|", header=None, names=["user", "age", "gender", "occupation", "zip"],
                        dtype=str, keep_default_na=False, encoding="latin-1")
    users = check_numeric(users, ["user", "age"], user_path, "user id|age|gender|occupation|zip code", 0, "latin-1")
    # Bucket ages as MovieLens-1M does, so both releases share one feature definition.
    bucket = np.searchsorted(ML1M_AGE_BUCKETS, users["age"].to_numpy(), side="right") - 1
    users["age"] = np.array(ML1M_AGE_BUCKETS)[np.maximum(bucket, 0)]
    genres = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
              "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
              "Thriller", "War", "Western"]
    tags: dict[object, list[str]] = {}
    with open(item_path, encoding="latin-1") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.rstrip("\n").split("|")
            flags = parts[5:]
            if len(parts) != 24 or not parts[0].isdigit() or any(f not in ("0", "1") for f in flags):
                raise InputError(f"{item_path}: line {number}: expected movie id|title|dates|URL| and 19 genre "
                                 f"flags (0/1), got {line[:120]!r}")
            tags[int(parts[0])] = [g for g, f in zip(genres, flags, strict=True) if f == "1"]
    return _finish_movielens("movielens-100k", ratings, users, tags, [data_path, user_path, item_path])


def load_ml_latest_small(folder: Path) -> RawData:
    ratings_path = require_file(folder / "ratings.csv")
    movies_path = require_file(folder / "movies.csv")
    ratings = read_table(ratings_path, dtype=str, keep_default_na=False)
    expected = ["userId", "movieId", "rating", "timestamp"]
    if list(ratings.columns) != expected:
        got = ",".join(ratings.columns)
        raise InputError(f"{ratings_path}: line 1: expected header {','.join(expected)}, got {got}")
    ratings.columns = ["user", "item", "rating", "timestamp"]
    ratings = check_numeric(ratings, ["user", "item", "rating", "timestamp"], ratings_path,
                             "userId,movieId,rating,timestamp (numbers)", 1)
    ratings = ratings.astype({"user": np.int64, "item": np.int64, "timestamp": np.int64})
    movies = read_table(movies_path, dtype=str, keep_default_na=False)
    if list(movies.columns) != ["movieId", "title", "genres"]:
        raise InputError(f"{movies_path}: line 1: expected header movieId,title,genres")
    movies = check_numeric(movies, ["movieId"], movies_path, "movieId,title,genres", 1)
    tags = {
        int(item): [g for g in genres.split("|") if g and g != "(no genres listed)"]
        for item, genres in zip(movies["movieId"], movies["genres"], strict=True)
    }
    check_labels(add_labels(ratings), ratings_path)
    return RawData("ml-latest-small", ratings, tags, [ratings_path, movies_path])


_ASIN = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")


def _read_reviews(path: Path) -> pd.DataFrame:
    """Keep only the four fields the features need; fail on the first malformed line."""
    users, items, ratings, times = [], [], [], []
    loads = json.loads
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    record = loads(line)
                    users.append(str(record["reviewerID"]))
                    items.append(str(record["asin"]))
                    rating, when = float(record["overall"]), record["unixReviewTime"]
                    if isinstance(when, float) and np.isfinite(when) and when.is_integer():
                        when = int(when)
                    if not np.isfinite(rating) or isinstance(when, bool) or not isinstance(when, int) or \
                            not TIMESTAMP_RANGE[0] <= when <= TIMESTAMP_RANGE[1]:
                        raise ValueError("out of range")
                    ratings.append(rating)
                    times.append(when)
                except (ValueError, KeyError, TypeError, OverflowError) as err:
                    what = f"missing field {err}" if isinstance(err, KeyError) else "not valid"
                    raise InputError(
                        f"{path}: line {number}: expected a JSON object with reviewerID, asin, "
                        f"numeric overall and unixReviewTime ({what}), got {line[:120]!r}"
                    ) from None
    except (OSError, EOFError) as err:
        raise InputError(f"{path}: not a readable gzip file ({err})") from None
    return pd.DataFrame({"user": users, "item": items, "rating": ratings, "timestamp": times})


def _read_meta(path: Path, wanted: set[str]) -> dict[object, list[str]]:
    """Categories of the items in `wanted`; lines are Python literals, parsed without eval."""
    tags: dict[object, list[str]] = {}
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                match = _ASIN.search(line)
                if match is None:
                    raise InputError(
                        f"{path}: line {number}: expected a dict literal with an 'asin' key, got {line[:120]!r}")
                if match.group(1) not in wanted:
                    continue
                try:
                    record = ast.literal_eval(line)
                except (ValueError, SyntaxError):
                    raise InputError(f"{path}: line {number}: not a Python dict literal: {line[:120]!r}") from None
                flat: list[str] = []
                for category_path in record.get("categories", []) or []:
                    for category in category_path:
                        if category not in flat:
                            flat.append(category)
                tags[record["asin"]] = flat
    except (OSError, EOFError) as err:
        raise InputError(f"{path}: not a readable gzip file ({err})") from None
    return tags


def load_amazon_electronics(folder: Path) -> RawData:
    reviews_path = require_file(folder / "reviews_Electronics_5.json.gz")
    meta_path = require_file(folder / "meta_Electronics.json.gz")
    reviews = _read_reviews(reviews_path)
    tags = _read_meta(meta_path, set(reviews["item"].unique()))
    check_labels(add_labels(reviews), reviews_path)
    return RawData("amazon-electronics", reviews, tags, [reviews_path, meta_path])
