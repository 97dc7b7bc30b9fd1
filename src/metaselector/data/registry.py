"""The datasets the project knows: where they come from, how big they are, their licenses."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..errors import InputError


@dataclass(frozen=True)
class RemoteFile:
    """One file to download: its URL, the name it is stored under, and its checksum."""

    url: str
    filename: str
    sha256: str | None = None
    md5: str | None = None
    mirrors: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    source: str
    size: str
    license: str
    files: tuple[RemoteFile, ...] = field(default_factory=tuple)
    # Files that must exist (after extraction) for the loader, relative to the data folder.
    required: tuple[str, ...] = ()


GROUPLENS = "https://files.grouplens.org/datasets/movielens"
SNAP = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
UCSD = "http://jmcauley.ucsd.edu/data/amazon/productGraph/categoryFiles"

# Checksums of the 2018 ml-latest-small files shipped inside the package.
ML_LATEST_SMALL_SHA256 = {
    "ratings.csv": "80da8b3393dae325bbba5a31f291a6ba55d8d4f4396de3c456f2c1635b1b70e8",
    "movies.csv": "c47b783f23eb304413307e1bb05335e427737da20ec8d3c0e96335567dd5f3dc",
    "links.csv": "028a4a1d17751ca9276e0e0718cfc22356350f224a996e1ec348c23274b9209d",
    "tags.csv": "68eec00a0820c2faa8863a6df7032f13d5899a4462bce9a97213905297ff3d34",
}

DATASETS: dict[str, DatasetInfo] = {
    "ml-latest-small": DatasetInfo(
        name="ml-latest-small",
        description="MovieLens latest-small (2018): 100,836 ratings, 610 users; shipped, offline",
        source=f"{GROUPLENS}/ml-latest-small.zip (bundled in the package)",
        size="3.2 MB (bundled)",
        license="GroupLens research license: non-commercial, acknowledge GroupLens (README.txt)",
        required=("ratings.csv", "movies.csv"),
    ),
    "movielens-1m": DatasetInfo(
        name="movielens-1m",
        description="MovieLens-1M: 1,000,209 ratings, 6,040 users, 3,952 movies, demographics",
        source=f"{GROUPLENS}/ml-1m.zip",
        size="5.9 MB zip, 24 MB extracted",
        license="GroupLens research license: non-commercial, no redistribution (README)",
        files=(
            RemoteFile(
                url=f"{GROUPLENS}/ml-1m.zip",
                filename="ml-1m.zip",
                sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
                md5="c4d9eecfca2ab87c1945afe126590906",
            ),
        ),
        required=("ml-1m/ratings.dat", "ml-1m/users.dat", "ml-1m/movies.dat"),
    ),
    "movielens-100k": DatasetInfo(
        name="movielens-100k",
        description="MovieLens-100K: 100,000 ratings, 943 users, 1,682 movies, demographics",
        source=f"{GROUPLENS}/ml-100k.zip",
        size="4.9 MB zip",
        license="GroupLens research license: non-commercial, no redistribution (README)",
        files=(
            RemoteFile(
                url=f"{GROUPLENS}/ml-100k.zip",
                filename="ml-100k.zip",
                md5="0e33842e24a9c977be4e0107933c0723",
            ),
        ),
        required=("ml-100k/u.data", "ml-100k/u.item", "ml-100k/u.user"),
    ),
    "amazon-electronics": DatasetInfo(
        name="amazon-electronics",
        description="Amazon Electronics 5-core reviews + item meta (McAuley 2014)",
        source=f"{SNAP}/reviews_Electronics_5.json.gz and meta_Electronics.json.gz",
        size="about 480 MB reviews + 190 MB meta, gzip",
        license="Research use; cite He & McAuley 2016 (WWW) and McAuley et al. 2015 (SIGIR)",
        files=(
            RemoteFile(
                url=f"{SNAP}/reviews_Electronics_5.json.gz",
                filename="reviews_Electronics_5.json.gz",
                mirrors=(f"{UCSD}/reviews_Electronics_5.json.gz",),
            ),
            RemoteFile(
                url=f"{SNAP}/meta_Electronics.json.gz",
                filename="meta_Electronics.json.gz",
                mirrors=(f"{UCSD}/meta_Electronics.json.gz",),
            ),
        ),
        required=("reviews_Electronics_5.json.gz", "meta_Electronics.json.gz"),
    ),
    "custom": DatasetInfo(
        name="custom",
        description="Your own CSV or Parquet: user, item, label or rating, timestamp, side columns",
        source="--data-file PATH (see docs/using.md: 'Your own data')",
        size="-",
        license="yours",
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(DATASETS)
        raise InputError(f"unknown dataset '{name}': expected one of {known}") from None


def builtin_ml_latest_small() -> Path:
    """Folder of the ml-latest-small files shipped inside the package."""
    return Path(str(resources.files("metaselector") / "data" / "builtin" / "ml-latest-small"))
