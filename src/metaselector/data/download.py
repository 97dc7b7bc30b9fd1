"""Download with resume and checksum verification, then extraction.

A partial download is kept as `<name>.part` and resumed with an HTTP Range request. The
file is renamed into place only after its checksum matches, so the cache never holds a
corrupt archive under its real name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
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


def _fetch(url: str, part: Path, timeout: float, progress: bool, deadline: float | None = None) -> None:
    """Append the rest of `url` to `part`, resuming from its current size. `timeout`: seconds
    without a byte before giving up (a stalled server); `deadline`: time.monotonic() by which
    the file must be complete (a server that trickles). Both keep the partial file."""
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
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise DownloadError(f"{url}: cannot connect ({getattr(err, 'reason', err)})") from None
    except ValueError as err:
        raise DownloadError(f"{url}: not a URL ({err})") from None
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
                # read1 returns after one receive, so the deadline is checked however slowly bytes come
                while chunk := response.read1(CHUNK):
                    handle.write(chunk)
                    bar.update(len(chunk))
                    if deadline is not None and time.monotonic() > deadline:
                        raise IncompleteDownload(
                            f"{url}: not complete within the time allowed ({handle.tell()} bytes so far);"
                            " run the same command again to resume, or allow more time (--deadline)")
            except (http.client.IncompleteRead, http.client.HTTPException, OSError) as err:
                raise IncompleteDownload(
                    f"{url}: connection lost after {handle.tell()} bytes ({err.__class__.__name__});"
                    " run the same command again to resume"
                ) from None
        if total is not None and part.stat().st_size < total:
            raise IncompleteDownload(
                f"{url}: got {part.stat().st_size} of {total} bytes;"
                " run the same command again to resume"
            )


def check_mirror(mirror: str | None) -> None:
    if mirror is not None:
        parsed = urllib.parse.urlparse(mirror)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise DownloadError(f"mirror '{mirror}': expected an http:// or https:// URL")


def _destination(dest_dir: Path) -> Path:
    if dest_dir.exists() and not dest_dir.is_dir():
        raise DownloadError(f"{dest_dir}: expected a folder, found a file")
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"{dest_dir}: cannot create the folder ({err.strerror})") from None
    return dest_dir


def download_file(
    remote: RemoteFile,
    dest_dir: Path,
    mirror: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
    deadline_seconds: float | None = 6 * 3600,
) -> Path:
    """Download one file into `dest_dir` (resuming), verify it, and return its path."""
    check_mirror(mirror)
    _destination(dest_dir)
    target = dest_dir / remote.filename
    if target.exists():
        try:
            verify(target, remote)
        except ChecksumError:
            target.unlink(missing_ok=True)  # a damaged file is not kept: the next run fetches it again
            raise
        return target
    part = dest_dir / (remote.filename + ".part")
    urls = [f"{mirror.rstrip('/')}/{remote.filename}"] if mirror else [remote.url, *remote.mirrors]
    errors: list[str] = []
    deadline = time.monotonic() + deadline_seconds if deadline_seconds else None
    for url in urls:
        try:
            _fetch(url, part, timeout, progress, deadline)
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


@contextlib.contextmanager
def folder_lock(path: Path) -> Iterator[None]:
    """An exclusive lock (a file beside the folder) while one process extracts into it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def safe_extract(archive: Path, dest_dir: Path) -> None:
    """Extract a zip archive into `dest_dir`, refusing paths that escape it."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            root = dest_dir.resolve()
            for member in zipped.namelist():
                if not (root / member).resolve().is_relative_to(root):
                    raise DownloadError(f"{archive}: unsafe path '{member}' in archive")
            zipped.extractall(dest_dir)
    except (zipfile.BadZipFile, EOFError) as err:
        raise DownloadError(f"{archive}: not a valid zip archive ({err})") from None


def extract(archive: Path, dest_dir: Path, required: list[str] | None = None) -> None:
    """Extract a zip archive next to itself: into a temporary folder, checked for `required`
    paths, then each top-level entry renamed into place under a lock. A bad archive is removed."""
    if archive.suffix != ".zip":
        return
    with folder_lock(dest_dir / ".extract.lock"):
        tmp = Path(tempfile.mkdtemp(dir=dest_dir, prefix=".extract."))
        try:
            try:
                safe_extract(archive, tmp)
                missing = [r for r in required or [] if not (tmp / r).is_file()]
                if missing:
                    raise DownloadError(f"{archive}: the archive lacks {', '.join(missing)} (not kept)")
            except DownloadError:
                archive.unlink(missing_ok=True)
                raise
            for entry in tmp.iterdir():
                final = dest_dir / entry.name
                if final.is_dir():
                    shutil.rmtree(final)
                os.replace(entry, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def download_dataset(
    info: DatasetInfo,
    dest_dir: Path,
    mirror: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    timeout: float = 60.0,
    deadline_seconds: float | None = 6 * 3600,
) -> Path:
    """Download, verify and extract every file of a dataset into `dest_dir`."""
    if not info.files:
        raise DownloadError(f"dataset '{info.name}' has nothing to download ({info.source})")
    check_mirror(mirror)
    _destination(dest_dir)
    for remote in info.files:
        path = download_file(remote, dest_dir, mirror=mirror, progress=progress, timeout=timeout,
                             deadline_seconds=deadline_seconds)
        if not (remote.sha256 or remote.md5):
            log(f"note: {remote.filename} has no published checksum; sha256 is {_digest(path, 'sha256')}")
        inside = [r for r in info.required if "/" in r] if path.suffix == ".zip" else []
        extract(path, dest_dir, required=inside)
    return dest_dir
