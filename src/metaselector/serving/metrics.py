"""Prometheus metrics (prometheus-client) for `GET /metrics`: requests by endpoint and status,
latency histograms per endpoint and per stage (parse; encode; adapt and score, which are one
vmapped call), batch sizes, queue length, history-store writes and their latency, evicted
events. No metric holds a user id or any request content.

With several worker processes (`serve --workers N`) each process writes its values to files in
PROMETHEUS_MULTIPROC_DIR (set before the workers start) and /metrics adds them up: the client's
multiprocess mode. Then the metrics are created unregistered, so no value is counted twice.
"""

from __future__ import annotations

import os

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        if multiprocess:
            from prometheus_client import multiprocess as collector

            collector.MultiProcessCollector(self.registry)
        where = {"registry": None if multiprocess else self.registry}
        self.requests = Counter("metaselector_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], **where)
        self.latency = Histogram("metaselector_request_seconds", "Request latency by endpoint", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, **where)
        self.stage = Histogram("metaselector_stage_seconds", "Time per stage of scoring", ["stage"],
                               buckets=LATENCY_BUCKETS, **where)
        self.batch = Histogram("metaselector_batch_size", "Users adapted together in one call",
                               buckets=BATCH_BUCKETS, **where)
        self.queue = Gauge("metaselector_queue_length", "Requests waiting to be scored",
                           multiprocess_mode="livesum", **where)
        self.store_writes = Counter("metaselector_store_writes", "History store writes by outcome", ["outcome"],
                                    **where)
        self.store_latency = Histogram("metaselector_store_write_seconds", "History store write latency",
                                       buckets=LATENCY_BUCKETS, **where)
        self.evicted = Counter("metaselector_evicted_events", "Stored events dropped by the caps or retention",
                               **where)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
