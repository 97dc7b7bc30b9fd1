"""Request-body limits as ASGI middleware: a body over `limit` bytes is answered 413 before it
is parsed, and a body that does not arrive within `read_seconds` is answered 408, so a slow
client cannot hold a request open indefinitely."""

from __future__ import annotations

import asyncio


class BodyLimit:
    def __init__(self, app, limit: int, read_seconds: float = 10.0) -> None:
        self.app, self.limit, self.read_seconds = app, limit, read_seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _answer(send, 413, f"request body over {self.limit} bytes")
        received, complete = 0, False
        deadline = asyncio.get_running_loop().time() + self.read_seconds

        async def counted():
            nonlocal received, complete
            if complete:  # the body is in: later receives (a disconnect) wait as long as they need
                return await receive()
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(remaining, 0.001))
            except TimeoutError:
                raise _SlowBody from None
            received += len(message.get("body", b""))
            if received > self.limit:
                raise _BodyTooLarge
            complete = message.get("type") != "http.request" or not message.get("more_body", False)
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLarge:
            await _answer(send, 413, f"request body over {self.limit} bytes")
        except _SlowBody:
            await _answer(send, 408, f"request body not received within {self.read_seconds:g} s")


class _BodyTooLarge(Exception):
    pass


class _SlowBody(Exception):
    pass


async def _answer(send, status: int, detail: str) -> None:
    body = ('{"detail": "' + detail + '"}').encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
