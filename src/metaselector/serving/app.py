"""The HTTP API (FastAPI): score candidates for a user, record events, read a user's history.

    POST /v1/score     {"user", "candidates": [{"item", "timestamp"}], "history"?: [{"item", "rating", "timestamp"}]}
    POST /v1/events    {"user", "events": [{"item", "rating", "timestamp"}]}   (header Idempotency-Key: optional)
    GET  /v1/users/{user}/history       DELETE /v1/users/{user}/history   (the user's stored events)
    GET  /v1/health    liveness of the scorer and the store, and counters; 503 when either fails
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
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import Response

from .auth import KeyRing
from .limits import BodyLimit
from .schemas import MAX_ID_LENGTH, is_utf8
from .service import Refused, Service
from .settings import ServeSettings
from .store import HistoryStore

log = logging.getLogger("metaselector.serve")


def create_app(model, store: HistoryStore, settings: ServeSettings, keys: KeyRing | None = None,
               model_path: str | None = None, classes: dict | None = None,
               scoring_threads: int | None = None, scorer=None) -> FastAPI:
    """The service around a loaded MetaSelector; the store is closed when the app shuts down.
    `keys`: API keys with scopes (None: every route open, for loopback use); `model_path`: what
    SIGHUP reloads; `scorer`: where batches are scored (a ScoringProcess), else the batching
    thread with `scoring_threads` torch threads (None: torch's count)."""
    service = Service(model, store, settings, scoring_threads, scorer)
    app = FastAPI(title="metaselector", version="1", lifespan=_lifespan(service, model_path, classes))
    app.state.service = service
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, read_seconds=settings.body_read_seconds)
    app.add_middleware(Measured, metrics=service.metrics)

    @app.exception_handler(Refused)
    async def refused(request: Request, err: Refused):
        return err.response

    _user_routes(app, service, _scopes(keys))
    _operator_routes(app, service, _scopes(keys), classes)
    return app


class Measured:
    """ASGI middleware: requests by endpoint (the route's path template, never a user id) and
    status, and their latency. Plain ASGI rather than BaseHTTPMiddleware, which wraps the app in a
    task group and turns a client that went away into a logged traceback."""

    def __init__(self, app, metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def sent(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


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

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text format (open, like /v1/health: no user data)."""
        body, content_type = await asyncio.to_thread(service.metrics.render)
        return Response(body, media_type=content_type)

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
