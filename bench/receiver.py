"""The receiver under measurement: `syncd serve`'s app over a fresh ShareStore, in this process
on an ephemeral loopback port, with two instruments:

- `Traffic` (ASGI middleware): requests, WebSocket frames and bytes each way, whatever the
  transport;
- `Arrivals` (around `ShareStore.sync`, which every transport's route ends in): when each batch
  was stored and acknowledged, and which message/part versions it carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from syncd.archive.sqlite import SqliteArchive as ShareStore
from syncd.cli import GC_YOUNG_THRESHOLD
from syncd.config import Config
from syncd.listen import listening_socket
from syncd.receiver.app import build_app
from syncd.receiver.slow_clients import deadline_protocol

from .versions import content_hash


@dataclass
class Counts:
    requests: int = 0  # HTTP requests, WebSocket handshakes included
    frames_up: int = 0  # WebSocket messages client -> server
    frames_down: int = 0
    bytes_up: int = 0  # request line + headers + body, WebSocket payloads
    bytes_down: int = 0
    connections: int = 0  # distinct client (address, port) pairs: TCP connections opened


class Traffic:
    """Counts what crosses the wire, approximated at the ASGI layer (HTTP/1.1 framing of head
    and headers, body and WebSocket payload bytes; no TCP/IP or WebSocket frame headers)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.counts = Counts()
        self._clients: set[Any] = set()

    def reset(self) -> Counts:
        counts, self.counts = self.counts, Counts()
        self._clients = set()
        return counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        # Always the current counts: a WebSocket outlives a reset between workloads.
        self.counts.requests += 1
        client = tuple(scope.get("client") or ())
        if client not in self._clients:  # a kept-alive connection carries many requests
            self._clients.add(client)
            self.counts.connections += 1
        self.counts.bytes_up += len(scope["raw_path"] or b"") + 16 + _headers_size(scope["headers"])

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.counts.bytes_up += len(message.get("body", b""))
            elif message["type"] == "websocket.receive":
                self.counts.frames_up += 1
                self.counts.bytes_up += _payload_size(message)
            return message

        async def counted_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                self.counts.bytes_down += 16 + _headers_size(message.get("headers", []))
            elif kind == "http.response.body":
                self.counts.bytes_down += len(message.get("body", b""))
            elif kind == "websocket.send":
                self.counts.frames_down += 1
                self.counts.bytes_down += _payload_size(message)
            await send(message)

        await self.app(scope, counted_receive, counted_send)


def _headers_size(headers: Any) -> int:
    return sum(len(name) + len(value) + 4 for name, value in headers)


def _payload_size(message: Message) -> int:
    if message.get("bytes") is not None:
        return len(message["bytes"])
    return len((message.get("text") or "").encode())


@dataclass
class Arrivals:
    """Every acknowledged sync, and with `track_versions` each message/part version in it."""

    track_versions: bool = False
    batches: int = 0
    items: int = 0
    first: float | None = None
    last: float | None = None
    versions: list[tuple[str, str, str, float]] = field(default_factory=list)  # kind, id, hash, t
    sessions_first: dict[str, float] = field(default_factory=dict)  # session id -> first batch

    def reset(self, *, track_versions: bool) -> None:
        self.track_versions = track_versions
        self.batches = self.items = 0
        self.first = self.last = None
        self.versions = []
        self.sessions_first = {}

    def record(self, data: list[dict[str, Any]]) -> None:
        now = time.time()
        self.batches += 1
        self.items += len(data)
        self.first = now if self.first is None else self.first
        self.last = now
        if self.track_versions:
            for item in data:
                body = item["data"]
                if item.get("type") in ("message", "part"):
                    self.versions.append((item["type"], body["id"], content_hash(body), now))
                elif item.get("type") == "session":
                    self.sessions_first.setdefault(body["id"], now)


class _Server(uvicorn.Server):
    def capture_signals(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # signals belong to the benchmark


@dataclass
class Receiver:
    url: str
    store: ShareStore
    traffic: Traffic
    arrivals: Arrivals


@contextlib.asynccontextmanager
async def running_receiver(directory: Path) -> AsyncIterator[Receiver]:
    directory.mkdir(parents=True, exist_ok=True)
    store = await ShareStore.open(directory / "receiver.db")
    arrivals = Arrivals()
    store_sync = store.sync

    async def recorded_sync(
        share_id: str, secret: str, data: list[dict[str, Any]], **kw: Any
    ) -> int:
        count = await store_sync(share_id, secret, data, **kw)
        arrivals.record(data)
        return count

    store.sync = recorded_sync  # type: ignore[method-assign]
    traffic = Traffic(build_app(store))
    # The collector as `syncd serve` has it (syncd.cli sets it for every command): at Python's
    # default the receiver spent about 4 µs of CPU per item in it (bench.ingest --cpu).
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    sock = listening_socket("127.0.0.1", 0)
    defaults = {option.name: option.default for option in dataclasses.fields(Config)}
    protocol = deadline_protocol(
        cast(float, defaults["serve_header_timeout"]), cast(float, defaults["serve_body_timeout"])
    )
    server = _Server(
        uvicorn.Config(
            traffic,
            lifespan="off",
            log_level="warning",
            access_log=False,
            # `syncd serve`'s HTTP protocol, read deadlines included (not uvicorn's default).
            http=protocol,
            timeout_graceful_shutdown=1,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("receiver did not start")
            await asyncio.sleep(0.01)
        port = sock.getsockname()[1]
        yield Receiver(f"http://127.0.0.1:{port}", store, traffic, arrivals)
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await task
        sock.close()
        await store.close()
