"""An output folder owned by one run.

`run.json` says which command, configuration, seed and data the folder's files come from; a
lock file keeps a second run out while one is writing. A rerun with another configuration is
refused unless forced (then the old training state is cleared); resuming continues only the
same run; training state lives under `state/`.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

from . import distributed
from .errors import ConfigError
from .io_utils import atomic_write_text

MARKER = "run.json"
RESULT_FILES = ("results.json", "manifest.json")


def first_difference(old, new, prefix: str = "") -> str | None:
    """The first setting (dotted path) whose value differs, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if old == new else prefix.rstrip(".")


class RunDirectory:
    def __init__(self, path: Path, identity: dict, resume: bool = False, force: bool = False) -> None:
        self.path, self.identity, self.resume, self.force = Path(path), identity, resume, force
        self._lock = None

    @property
    def state_dir(self) -> Path:
        return self.path / "state"

    def __enter__(self) -> RunDirectory:
        if not distributed.current().main:  # rank 0 claims the folder; the others learn how it went
            refused = distributed.from_main(None)
            if refused:
                raise ConfigError(refused)
            return self
        try:
            self._lock_and_claim()
        except BaseException as err:
            distributed.from_main(str(err) if isinstance(err, ConfigError) else "rank 0 could not claim the folder")
            self.__exit__()
            raise
        distributed.from_main(None)
        return self

    def _lock_and_claim(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"{self.path}: exists and is not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path / ".lock", "a")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise ConfigError(f"{self.path}: another run is writing this folder") from None
        self._claim()

    def _claim(self) -> None:
        marker = self.path / MARKER
        old = None
        if marker.is_file():
            try:
                old = json.loads(marker.read_text())
            except (OSError, json.JSONDecodeError):
                old = {"unreadable": True}
        if self.resume and old is None:
            raise ConfigError(f"{self.path}: nothing to resume (no {MARKER})")
        difference = first_difference(old, self.identity) if old is not None else None
        if self.resume and difference:
            raise ConfigError(f"{self.path}: cannot resume: '{difference}' differs from the run in this folder")
        if not self.force and old is None and any((self.path / f).exists() for f in RESULT_FILES):
            raise ConfigError(f"{self.path}: holds results of an unknown run; forcing (force) replaces them; "
                              "or choose another folder")
        if not self.force and difference:
            raise ConfigError(f"{self.path}: holds a run whose '{difference}' differs; resuming (resume) only "
                              "continues the same run; forcing (force) replaces it; or choose another folder")
        if not self.resume:
            shutil.rmtree(self.state_dir, ignore_errors=True)  # a fresh run never reuses old state
        atomic_write_text(marker, json.dumps(self.identity, indent=1, sort_keys=True) + "\n")

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None


def run_identity(command: str, config_dict: dict, sources: dict, seed: int | None = None) -> dict:
    """What must match for a folder's files to belong to one run (the thread count does not
    change what is computed, so it may differ on resume)."""
    config = {k: v for k, v in config_dict.items() if k != "threads"}
    return {"command": command, "config": config, "data_sha256": sources, "seed": seed}
