"""The server's limits, declared once (`serve`'s options take their defaults from here)."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, setting


@dataclass
class ServeSettings:
    max_batch: int = setting(64, AT_LEAST_ONE)  # users adapted in one vmapped call
    queue_size: int = setting(256, AT_LEAST_ONE)  # requests waiting; beyond it, 503
    max_candidates: int = setting(1000, AT_LEAST_ONE)
    max_events: int = setting(1000, AT_LEAST_ONE)
    max_body_bytes: int = setting(1 << 20, AT_LEAST_ONE)
    history_length: int = setting(200, AT_LEAST_ONE)  # events kept per user and used for adaptation
    # a stored event may be dated at most this far ahead of the server's clock: far-future events
    # would otherwise evict a user's real history (the store keeps each user's newest events)
    max_future_seconds: int = setting(86_400, NON_NEGATIVE)
    body_read_seconds: float = setting(10.0, POSITIVE)  # a request body not received by then: 408
    max_connections: int = setting(512, AT_LEAST_ONE)  # beyond it, uvicorn answers 503
    keep_alive_seconds: int = setting(5, AT_LEAST_ONE)  # an idle keep-alive connection is closed then
    # bytes of request bodies being read and parsed at once (by their Content-Length); beyond,
    # 503 before reading, so memory stays bounded under a flood of large bodies, while ordinary
    # requests (a few KB) are never turned away by it
    max_parsing_bytes: int = setting(32 << 20, AT_LEAST_ONE)
    max_user_bytes: int = setting(65_536, AT_LEAST_ONE)  # a user's stored events, oldest dropped first
    retention_days: float = setting(0.0, NON_NEGATIVE)  # 0: kept until a cap drops them
