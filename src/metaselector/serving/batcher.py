"""Requests that wait are adapted together: one worker, one vmapped call per batch.

An idle worker takes a request at once (no added wait); requests that arrive while it is busy
queue up, and the next call takes all of them, up to `max_batch`. The queue is bounded: when
it is full, `submit` refuses at once, and the server answers 503. A request whose caller has
gone (its future cancelled while it waited) is skipped, and closing has a deadline: whatever is
still queued then is failed with `Closing`, so shutdown always ends.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future

from ..errors import MetaSelectorError

_STOP = object()


class QueueFull(Exception):
    """The queue holds as many requests as it may."""


class Closing(Exception):
    """The server is shutting down: the request was not scored."""


class Batcher:
    def __init__(self, score: Callable[[list], list], max_batch: int, queue_size: int,
                 on_start: Callable[[], None] | None = None) -> None:
        """`on_start`: run first on the scoring thread (its torch thread count)."""
        self.score, self.max_batch, self._on_start = score, max_batch, on_start
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.batch_sizes: Counter = Counter()
        self.busy_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="metaselector-scorer", daemon=True)
        self._thread.start()

    def submit(self, item) -> Future:
        future: Future = Future()
        try:
            self._queue.put_nowait((item, future))
        except queue.Full:
            raise QueueFull from None
        return future

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        if self._on_start is not None:
            self._on_start()
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    waiting = self._queue.get_nowait()
                except queue.Empty:
                    break
                if waiting is _STOP:
                    stopping = True
                    break
                batch.append(waiting)
            self._score(batch)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _score(self, batch: list) -> None:
        # callers that have gone are skipped; the rest can no longer be cancelled
        batch = [(item, future) for item, future in batch if future.set_running_or_notify_cancel()]
        if not batch:
            return
        start = time.perf_counter()
        self.batch_sizes[len(batch)] += 1
        try:
            results = self.score([item for item, _ in batch])
        except Exception as err:  # handed to the waiting requests
            self.busy_seconds += time.perf_counter() - start
            if len(batch) > 1 and isinstance(err, MetaSelectorError):
                self.batch_sizes[len(batch)] -= 1  # one bad request must not fail the others
                for one in batch:
                    self._score_running([one])
                return
            for _, future in batch:
                future.set_exception(err)
            return
        self.busy_seconds += time.perf_counter() - start
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)

    def _score_running(self, batch: list) -> None:
        """Score requests already marked running (one of a failed batch, scored alone)."""
        try:
            results = self.score([item for item, _ in batch])
        except Exception as err:
            for _, future in batch:
                future.set_exception(err)
            return
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)

    def close(self, deadline_seconds: float = 20.0) -> None:
        """Finish what is queued within `deadline_seconds`, then stop the worker; requests still
        queued at the deadline are failed with Closing."""
        end = time.monotonic() + deadline_seconds
        while True:
            try:
                self._queue.put(_STOP, timeout=max(0.0, min(0.5, end - time.monotonic())))
                break
            except queue.Full:
                if time.monotonic() >= end:
                    self._fail_queued()
        self._thread.join(timeout=max(0.0, end - time.monotonic()))
        if self._thread.is_alive():
            self._fail_queued()
            try:
                self._queue.put_nowait(_STOP)  # the marker may have been drained with the rest
            except queue.Full:
                pass
            self._thread.join(timeout=5.0)

    def _fail_queued(self) -> None:
        while True:
            try:
                waiting = self._queue.get_nowait()
            except queue.Empty:
                return
            if waiting is not _STOP and waiting[1].set_running_or_notify_cancel():
                waiting[1].set_exception(Closing("the server is shutting down"))

