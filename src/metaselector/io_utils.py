"""Atomic file writes and checksums: a crash never leaves a half-written file in place."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import InputError


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the umask's mode
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


def sha256_of(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def cache_home() -> Path:
    """`$METASELECTOR_HOME`, else the user's cache folder; refused if it (or a folder above it)
    is a file, since nothing could be created inside it."""
    env = os.environ.get("METASELECTOR_HOME")
    if env:
        return _usable_folder(Path(env).expanduser(), "METASELECTOR_HOME")
    if os.environ.get("XDG_CACHE_HOME"):
        return _usable_folder(Path(os.environ["XDG_CACHE_HOME"]) / "metaselector", "XDG_CACHE_HOME")
    return Path.home() / ".cache" / "metaselector"


def _usable_folder(path: Path, setting: str) -> Path:
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise InputError(f"{setting}={os.environ[setting]}: {part} is a file, not a folder; point "
                                 f"{setting} at a folder (or unset it)")
            break
    return path


def strict(value):
    """`value` with every NaN or infinite float replaced by None (null in JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value
