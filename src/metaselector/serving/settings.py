"""The server's limits, declared once (`serve`'s options take their defaults from here)."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import AT_LEAST_ONE, setting


@dataclass
class ServeSettings:
    max_batch: int = setting(64, AT_LEAST_ONE)  # users adapted in one vmapped call
    queue_size: int = setting(256, AT_LEAST_ONE)  # requests waiting; beyond it, 503
    max_candidates: int = setting(1000, AT_LEAST_ONE)
    max_events: int = setting(1000, AT_LEAST_ONE)
    max_body_bytes: int = setting(1 << 20, AT_LEAST_ONE)
    history_length: int = setting(200, AT_LEAST_ONE)  # events kept per user and used for adaptation
