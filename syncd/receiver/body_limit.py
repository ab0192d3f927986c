"""Refuses request bodies above a size limit with 413 before any route sees them."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_BODY = 32 * 1024 * 1024
# How much of a refused body is read (and dropped) before the 413: answered while the client
# still sends, the connection is reset under it and the client never reads the 413 that
# names the limit. Past this, the answer goes out anyway.
DRAIN_FACTOR = 4


class BodyLimit:
    """ASGI middleware: an HTTP body larger than `max_body` bytes gets 413, after the body
    has been read and dropped (up to DRAIN_FACTOR times the limit), so that the client reads
    the answer. A body sent without Content-Length is read (up to the limit) before the route
    runs, so a route never starts on a body it would have to abandon halfway."""

    def __init__(self, app: ASGIApp, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        too_large = declared is not None and declared.isdigit() and int(declared) > self.max_body
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            too_large = too_large or size > self.max_body
            if not too_large:
                chunks.append(chunk)
            if not message.get("more_body", False) or size > self.max_body * DRAIN_FACTOR:
                break
        if too_large:
            await self._refuse(send)
            return
        await self.app(scope, replaying(b"".join(chunks), receive), send)

    async def _refuse(self, send: Send) -> None:
        payload = json.dumps(
            {"error": f"request body larger than {self.max_body} bytes; send smaller batches"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app `body`, already read, then what `receive` gives."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
