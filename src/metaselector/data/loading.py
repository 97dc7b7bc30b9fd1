"""From a dataset name (and optional folder) to an EncodedDataset, through the disk cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io_utils import atomic_write, cache_home, sha256_of
from .custom import CustomSpec, load_custom
from .dataset import EncodedDataset, encode
from .download import download_dataset, extraction_problem, folder_lock, record_extraction, safe_extract
from .encoder import FeatureEncoder
from .features import FEATURE_SPECS, FeatureSpec, custom_feature_spec
from .registry import ML_LATEST_SMALL_SHA256, builtin_ml_latest_small, dataset_info
from .sources import RawData, load_amazon_electronics, load_ml_latest_small, load_movielens_1m, load_movielens_100k

CACHE_FORMAT = 3  # bump when the encoding changes, so stale caches are not reused

_ARCHIVES = {"movielens-1m": ("ml-1m", "ml-1m.zip"), "movielens-100k": ("ml-100k", "ml-100k.zip")}


def _extract_archive(archive: Path, name: str) -> Path:
    """Extract a user's archive into the cache (their folder may be read-only): into a
    temporary folder first, checked, then renamed into place under a lock, so a half-extracted
    or foreign archive never stands under the final name."""
    digest = sha256_of(archive)[:16]
    target = cache_home() / "extracted" / f"{name}-{digest}"
    inner_name = _ARCHIVES[name][0]
    required = [Path(r).name for r in dataset_info(name).required]
    if extraction_problem(target, archive.name) is None:
        return target / inner_name  # as extraction left it (sizes and checksums recorded then)
    with folder_lock(target.parent / f".{target.name}.lock"):
        if extraction_problem(target, archive.name) is None:
            return target / inner_name  # another process finished it meanwhile
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            safe_extract(archive, tmp)
            missing = [r for r in required if not (tmp / inner_name / r).is_file()]
            if missing:
                raise InputError(f"{archive}: expected the folder {inner_name}/ with {', '.join(required)} "
                                 f"inside the archive (missing {', '.join(missing)})")
            record_extraction(tmp, archive.name, [inner_name])
            shutil.rmtree(target, ignore_errors=True)  # an incomplete or damaged earlier extraction
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target / inner_name


def locate(name: str, data_dir: Path | None, mirror: str | None = None,
           log: Callable[[str], None] = print) -> Path:
    """The folder that holds the dataset's raw files, downloading them if needed."""
    info = dataset_info(name)
    if name == "ml-latest-small":
        if data_dir is None:
            return builtin_ml_latest_small()
        nested = _folder(data_dir) / "ml-latest-small"  # the archive's folder, or the files themselves
        return nested if nested.is_dir() else Path(data_dir)
    if name in _ARCHIVES:
        folder_name, archive_name = _ARCHIVES[name]
        if data_dir is not None:
            data_dir = _folder(data_dir)
            for candidate in (data_dir / folder_name, data_dir):
                if all((candidate / Path(r).name).is_file() for r in info.required):
                    return candidate
            if (data_dir / archive_name).is_file():
                return _extract_archive(data_dir / archive_name, name)
            raise InputError(f"{data_dir}: expected {archive_name} or the folder {folder_name}/ "
                             f"with {', '.join(Path(r).name for r in info.required)}")
        return _downloaded(info, mirror, log) / folder_name
    if name == "amazon-electronics":
        if data_dir is not None:
            return _folder(data_dir)
        return _downloaded(info, mirror, log)
    raise InputError(f"dataset '{name}' is read from your own file: give a data file (data_file)")


def _downloaded(info, mirror: str | None, log: Callable[[str], None]) -> Path:
    """The dataset's folder in the cache: downloaded if missing; on every use the files are
    checked against their published checksums and what extraction wrote, and a damaged
    extraction is extracted again from the verified archive."""
    home = cache_home() / "datasets" / info.name
    if not all((home / r).is_file() for r in info.required):
        log(f"downloading {info.name} into {home}")
    download_dataset(info, home, mirror=mirror, log=log)
    return home


def _folder(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: folder not found")
    if not path.is_dir():
        raise InputError(f"{path}: expected a folder, found a file")
    return path


def verify_builtin(folder: Path) -> None:
    for filename in ("ratings.csv", "movies.csv"):
        actual = sha256_of(folder / filename)
        if actual != ML_LATEST_SMALL_SHA256[filename]:
            raise InputError(f"{folder / filename}: sha256 {actual} does not match the shipped file's")


def load_raw(name: str, folder: Path | None = None, custom: CustomSpec | None = None) -> RawData:
    if name == "custom":
        if custom is None:
            raise InputError("dataset 'custom' needs a data file (data_file)")
        return load_custom(custom)
    if folder is None:
        raise InputError(f"dataset '{name}': no folder with its files")
    loaders = {
        "ml-latest-small": load_ml_latest_small,
        "movielens-1m": load_movielens_1m,
        "movielens-100k": load_movielens_100k,
        "amazon-electronics": load_amazon_electronics,
    }
    dataset_info(name)
    return loaders[name](folder)


def _files_of(name: str, folder: Path | None, custom: CustomSpec | None) -> list[Path]:
    if name == "custom":
        return [Path(custom.path)] if custom else []
    info = dataset_info(name)
    return [folder / Path(r).name for r in info.required]


def load_dataset(
    name: str,
    data_dir: Path | None = None,
    custom: CustomSpec | None = None,
    spec: FeatureSpec | None = None,
    use_cache: bool = True,
    mirror: str | None = None,
    log: Callable[[str], None] = print,
    grow_from: FeatureEncoder | None = None,
) -> EncodedDataset:
    """Parse and encode a dataset, reusing the cached encoding when inputs are unchanged.
    `grow_from`: encode with vocabularies grown from that encoder (a saved model's, continued on
    this data; its feature layout must be this dataset's; the cache is not used, since the ids
    depend on the parent)."""
    folder = None if name == "custom" else locate(name, data_dir, mirror, log)
    if name == "ml-latest-small" and data_dir is None:
        verify_builtin(folder)  # the shipped files must be the published 2018 release
    if spec is None:
        spec = (custom_feature_spec(custom.categorical, custom.multi_hot, separator=custom.separator)
                if name == "custom" and custom else FEATURE_SPECS.get(name))
    if spec is None:
        raise InputError(f"no feature preset for dataset '{name}'")
    if grow_from is not None:
        if grow_from.spec != spec:
            raise InputError(f"dataset '{name}': its feature layout ({_describe(spec)}) differs from the parent "
                             f"model's ({_describe(grow_from.spec)}); a model continues only on data of its kind")
        use_cache = False
    files = _files_of(name, folder, custom)
    for path in files:
        if not path.is_file():
            raise InputError(f"{path}: file not found")
    digest = hashlib.sha256(f"{CACHE_FORMAT}|{name}|{spec.key()}".encode())
    sources = {path.name: sha256_of(path) for path in files}
    for checksum in sources.values():
        digest.update(checksum.encode())
    if custom is not None:
        digest.update(repr(custom).encode())
    key = digest.hexdigest()
    cache_path = cache_home() / "processed" / f"{name}-{key[:20]}.npz"
    if use_cache and cache_path.is_file():
        try:
            cached = _read_cache(cache_path, key)
            cached.sources = sources
            return cached
        except Exception as err:  # any damage (empty, truncated, foreign file): rebuild it
            log(f"note: rebuilding the cache {cache_path} ({err.__class__.__name__}: {err})")
    threshold = (custom.threshold if custom.rating else None) if custom is not None else 4.0
    encoded = encode(load_raw(name, folder, custom), spec, label_threshold=threshold, grow_from=grow_from)
    encoded.sources = sources
    if use_cache:
        _write_cache(cache_path, encoded, key)
    return encoded


def _describe(spec: FeatureSpec) -> str:
    return ", ".join(f"{f.name}={f.source}" for f in spec.fields) + f"; history {spec.history_length}"


def _write_cache(path: Path, data: EncodedDataset, key: str) -> None:
    meta = json.dumps({"key": key, "name": data.name, "encoder": data.encoder.to_dict(), "dropped": data.dropped})
    with atomic_write(path) as handle:
        extra = {} if data.ratings is None else {"ratings": data.ratings}
        np.savez(handle, ids=data.ids, weights=data.weights, labels=data.labels, users=data.users,
                 items=data.items, timestamps=data.timestamps, user_names=data.user_names, **extra,
                 meta=np.frombuffer(meta.encode(), dtype=np.uint8))


def _read_cache(path: Path, key: str) -> EncodedDataset:
    with np.load(path, allow_pickle=False) as stored:
        meta = json.loads(stored["meta"].tobytes().decode())
        if meta.get("key") != key:
            raise ValueError("written for other input files or settings")
        encoder = FeatureEncoder.from_dict(meta["encoder"])
        return EncodedDataset(
            name=meta["name"], layout=encoder.layout, encoder=encoder, ids=stored["ids"],
            weights=stored["weights"], labels=stored["labels"], users=stored["users"],
            items=stored["items"], timestamps=stored["timestamps"], user_names=stored["user_names"],
            dropped=meta["dropped"], ratings=stored["ratings"] if "ratings" in stored.files else None,
        )
