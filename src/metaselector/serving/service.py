"""The state behind the routes: the model (switched by reload between batches), its scoring
worker, the history store, counters and metrics."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter

import torch
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from ..errors import MetaSelectorError
from .batcher import Batcher, Closing, QueueFull
from .metrics import Metrics
from .schemas import MAX_ID_LENGTH, RequestModels, declared_columns, first_error, labelled
from .scoring_process import InThreadScorer, ScoringUnavailable, columns, model_columns, model_name
from .settings import ServeSettings
from .store import HistoryStore, StoreUnavailable

log = logging.getLogger("metaselector.serve")


def _busy(detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "1"})


class Service:
    """The state behind the routes: the model, its scoring worker, the store, the counters."""

    def __init__(self, model, store: HistoryStore, settings: ServeSettings, scoring_threads: int | None = None,
                 scorer=None) -> None:
        """`scorer`: where batches are scored (scoring_process.ScoringProcess); None: on the
        batching thread, with `scoring_threads` torch threads (None: torch's count)."""
        self.store, self.settings = store, settings
        self.metrics = Metrics()
        self.stats: Counter = Counter()
        self.timings: Counter = Counter()
        self.scorer = scorer or InThreadScorer(model, scoring_threads or torch.get_num_threads())
        self._use(model)
        self.batcher = Batcher(self._score_batch, settings.max_batch, settings.queue_size,
                               on_start=getattr(self.scorer, "on_start", None))
        self.parsing_bytes = 0  # of bodies being read and parsed now (changed on the event loop's thread only)

    def _use(self, model) -> None:
        """Read requests for `model` (its columns, label rule); the scorer switches to it itself."""
        self.model_id = model_name(model)
        self.schemas = RequestModels(declared_columns(model.encoder_), self.settings.max_candidates,
                                     self.settings.max_events)
        self.threshold = model.encoder_.label_rule.threshold
        self.model = model

    def _score_batch(self, requests: list[tuple[dict | None, dict]]) -> list:
        start = time.perf_counter()
        scores, stages, name = self.scorer.score(requests)
        self.timings["encode_adapt_score_seconds"] += time.perf_counter() - start
        self.metrics.batch.observe(len(requests))
        self.metrics.queue.set(self.batcher.waiting)
        for stage, seconds in stages.items():
            self.metrics.stage.labels(stage).observe(seconds)
        return [(score, name) for score in scores]

    async def reload(self, path: str, classes: dict | None = None) -> dict:
        """Load and check the model at `path` off the event loop, then switch to it; a damaged or
        incompatible model is refused and the current one keeps serving."""
        try:
            model = await asyncio.to_thread(self.scorer.read, path, classes or {})
        except MetaSelectorError as err:
            raise HTTPException(422, f"model not loaded, still serving {self.model_id}: {err}") from None
        if declared_columns(model.encoder_) != declared_columns(self.model.encoder_):
            raise HTTPException(409, f"model not loaded, still serving {self.model_id}: its events declare other "
                                     "columns than the stored events hold")
        try:
            await asyncio.to_thread(self.scorer.use, path, model)
        except MetaSelectorError as err:  # e.g. a base model class the scoring process cannot build
            raise HTTPException(422, f"model not loaded, still serving {self.model_id}: {err}") from None
        except ScoringUnavailable as err:
            raise HTTPException(503, f"model not loaded, still serving {self.model_id}: {err}") from None
        self._use(model)
        self.stats["reloads"] += 1
        log.warning("serving %s (model %s)", path, self.model_id)
        return {"model": self.model_id, "path": str(path)}

    async def parse(self, request: Request, schema):
        """Admission first (a full queue answers 503 before the body is read), then the body,
        validated in a worker thread."""
        if self.batcher.waiting >= self.settings.queue_size:
            self.stats["rejected_queue_full"] += 1
            raise Refused(_busy("busy: the queue is full"))
        length = request.headers.get("content-length", "")
        size = int(length) if length.isdigit() else self.settings.max_body_bytes
        if self.parsing_bytes and self.parsing_bytes + size > self.settings.max_parsing_bytes:
            self.stats["rejected_parsing_full"] += 1
            raise Refused(_busy("busy: too many request bytes being read"))
        self.parsing_bytes += size
        try:
            try:
                body = await request.body()
            except ClientDisconnect:  # the client has gone: nobody reads an answer, nothing to log
                self.stats["client_disconnected"] += 1
                raise Refused(Response(status_code=400)) from None
            start = time.perf_counter()
            parsed = await asyncio.to_thread(schema.model_validate_json, body)
        except ValidationError as err:
            self.stats["invalid_requests"] += 1
            raise HTTPException(*first_error(err.errors())) from None
        finally:
            self.parsing_bytes -= size
        self.timings["parse_seconds"] += time.perf_counter() - start
        self.metrics.stage.labels("parse").observe(time.perf_counter() - start)
        return parsed

    async def _history(self, request, user: str) -> dict | None:
        limit = self.settings.history_length
        if request.history is not None:
            self._check_labelled(request.history, "history")
            rows = labelled(request.history[-limit:], self.threshold)
        else:
            rows = labelled(await self._store(self.store.recent, user, limit), self.threshold)
        return columns(rows, user) if rows else None

    @staticmethod
    def _check_labelled(events: list, field: str) -> None:
        for index, event in enumerate(events):
            if event.rating is None and event.label is None:
                raise HTTPException(422, f"{field}[{index}]: needs 'rating' or 'label'")

    async def _store(self, call, *args):
        try:
            return await asyncio.to_thread(call, *args)
        except StoreUnavailable as err:
            self.stats["store_unavailable"] += 1
            log.warning("%s", err)
            raise Refused(_busy("the history store is unavailable; try again")) from None

    async def score(self, request):
        user = str(request.user)
        history = await self._history(request, user)
        candidates = model_columns(request.candidates, user)
        try:
            future = self.batcher.submit((history, candidates))
            self.metrics.queue.set(self.batcher.waiting)
        except QueueFull:
            self.stats["rejected_queue_full"] += 1
            return _busy("busy: the queue is full")
        try:
            result, scored_by = await asyncio.wrap_future(future)
        except MetaSelectorError as err:
            raise HTTPException(422, str(err)) from None
        except Closing:
            return _busy("the server is shutting down")
        except ScoringUnavailable as err:
            log.warning("%s", err)
            return _busy("the scoring process stopped; try again")
        self.stats["scored_requests"] += 1
        self.stats["unknown_users"] += result.unknown["users"] > 0
        self.stats["unknown_items"] += result.unknown["items"]
        # a JSONResponse of plain lists: FastAPI's encoder would walk every float of them again
        return JSONResponse({"scores": result.probabilities.tolist(), "weights": result.weights.tolist(),
                             "adapted": bool(result.adapted), "history_events": int(result.history_events),
                             "model": scored_by})

    async def record(self, request, key: str | None) -> dict:
        self._check_labelled(request.events, "events")
        latest = time.time() + self.settings.max_future_seconds
        for index, event in enumerate(request.events):
            if event.timestamp > latest:  # future-dated events would evict the user's real ones
                raise HTTPException(422, f"events.{index}.timestamp: more than {self.settings.max_future_seconds} "
                                         "s ahead of the server's clock")
            if event.timestamp < 0:
                raise HTTPException(422, f"events.{index}.timestamp: before 1970")
        if key is not None and not 1 <= len(key) <= MAX_ID_LENGTH:
            raise HTTPException(422, f"Idempotency-Key: 1 to {MAX_ID_LENGTH} characters")
        rows = [e.model_dump(exclude_none=True) for e in request.events]
        start, evicted = time.perf_counter(), getattr(self.store, "evicted", 0)
        try:
            stored, kept = await self._store(self.store.append, str(request.user), rows, key)
        except Refused:
            self.metrics.store_writes.labels("unavailable").inc()
            raise
        self.metrics.store_writes.labels("ok").inc()
        self.metrics.store_latency.observe(time.perf_counter() - start)
        self.metrics.evicted.inc(max(0, getattr(self.store, "evicted", 0) - evicted))
        self.stats["stored_events"] += stored
        return {"user": str(request.user), "stored": stored, "history_events": kept}

    async def health(self) -> JSONResponse:
        alive = self.batcher.alive and self.scorer.alive
        try:
            await asyncio.wait_for(asyncio.to_thread(self.store.check), timeout=5)
            store = "ok"
        except (StoreUnavailable, TimeoutError) as err:
            store = f"unavailable ({err})"
        sizes = {str(k): v for k, v in sorted(self.batcher.batch_sizes.items()) if v}
        ok = alive and store == "ok"
        # worker_pid: which worker process answered (serve --workers N); never user data
        body = {"status": "ok" if ok else "unavailable", "scoring": "alive" if alive else "stopped",
                "scoring_in": self.scorer.kind, "scoring_pid": self.scorer.pid,
                "scoring_restarts": self.scorer.restarts, "worker_pid": os.getpid(),
                "torch_threads": {"scoring": self.scorer.threads, "event_loop": torch.get_num_threads()},
                "store": store, "model": self.model_id, **self.stats, "queue": self.batcher.waiting,
                "evicted_events": getattr(self.store, "evicted", 0),
                "batch_sizes": sizes, "busy_seconds": self.batcher.busy_seconds, **self.timings}
        return JSONResponse(body, status_code=200 if ok else 503)

    def close(self) -> None:
        self.batcher.close()  # in-flight requests have been answered; finish what is queued, with a deadline
        self.scorer.close()
        self.store.close()


class Refused(Exception):
    """Answer the request with this response (503s raised from inside the service)."""

    def __init__(self, response: JSONResponse) -> None:
        self.response = response


