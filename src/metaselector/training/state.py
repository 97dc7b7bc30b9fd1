"""Training state on disk, so that a killed run resumes to the same result.

A `StateFile` holds one learner's state at its last epoch boundary: weights, optimizer moments
(the lazily stored row moments too), RNG states, counters and the best epoch so far. It is
written atomically and read with `torch.load(weights_only=True)`: tensors and plain data only,
never code.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .. import distributed
from ..errors import InputError
from ..io_utils import atomic_write
from .row_state import RowStore

ROW_STORE = "__row_store__"


def to_plain(value):
    """`value` with every RowStore replaced by a plain dict (weights_only loading allows no classes)."""
    if isinstance(value, RowStore):
        return {ROW_STORE: {"fill": value.fill, "count": value.count, "slot": value.slot,
                            "values": value.values[:value.count]}}
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(v) for v in value)
    return value


def from_plain(value):
    if isinstance(value, dict):
        if set(value) == {ROW_STORE}:
            stored = value[ROW_STORE]
            store = RowStore.__new__(RowStore)
            store.fill, store.count = stored["fill"], stored["count"]
            store.slot, store.values = stored["slot"], stored["values"].clone()
            return store
        return {k: from_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(from_plain(v) for v in value)
    return value


class StateFile:
    """One learner's saved state (None until its first epoch boundary)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def named(cls, folder: Path | None, name: str) -> StateFile | None:
        if folder is None:
            return None
        return cls(folder / (re.sub(r"[^0-9A-Za-z_.+-]", "_", name) + ".pt"))

    def save(self, state: dict) -> None:
        if not distributed.current().main:  # replicas are equal: rank 0 writes for all
            return
        with atomic_write(self.path) as handle:
            torch.save(to_plain(state), handle)

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            return from_plain(torch.load(self.path, map_location="cpu", weights_only=True))
        except Exception as err:  # torch raises many types for a damaged file
            raise InputError(f"{self.path}: unreadable training state ({err.__class__.__name__}); "
                             "delete it to restart that stage") from None
