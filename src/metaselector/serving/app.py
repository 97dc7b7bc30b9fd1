"""The HTTP API (FastAPI): score candidates for a user, record events, read a user's history.

    POST /v1/score     {"user", "candidates": [{"item", "timestamp"}], "history"?: [{"item", "rating", "timestamp"}]}
    POST /v1/events    {"user", "events": [{"item", "rating", "timestamp"}]}   (header Idempotency-Key: optional)
    GET  /v1/users/{user}/history       DELETE /v1/users/{user}/history   (the user's stored events)
    GET  /v1/health    liveness of the scoring thread and the store, and counters; 503 when either fails
    GET  /v1/model     the saved model's manifest          POST /v1/admin/reload {"model": PATH}
With API keys (auth.py), each route needs its scope: score, events, history or admin.
Ids are the data's raw ids, as JSON strings or numbers; timestamps are Unix seconds. A request is
admitted (queue space) before its body is read, and its body is parsed off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections import Counter
from contextlib import asynccontextmanager

import pandas as pd
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ..errors import MetaSelectorError
from .auth import KeyRing
from .batcher import Batcher, Closing, QueueFull
from .limits import BodyLimit
from .schemas import MAX_ID_LENGTH, RequestModels, declared_columns, first_error, is_utf8, labelled
from .settings import ServeSettings
from .store import HistoryStore, StoreUnavailable

log = logging.getLogger("metaselector.serve")


def _busy(detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "1"})


class Service:
    """The state behind the routes: the model, its scoring worker, the store, the counters."""

    def __init__(self, model, store: HistoryStore, settings: ServeSettings) -> None:
        self.store, self.settings = store, settings
        self.stats: Counter = Counter()
        self.timings: Counter = Counter()
        self._use(model)
        self.batcher = Batcher(self._score_batch, settings.max_batch, settings.queue_size)

    def _use(self, model) -> None:
        """Serve `model` from the next batch on (one assignment each: the scoring thread reads the
        model once per batch, so a batch is scored by one model, and its answers name it)."""
        manifest = getattr(model, "manifest_", None)
        self.model_id = manifest["files"]["weights.safetensors"][:12] if manifest else "in-memory"
        self.schemas = RequestModels(declared_columns(model.encoder_), self.settings.max_candidates,
                                     self.settings.max_events)
        self.threshold = model.encoder_.label_rule.threshold
        self.model = model

    def _score_batch(self, requests: list[tuple[pd.DataFrame | None, pd.DataFrame]]) -> list:
        start = time.perf_counter()
        model = self.model
        scores = model.score_users(requests)
        self.timings["encode_adapt_score_seconds"] += time.perf_counter() - start
        name = getattr(model, "manifest_", {}).get("files", {}).get("weights.safetensors", "in-memory")[:12]
        return [(score, name) for score in scores]

    async def reload(self, path: str, classes: dict | None = None) -> dict:
        """Load and check the model at `path` off the event loop, then switch to it; a damaged or
        incompatible model is refused and the current one keeps serving."""
        from ..estimator import MetaSelector

        try:
            model = await asyncio.to_thread(MetaSelector.load, path, model_classes=classes or {})
        except MetaSelectorError as err:
            raise HTTPException(422, f"model not loaded, still serving {self.model_id}: {err}") from None
        if declared_columns(model.encoder_) != declared_columns(self.model.encoder_):
            raise HTTPException(409, f"model not loaded, still serving {self.model_id}: its events declare other "
                                     "columns than the stored events hold")
        self._use(model)
        self.stats["reloads"] += 1
        log.warning("serving %s (model %s)", path, self.model_id)
        return {"model": self.model_id, "path": str(path)}

    async def parse(self, request: Request, schema):
        """Admission first (a full queue answers 503 before the body is read), then the body,
        validated in a worker thread."""
        if self.batcher.waiting >= self.settings.queue_size:
            self.stats["rejected_queue_full"] += 1
            raise _Refused(_busy("busy: the queue is full"))
        body = await request.body()
        start = time.perf_counter()
        try:
            parsed = await asyncio.to_thread(schema.model_validate_json, body)
        except ValidationError as err:
            self.stats["invalid_requests"] += 1
            raise HTTPException(*first_error(err.errors())) from None
        self.timings["parse_seconds"] += time.perf_counter() - start
        return parsed

    async def _history(self, request, user: str) -> pd.DataFrame | None:
        limit = self.settings.history_length
        if request.history is not None:
            self._check_labelled(request.history, "history")
            rows = labelled(request.history[-limit:], self.threshold)
        else:
            rows = labelled(await self._store(self.store.recent, user, limit), self.threshold)
        return pd.DataFrame([{**r, "user": user} for r in rows]) if rows else None

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
            raise _Refused(_busy("the history store is unavailable; try again")) from None

    async def score(self, request):
        user = str(request.user)
        history = await self._history(request, user)
        candidates = pd.DataFrame([{**c.model_dump(), "user": user} for c in request.candidates])
        try:
            future = self.batcher.submit((history, candidates))
        except QueueFull:
            self.stats["rejected_queue_full"] += 1
            return _busy("busy: the queue is full")
        try:
            result, scored_by = await asyncio.wrap_future(future)
        except MetaSelectorError as err:
            raise HTTPException(422, str(err)) from None
        except Closing:
            return _busy("the server is shutting down")
        self.stats["scored_requests"] += 1
        self.stats["unknown_users"] += result.unknown["users"] > 0
        self.stats["unknown_items"] += result.unknown["items"]
        return {"scores": result.probabilities.tolist(), "weights": result.weights.tolist(),
                "adapted": result.adapted, "history_events": result.history_events, "model": scored_by}

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
        stored, kept = await self._store(self.store.append, str(request.user), rows, key)
        self.stats["stored_events"] += stored
        return {"user": str(request.user), "stored": stored, "history_events": kept}

    async def health(self) -> JSONResponse:
        alive = self.batcher.alive
        try:
            await asyncio.wait_for(asyncio.to_thread(self.store.check), timeout=5)
            store = "ok"
        except (StoreUnavailable, TimeoutError) as err:
            store = f"unavailable ({err})"
        sizes = {str(k): v for k, v in sorted(self.batcher.batch_sizes.items()) if v}
        ok = alive and store == "ok"
        body = {"status": "ok" if ok else "unavailable", "scoring_thread": "alive" if alive else "stopped",
                "store": store, "model": self.model_id, **self.stats, "queue": self.batcher.waiting,
                "evicted_events": getattr(self.store, "evicted", 0),
                "batch_sizes": sizes, "busy_seconds": self.batcher.busy_seconds, **self.timings}
        return JSONResponse(body, status_code=200 if ok else 503)

    def close(self) -> None:
        self.batcher.close()  # in-flight requests have been answered; finish what is queued, with a deadline
        self.store.close()


class _Refused(Exception):
    def __init__(self, response: JSONResponse) -> None:
        self.response = response


def create_app(model, store: HistoryStore, settings: ServeSettings, keys: KeyRing | None = None,
               model_path: str | None = None, classes: dict | None = None) -> FastAPI:
    """The service around a loaded MetaSelector; the store is closed when the app shuts down.
    `keys`: API keys with scopes (None: every route open, for loopback use); `model_path`: what
    SIGHUP reloads."""
    service = Service(model, store, settings)
    app = FastAPI(title="metaselector", version="1", lifespan=_lifespan(service, model_path, classes))
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, read_seconds=settings.body_read_seconds)

    @app.exception_handler(_Refused)
    async def refused(request: Request, err: _Refused):
        return err.response

    _user_routes(app, service, _scopes(keys))
    _operator_routes(app, service, _scopes(keys), classes)
    return app


def _lifespan(service: Service, model_path: str | None, classes: dict | None):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if model_path is not None:  # SIGHUP: serve the model folder again (a new model written there)
            async def on_hangup() -> None:
                try:
                    await service.reload(model_path, classes)
                except HTTPException as err:
                    log.warning("SIGHUP: %s", err.detail)

            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(on_hangup()))
        yield
        service.close()

    return lifespan


def _scopes(keys: KeyRing | None):
    """scope(name) -> the route dependencies that require an API key with that scope."""
    def scope(name: str) -> list:
        async def check(request: Request) -> None:
            if keys is None:
                return
            granted = keys.scopes_of(request.headers.get("authorization"))
            if granted is None:
                raise HTTPException(401, "a valid API key is needed (Authorization: Bearer KEY)",
                                    headers={"WWW-Authenticate": "Bearer"})
            if name not in granted:
                raise HTTPException(403, f"this key lacks the '{name}' scope")
        return [Depends(check)]

    return scope


def _body_of(schema) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema.model_json_schema()}}}}


def _checked_user(user: str) -> str:
    if len(user) > MAX_ID_LENGTH or not is_utf8(user):
        raise HTTPException(422, f"user: at most {MAX_ID_LENGTH} characters of valid UTF-8")
    return user


def _user_routes(app: FastAPI, service: Service, scope) -> None:
    """Scoring, events, and a user's stored history (read, delete)."""
    history_length = service.settings.history_length

    @app.post("/v1/score", openapi_extra=_body_of(service.schemas.score), dependencies=scope("score"))
    async def score(request: Request):
        return await service.score(await service.parse(request, service.schemas.score))

    @app.post("/v1/events", openapi_extra=_body_of(service.schemas.events), dependencies=scope("events"))
    async def events(request: Request) -> dict:
        parsed = await service.parse(request, service.schemas.events)
        return await service.record(parsed, request.headers.get("idempotency-key"))

    @app.get("/v1/users/{user}/history", dependencies=scope("history"))
    async def history(user: str) -> dict:
        return {"user": user, "events": await service._store(service.store.recent, _checked_user(user),
                                                             history_length)}

    @app.delete("/v1/users/{user}/history", dependencies=scope("history"))
    async def forget(user: str) -> dict:
        """Delete the user's stored events durably; they are then scored un-adapted."""
        return {"user": user, "deleted": await service._store(service.store.delete, _checked_user(user))}


def _operator_routes(app: FastAPI, service: Service, scope, classes: dict | None) -> None:
    """Health (open), the model's manifest and reloading a model (admin)."""

    @app.get("/v1/health")
    async def health():
        return await service.health()

    @app.get("/v1/model", dependencies=scope("admin"))
    async def manifest() -> dict:
        return getattr(service.model, "manifest_", {"model": service.model_id})

    @app.post("/v1/admin/reload", dependencies=scope("admin"))
    async def reload(request: Request) -> dict:
        try:
            path = json.loads(await request.body())["model"]
            if not isinstance(path, str) or not path:
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise HTTPException(422, 'body: expected {"model": "PATH"}') from None
        return await service.reload(path, classes)
