"""The HTTP API (FastAPI): score candidates for a user, record events, read a user's history.

    POST /v1/score     {"user", "candidates": [{"item", "timestamp"}], "history"?: [{"item", "rating", "timestamp"}]}
    POST /v1/events    {"user", "events": [{"item", "rating", "timestamp"}]}
    GET  /v1/users/{user}/history
    GET  /v1/health    counters: requests, batch sizes, unknown users and items, queue, time per stage
    GET  /v1/model     the saved model's manifest
Ids are the data's raw ids, as JSON strings or numbers; timestamps are Unix seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from contextlib import asynccontextmanager

import pandas as pd
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from ..data.sources import TIMESTAMP_RANGE
from ..errors import MetaSelectorError
from .batcher import Batcher, QueueFull
from .settings import ServeSettings
from .store import HistoryStore

RawId = StrictStr | StrictInt
Timestamp = Field(ge=TIMESTAMP_RANGE[0], le=TIMESTAMP_RANGE[1])


class Candidate(BaseModel):
    model_config = ConfigDict(extra="allow")  # a custom dataset's declared per-event columns
    item: RawId
    timestamp: StrictInt = Timestamp


class Event(BaseModel):
    model_config = ConfigDict(extra="allow")
    item: RawId
    timestamp: StrictInt = Timestamp
    rating: StrictFloat | StrictInt | None = None
    label: StrictInt | None = Field(default=None, ge=0, le=1)


class ScoreRequest(BaseModel):
    user: RawId
    candidates: list[Candidate] = Field(min_length=1)
    history: list[Event] | None = None


class EventsRequest(BaseModel):
    user: RawId
    events: list[Event] = Field(min_length=1)


def _frame(user: str, rows: list[BaseModel]) -> pd.DataFrame:
    return pd.DataFrame([{"user": user, **row.model_dump(exclude_none=True)} for row in rows])


def _check_labelled(events: list[Event], field: str) -> None:
    for index, event in enumerate(events):
        if event.rating is None and event.label is None:
            raise HTTPException(422, f"{field}[{index}]: needs 'rating' or 'label'")


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 before it is parsed."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _too_large(send, self.limit)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLarge:
            await _too_large(send, self.limit)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send, limit: int) -> None:
    body = f'{{"detail": "request body over {limit} bytes"}}'.encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Service:
    """The state behind the routes: the model, its scoring worker, the store, the counters."""

    def __init__(self, model, store: HistoryStore, settings: ServeSettings) -> None:
        self.model, self.store, self.settings = model, store, settings
        self.stats: Counter = Counter()
        self.timings: Counter = Counter()
        manifest = getattr(model, "manifest_", None)
        self.model_id = manifest["files"]["weights.safetensors"][:12] if manifest else "in-memory"
        self.batcher = Batcher(self._score_batch, settings.max_batch, settings.queue_size)

    def _score_batch(self, requests: list[tuple[pd.DataFrame | None, pd.DataFrame]]) -> list:
        start = time.perf_counter()
        scores = self.model.score_users(requests)
        self.timings["encode_adapt_score_seconds"] += time.perf_counter() - start
        return scores

    async def _history(self, request: ScoreRequest, user: str) -> pd.DataFrame | None:
        limit = self.settings.history_length
        if request.history is not None:
            if len(request.history) > self.settings.max_events:
                raise HTTPException(413, f"history: {len(request.history)} events over the limit of "
                                         f"{self.settings.max_events}")
            _check_labelled(request.history, "history")
            return _frame(user, request.history[-limit:]) if request.history else None
        stored = await asyncio.to_thread(self.store.recent, user, limit)
        return pd.DataFrame([{"user": user, **e} for e in stored]) if stored else None

    async def score(self, request: ScoreRequest):
        start = time.perf_counter()
        if len(request.candidates) > self.settings.max_candidates:
            raise HTTPException(413, f"candidates: {len(request.candidates)} over the limit of "
                                     f"{self.settings.max_candidates}")
        user = str(request.user)
        history = await self._history(request, user)
        candidates = _frame(user, request.candidates)
        self.timings["parse_seconds"] += time.perf_counter() - start
        try:
            future = self.batcher.submit((history, candidates))
        except QueueFull:
            self.stats["rejected_queue_full"] += 1
            return JSONResponse({"detail": "busy: the queue is full"}, status_code=503, headers={"Retry-After": "1"})
        try:
            result = await asyncio.wrap_future(future)
        except MetaSelectorError as err:
            raise HTTPException(422, str(err)) from None
        self.stats["scored_requests"] += 1
        self.stats["unknown_users"] += result.unknown["users"] > 0
        self.stats["unknown_items"] += result.unknown["items"]
        return {"scores": result.probabilities.tolist(), "weights": result.weights.tolist(),
                "adapted": result.adapted, "history_events": result.history_events, "model": self.model_id}

    async def record(self, request: EventsRequest) -> dict:
        if len(request.events) > self.settings.max_events:
            raise HTTPException(413, f"events: {len(request.events)} over the limit of {self.settings.max_events}")
        _check_labelled(request.events, "events")
        rows = [e.model_dump(exclude_none=True) for e in request.events]
        kept = await asyncio.to_thread(self.store.append, str(request.user), rows)
        self.stats["stored_events"] += len(rows)
        return {"user": str(request.user), "stored": len(rows), "history_events": kept}

    def health(self) -> dict:
        sizes = {str(k): v for k, v in sorted(self.batcher.batch_sizes.items()) if v}
        return {"status": "ok", "model": self.model_id, **self.stats, "queue": self.batcher.waiting,
                "batch_sizes": sizes, "busy_seconds": self.batcher.busy_seconds, **self.timings}

    def close(self) -> None:
        self.batcher.close()  # in-flight requests have been answered; finish anything queued
        self.store.close()


def create_app(model, store: HistoryStore, settings: ServeSettings) -> FastAPI:
    """The service around a loaded MetaSelector; the store is closed when the app shuts down."""
    service = Service(model, store, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    app = FastAPI(title="metaselector", version="1", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        service.stats["invalid_requests"] += 1
        return JSONResponse({"detail": f"{where}: {first['msg']}"}, status_code=422)

    @app.post("/v1/score")
    async def score(request: ScoreRequest):
        return await service.score(request)

    @app.post("/v1/events")
    async def events(request: EventsRequest) -> dict:
        return await service.record(request)

    @app.get("/v1/users/{user}/history")
    async def history(user: str) -> dict:
        return {"user": user, "events": await asyncio.to_thread(store.recent, user, settings.history_length)}

    @app.get("/v1/health")
    async def health() -> dict:
        return service.health()

    @app.get("/v1/model")
    async def manifest() -> dict:
        return getattr(model, "manifest_", {"model": service.model_id})

    return app
