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
import json
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
from ..io_utils import atomic_write_text, sha256_of
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
        if 300 <= err.code < 400:  # urllib gives up on a redirect loop (or one redirect too many)
            where = err.headers.get("Location", "?") if err.headers else "?"
            raise DownloadError(f"{url}: too many redirects (the server keeps redirecting; last: HTTP {err.code} "
                                f"to {where}); check the URL, or download the file yourself and read it from "
                                "its folder (data_dir)") from None
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
                            " run the same command again to resume, or allow more time (deadline_seconds)")
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


def _record_path(folder: Path, archive_name: str) -> Path:
    return folder / f".{archive_name}.extracted.json"


def record_extraction(folder: Path, archive_name: str, entries: list[str]) -> None:
    """Write what extraction put in `folder` (the top-level `entries`): each file's size and SHA-256."""
    files = {}
    for name in entries:
        top = folder / name
        for path in [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()):
            files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": sha256_of(path)}
    atomic_write_text(_record_path(folder, archive_name), json.dumps({"archive": archive_name, "files": files}))


def extraction_problem(folder: Path, archive_name: str) -> str | None:
    """None if every file `archive_name` put in `folder` is as extraction wrote it; else what is
    wrong (a file changed or missing since, or no record of the extraction)."""
    try:
        files = json.loads(_record_path(folder, archive_name).read_text())["files"]
        recorded = {rel: (int(v["size"]), str(v["sha256"])) for rel, v in files.items()}
    except FileNotFoundError:
        return f"{folder}: no record of what {archive_name} extracted there"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{_record_path(folder, archive_name)}: unreadable record of the extraction"
    for rel, (size, digest) in recorded.items():
        path = folder / rel
        if not path.is_file():
            return f"{path}: missing since it was extracted from {archive_name}"
        if path.stat().st_size != size or sha256_of(path) != digest:
            return f"{path}: changed since it was extracted from {archive_name} (size or SHA-256 differs)"
    return None


def extract(archive: Path, dest_dir: Path, required: list[str] | None = None) -> None:
    """Extract a zip archive next to itself: into a temporary folder, checked for `required`
    paths, then each top-level entry renamed into place under a lock, and what was written is
    recorded (`extraction_problem` checks it before use). A bad archive is removed."""
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
            entries = [entry.name for entry in tmp.iterdir()]
            for name in entries:
                final = dest_dir / name
                if final.is_dir():
                    shutil.rmtree(final)
                os.replace(tmp / name, final)
            record_extraction(dest_dir, archive.name, entries)
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
    """Download (or verify what is there), and extract every file of a dataset into `dest_dir`;
    an archive is extracted again when what it extracted has changed since."""
    if not info.files:
        raise DownloadError(f"dataset '{info.name}' has nothing to download ({info.source})")
    check_mirror(mirror)
    _destination(dest_dir)
    for remote in info.files:
        path = download_file(remote, dest_dir, mirror=mirror, progress=progress, timeout=timeout,
                             deadline_seconds=deadline_seconds)
        if not (remote.sha256 or remote.md5):
            log(f"note: {remote.filename} has no published checksum; sha256 is {_digest(path, 'sha256')}")
        if path.suffix == ".zip" and (problem := extraction_problem(dest_dir, path.name)):
            log(f"extracting {path.name} ({problem})")
            extract(path, dest_dir, required=[r for r in info.required if "/" in r])
    return dest_dir
