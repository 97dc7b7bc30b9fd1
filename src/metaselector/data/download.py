"""Download with resume and checksum verification, then extraction.

A partial download is kept as `<name>.part` and resumed with an HTTP Range request. The
file is renamed into place only after its checksum matches, so the cache never holds a
corrupt archive under its real name.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from ..errors import ChecksumError, DownloadError, IncompleteDownload
from .registry import DatasetInfo, RemoteFile

CHUNK = 1 << 16


def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, remote: RemoteFile) -> None:
    """Raise ChecksumError if `path` does not match the published SHA-256 or MD5."""
    for algorithm, expected in (("sha256", remote.sha256), ("md5", remote.md5)):
        if expected:
            actual = _digest(path, algorithm)
            if actual != expected:
                raise ChecksumError(
                    f"{path}: {algorithm} is {actual}, expected {expected} "
                    f"(corrupt or wrong file; it was not kept)"
                )
            return


def _fetch(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of `url` to `part`, resuming from its current size."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "metaselector"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http/https only)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # already complete
            return
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"{url}: cannot connect ({getattr(err, 'reason', err)})") from None
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored the Range header: start again
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        mode = "ab" if offset else "wb"
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                   desc=part.name.removesuffix(".part"), disable=not progress, leave=False)
        with open(part, mode) as handle, bar:
            try:
                while chunk := response.read(CHUNK):
                    handle.write(chunk)
                    bar.update(len(chunk))
            except (http.client.IncompleteRead, OSError) as err:
                raise IncompleteDownload(
                    f"{url}: connection lost after {handle.tell()} bytes ({err.__class__.__name__});"
                    " run the same command again to resume"
                ) from None
        if total is not None and part.stat().st_size < total:
            raise IncompleteDownload(
                f"{url}: got {part.stat().st_size} of {total} bytes;"
                " run the same command again to resume"
            )


def download_file(
    remote: RemoteFile,
    dest_dir: Path,
    mirror: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download one file into `dest_dir` (resuming), verify it, and return its path."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / remote.filename
    if target.exists():
        verify(target, remote)
        return target
    part = dest_dir / (remote.filename + ".part")
    urls = [f"{mirror.rstrip('/')}/{remote.filename}"] if mirror else [remote.url, *remote.mirrors]
    errors: list[str] = []
    for url in urls:
        try:
            _fetch(url, part, timeout, progress)
            break
        except IncompleteDownload:
            raise  # keep the partial file: the next run resumes it from the same source
        except DownloadError as err:
            errors.append(str(err))
    else:
        raise DownloadError("; ".join(errors))
    try:
        verify(part, remote)
    except ChecksumError as err:
        part.unlink(missing_ok=True)
        raise ChecksumError(str(err).replace(str(part), remote.filename)) from None
    os.replace(part, target)
    return target


def extract(archive: Path, dest_dir: Path) -> None:
    """Extract a zip archive next to itself, refusing paths that escape `dest_dir`."""
    if archive.suffix != ".zip":
        return
    try:
        with zipfile.ZipFile(archive) as zipped:
            root = dest_dir.resolve()
            for member in zipped.namelist():
                if not (root / member).resolve().is_relative_to(root):
                    raise DownloadError(f"{archive}: unsafe path '{member}' in archive")
            zipped.extractall(dest_dir)
    except zipfile.BadZipFile:
        raise DownloadError(f"{archive}: not a valid zip archive") from None


def download_dataset(
    info: DatasetInfo,
    dest_dir: Path,
    mirror: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Download, verify and extract every file of a dataset into `dest_dir`."""
    if not info.files:
        raise DownloadError(f"dataset '{info.name}' has nothing to download ({info.source})")
    for remote in info.files:
        path = download_file(remote, dest_dir, mirror=mirror, progress=progress)
        if not (remote.sha256 or remote.md5):
            log(f"note: {remote.filename} has no published checksum; sha256 is {_digest(path, 'sha256')}")
        extract(path, dest_dir)
    return dest_dir
