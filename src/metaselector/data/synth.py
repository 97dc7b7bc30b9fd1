"""Synthetic datasets in the publisher's exact raw format, at full size by default.

Users fall into four groups whose likes follow different kinds of structure, so that
different base models fit different users best and per-user selection matters:
  0  single features: item quality plus a user bias (what LR captures),
  1  user x genre pairs: a personal taste per genre (what FM captures),
  2  demographic (or season) x genre pairs: field-aware structure (what FFM captures),
  3  a non-linear rule: taste flips with the day of the week (what an MLP captures).
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io_utils import atomic_write

ML_GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
             "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
             "War", "Western"]
SIZES = {
    "movielens-1m": {"users": 6040, "items": 3952, "samples": 1_000_209, "min_per_user": 20},
    "amazon-electronics": {"users": 192_403, "items": 63_001, "samples": 1_689_188, "min_per_user": 5},
}


def _counts(rng: np.random.Generator, users: int, total: int, minimum: int, cap: int) -> np.ndarray:
    """Heavy-tailed per-user counts, each >= minimum and <= cap, summing to `total`."""
    weights = rng.lognormal(0.0, 1.2, users)
    extra = rng.multinomial(total - minimum * users, weights / weights.sum())
    counts = np.minimum(minimum + extra, cap)
    shortfall = total - counts.sum()
    while shortfall > 0:  # hand what the cap cut off to users below it
        room = np.flatnonzero(counts < cap)
        take = rng.choice(room, size=min(shortfall, len(room)), replace=False)
        counts[take] += 1
        shortfall = total - counts.sum()
    return counts


def _items_per_user(rng: np.random.Generator, counts: np.ndarray, n_items: int) -> np.ndarray:
    """Distinct items per user: an arithmetic walk with a step coprime to the catalogue size."""
    users = len(counts)
    # Half the users start near the popular head of the catalogue, half anywhere.
    head = (rng.pareto(1.2, users) * n_items / 20).astype(np.int64) % n_items
    start = np.where(rng.random(users) < 0.5, head, rng.integers(0, n_items, users))
    step = rng.integers(1, 40, users)
    while (bad := np.gcd(step, n_items) != 1).any():
        step[bad] = rng.integers(1, 40, int(bad.sum()))
    owner = np.repeat(np.arange(users), counts)
    position = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    items = (start[owner] + position * step[owner]) % n_items
    # Every item of the catalogue gets at least one interaction, as in the real release:
    # a missing item replaces one interaction of a random user who does not have it yet.
    ends = np.cumsum(counts)
    for missing in np.flatnonzero(np.bincount(items, minlength=n_items) == 0):
        while True:
            user = int(rng.integers(0, users))
            mine = items[ends[user] - counts[user]:ends[user]]
            last = ends[user] - 1
            if missing not in mine and np.count_nonzero(items == items[last]) > 1:
                items[last] = missing
                break
    return items


def _labels(rng, group, quality, user_bias, taste, item_genres, demo_taste, weekend, scale=2.0):
    genre_count = np.maximum(item_genres.sum(axis=1), 1)
    taste_score = (taste * item_genres).sum(axis=1) / genre_count
    demo_score = (demo_taste * item_genres).sum(axis=1) / genre_count
    logit = np.select(
        [group == 0, group == 1, group == 2],
        [1.5 * quality + user_bias, scale * taste_score, scale * demo_score],
        default=scale * np.where(weekend, quality, -quality) * np.sign(user_bias + 1e-9),
    )
    return (rng.random(len(logit)) < 1 / (1 + np.exp(-logit))).astype(np.int8)


def _ratings(rng, labels):
    return np.where(labels == 1, rng.integers(4, 6, len(labels)), rng.integers(1, 4, len(labels)))


def _timestamps(rng, counts, low, high):
    start = rng.integers(low, high - 86400 * 400, len(counts))
    owner = np.repeat(np.arange(len(counts)), counts)
    gaps = rng.exponential(86400 * 2.0, owner.size).astype(np.int64)
    ends = np.cumsum(counts)
    cumulative = np.cumsum(gaps)
    before = np.repeat(np.concatenate([[0], cumulative[ends[:-1] - 1]]), counts)
    return start[owner] + cumulative - before


def write_synthetic(like: str, out: Path, users: int | None = None, seed: int = 0) -> dict:
    if like not in SIZES:
        raise InputError(f"like must be one of {', '.join(SIZES)}, got '{like}'")
    size = dict(SIZES[like])
    if users is not None:  # scale every count with the number of users
        ratio = users / size["users"]
        size["items"] = max(50, int(size["items"] * ratio ** 0.5)) if ratio < 1 else size["items"]
        size["samples"] = max(int(size["samples"] * ratio), users * size["min_per_user"])
        size["users"] = users
        # Every item needs an interaction: never more items than a third of the samples.
        size["items"] = min(size["items"], size["samples"] // 3)
    rng = np.random.default_rng(seed)
    out = Path(out)
    if like == "movielens-1m":
        return _write_movielens(rng, out / "ml-1m", size)
    return _write_amazon(rng, out, size)


def _write_movielens(rng, folder: Path, size: dict) -> dict:
    n_users, n_items, total = size["users"], size["items"], size["samples"]
    counts = _counts(rng, n_users, total, size["min_per_user"], cap=min(n_items, 2300))
    items = _items_per_user(rng, counts, n_items)
    owner = np.repeat(np.arange(n_users), counts)
    item_genres = np.zeros((n_items, len(ML_GENRES)), dtype=np.float32)
    for k in range(3):
        chosen = rng.integers(0, len(ML_GENRES), n_items)
        keep = (k == 0) | (rng.random(n_items) < 0.4)
        item_genres[np.flatnonzero(keep), chosen[keep]] = 1
    quality = rng.normal(0, 1, n_items)
    group = rng.integers(0, 4, n_users)
    gender = rng.integers(0, 2, n_users)
    age_code = rng.integers(0, 7, n_users)
    occupation = rng.integers(0, 21, n_users)
    user_bias = rng.normal(0, 0.5, n_users)
    taste = rng.normal(0, 1.5, (n_users, len(ML_GENRES)))
    demo_table = rng.normal(0, 1.5, (7, 2, len(ML_GENRES)))
    timestamps = _timestamps(rng, counts, 956_703_932, 1_046_454_590)
    weekend = ((timestamps // 86400 + 3) % 7) >= 5
    labels = _labels(rng, group[owner], quality[items], user_bias[owner], taste[owner], item_genres[items],
                     demo_table[age_code[owner], gender[owner]], weekend)
    ratings = _ratings(rng, labels)
    frame = pd.DataFrame({"u": owner + 1, "i": items + 1, "r": ratings, "t": timestamps})
    folder.mkdir(parents=True, exist_ok=True)
    _write_double_colon(folder / "ratings.dat", frame)
    ages = np.array([1, 18, 25, 35, 45, 50, 56])[age_code]
    users_frame = pd.DataFrame({"u": np.arange(1, n_users + 1), "g": np.where(gender == 0, "M", "F"),
                                "a": ages, "o": occupation, "z": rng.integers(10000, 99999, n_users)})
    _write_double_colon(folder / "users.dat", users_frame)
    lines = []
    for index in range(n_items):
        genres = "|".join(g for g, flag in zip(ML_GENRES, item_genres[index], strict=True) if flag)
        lines.append(f"{index + 1}::Synthetic Movie {index + 1} ({1950 + index % 50})::{genres}\n")
    with atomic_write(folder / "movies.dat", "w") as handle:
        handle.writelines(lines)
    with atomic_write(folder / "README", "w") as handle:
        handle.write("Synthetic data in the MovieLens-1M format, written by `metaselector synth`.\n")
    return {"format": "movielens-1m", "folder": str(folder), "users": n_users, "items": n_items,
            "ratings": int(total), "groups": np.bincount(group, minlength=4).tolist()}


def _write_double_colon(path: Path, frame: pd.DataFrame) -> None:
    text = frame.to_csv(sep="\t", header=False, index=False).replace("\t", "::")
    with atomic_write(path, "w") as handle:
        handle.write(text)


def _write_amazon(rng, folder: Path, size: dict) -> dict:
    n_users, n_items, total = size["users"], size["items"], size["samples"]
    counts = _counts(rng, n_users, total, size["min_per_user"], cap=min(n_items, 400))
    items = _items_per_user(rng, counts, n_items)
    owner = np.repeat(np.arange(n_users), counts)
    n_sub, n_leaf = 10, 60
    sub = rng.integers(0, n_sub, n_items)
    leaf = sub * (n_leaf // n_sub) + rng.integers(0, n_leaf // n_sub, n_items)
    item_genres = np.zeros((n_items, n_sub), dtype=np.float32)
    item_genres[np.arange(n_items), sub] = 1
    quality = rng.normal(0, 1, n_items)
    group = rng.integers(0, 4, n_users)
    user_bias = rng.normal(0, 0.5, n_users)
    taste = rng.normal(0, 1.5, (n_users, n_sub))
    season_table = rng.normal(0, 1.5, (4, n_sub))
    timestamps = _timestamps(rng, counts, 1_000_000_000, 1_405_000_000) // 86400 * 86400
    month = pd.to_datetime(timestamps, unit="s").month.to_numpy()
    weekend = ((timestamps // 86400 + 3) % 7) >= 5
    labels = _labels(rng, group[owner], quality[items], user_bias[owner], taste[owner], item_genres[items],
                     season_table[(month % 12) // 3], weekend)
    ratings = _ratings(rng, labels).astype(np.float64)
    reviewer = np.array([f"A{u:013d}" for u in range(n_users)])
    asin = np.array([f"B{i:09d}" for i in range(n_items)])
    folder.mkdir(parents=True, exist_ok=True)
    dates = pd.to_datetime(timestamps, unit="s").strftime("%m %d, %Y").to_numpy()
    buffer = io.StringIO()
    for u, i, r, t, d in zip(reviewer[owner], asin[items], ratings, timestamps, dates, strict=True):
        buffer.write(
            f'{{"reviewerID": "{u}", "asin": "{i}", "reviewerName": "user", "helpful": [0, 0], '
            f'"reviewText": "synthetic", "overall": {r}, "summary": "synthetic", '
            f'"unixReviewTime": {t}, "reviewTime": "{d}"}}\n'
        )
    with atomic_write(folder / "reviews_Electronics_5.json.gz") as handle:
        handle.write(gzip.compress(buffer.getvalue().encode(), compresslevel=1))
    meta = io.StringIO()
    for index in range(n_items):
        record = {"asin": str(asin[index]), "title": f"Synthetic product {index}", "price": float(index % 97),
                  "categories": [["Electronics", f"Sub {int(sub[index])}", f"Leaf {int(leaf[index])}"]]}
        meta.write(repr(record) + "\n")
    with atomic_write(folder / "meta_Electronics.json.gz") as handle:
        handle.write(gzip.compress(meta.getvalue().encode(), compresslevel=1))
    return {"format": "amazon-electronics", "folder": str(folder), "users": n_users, "items": n_items,
            "reviews": int(total), "groups": np.bincount(group, minlength=4).tolist()}
