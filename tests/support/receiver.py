"""A real receiver (`syncd serve`'s app over an archive store) on an ephemeral loopback port, with
faults a test can switch on and off:

    async with running_receiver(tmp_path) as r:
        await r.faults.status(503, retry_after=2)   # every request answers 503 + Retry-After
        await r.faults.slow(5)                      # every request answers after 5 s
        await r.faults.stop()                       # connections refused (socket closed)
        await r.faults.drop()                       # request applied, connection dropped mid-answer
        await r.faults.truncated()                  # request applied, 200 with a cut JSON body
        await r.faults.html()                       # 200 with an HTML page, request not applied
        await r.faults.late(5)                      # request applied, answered after 5 s
        await r.faults.random(random.Random(1))     # any of the above (or ok) per request
        await r.faults.ok()                         # normal again, on the same port
        r.create_count                              # shares created successfully so far
        r.websockets                                # WebSocket sessions opened so far
        r.answers                                   # (method, path, status) of every answer
        r.faults.injected                           # Counter: faulty answers given, by fault
        r.faults.unanswered                         # Counter: applied but answer lost, by call
        r.repeated_batches                          # syncs whose batch key was applied already
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import random as random_module
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from syncd.archive import ArchiveStore, open_archive
from syncd.listen import listening_socket
from syncd.model import Share
from syncd.receiver.app import build_app
from syncd.receiver.body_limit import DEFAULT_MAX_BODY
from syncd.transports.a2a import A2aTransport
from syncd.transports.base import Transport
from syncd.transports.capnweb import CapnwebBatchTransport, CapnwebWsTransport
from syncd.transports.http import HttpTransport
from tests.support.stores import TEST_POOL_SIZE

# A client of each remote transport for a receiver's url (no key, loopback).
CLIENTS: dict[str, Callable[[str], Transport]] = {
    "http": lambda url: HttpTransport(url, timeout=10, verify=True),
    "capnweb-batch": lambda url: CapnwebBatchTransport(url, key=None, timeout=10, verify=True),
    "capnweb-ws": lambda url: CapnwebWsTransport(url, key=None, timeout=10, verify=True),
    "a2a": lambda url: A2aTransport(url, timeout=10),
}


class _Server(uvicorn.Server):
    def capture_signals(self) -> contextlib.AbstractContextManager[None]:
        # Signals belong to the test runner, not to a server it starts and stops.
        return contextlib.nullcontext()


HTML_PAGE = b"<html><body><h1>Service temporarily unavailable</h1></body></html>"
# Per-request faults of `random` mode, and how often each is chosen.
RANDOM_FAULTS: dict[str, float] = {
    "ok": 0.45, "503": 0.1, "429": 0.1, "late": 0.05, "drop": 0.1, "html": 0.1, "truncated": 0.1,
}  # fmt: skip


class Faults:
    """The receiver's current behaviour; `mode` is "ok", "status", "slow", "stopped", "drop",
    "truncated", "html", "late" or "random"."""

    def __init__(self, receiver: Receiver) -> None:
        self._receiver = receiver
        self.mode = "ok"
        self.status_code = 200
        self.retry_after: float | None = None
        self.delay = 0.0
        self._rng = random_module.Random(0)
        self.injected: Counter[str] = Counter()
        self.unanswered: Counter[str] = Counter()

    async def ok(self) -> None:
        await self._receiver._listen()
        self.mode = "ok"

    async def status(self, code: int, retry_after: float | None = None) -> None:
        await self._receiver._listen()
        self.mode, self.status_code, self.retry_after = "status", code, retry_after

    async def slow(self, seconds: float) -> None:
        await self._receiver._listen()
        self.mode, self.delay = "slow", seconds

    async def stop(self) -> None:
        """Close the listening socket (and open connections): connections are refused."""
        self.mode = "stopped"
        await self._receiver._close()

    async def drop(self) -> None:
        """Apply each request, then drop the connection halfway through the answer."""
        await self._switch("drop")

    async def truncated(self) -> None:
        """Apply each request, then answer 200 with the JSON body cut in half."""
        await self._switch("truncated")

    async def html(self) -> None:
        """Answer 200 with an HTML page (a proxy's, say) without applying anything."""
        await self._switch("html")

    async def late(self, seconds: float) -> None:
        """Apply each request, then answer only after `seconds`."""
        await self._switch("late")
        self.delay = seconds

    async def random(self, rng: random_module.Random, delay: float = 2.0) -> None:
        """Each request meets one of RANDOM_FAULTS (ok included), drawn from `rng`; `late`
        answers come after `delay` seconds."""
        await self._switch("random")
        self._rng, self.delay = rng, delay

    async def _switch(self, mode: str) -> None:
        await self._receiver._listen()
        self.mode = mode

    def draw(self) -> str:
        """The fault this request meets (for modes that vary per request)."""
        if self.mode != "random":
            return self.mode
        names = list(RANDOM_FAULTS)
        return self._rng.choices(names, weights=[RANDOM_FAULTS[n] for n in names])[0]


class Receiver:
    def __init__(
        self, store: ArchiveStore, app: ASGIApp, port: int, max_body: int = DEFAULT_MAX_BODY
    ) -> None:
        self.store = store
        self.port = port
        self.max_body = max_body
        self.url = ""
        self.faults = Faults(self)
        self.create_count = 0
        self.websockets = 0  # WebSocket sessions opened (a reconnect makes a new one)
        self.answers: list[tuple[str, str, int]] = []
        self.repeated_batches = 0
        self._applied_batches: set[tuple[str, str]] = set()
        self._app = app
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self._count_creates()
        self._count_repeated_batches()

    def _count_creates(self) -> None:
        # Every route makes its shares with create_share.
        create = self.store.create_share

        async def counted(*args: Any, **kwargs: Any) -> Share:
            share = await create(*args, **kwargs)
            self.create_count += 1
            return share

        self.store.create_share = counted  # type: ignore[method-assign]

    def _count_repeated_batches(self) -> None:
        """A batch whose key was applied before, arriving again: a duplicate the sender made
        (the store itself applies it once)."""
        sync = self.store.sync

        async def counted(
            share_id: str, secret: str, data: list[dict[str, Any]], dedup_key: str | None = None
        ) -> int:
            if dedup_key is not None and (share_id, dedup_key) in self._applied_batches:
                self.repeated_batches += 1
            count = await sync(share_id, secret, data, dedup_key)
            if dedup_key is not None:
                self._applied_batches.add((share_id, dedup_key))
            return count

        self.store.sync = counted  # type: ignore[method-assign]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            send = self._recording(scope, send)
        elif scope["type"] == "websocket":
            self.websockets += 1
        faults = self.faults
        fault = faults.draw()
        if scope["type"] == "websocket" and fault not in ("ok", "slow"):
            await send({"type": "websocket.close", "code": 1013})
            return
        if fault in ("status", "503", "429"):
            code = {"503": 503, "429": 429}.get(fault, faults.status_code)
            retry_after = {"503": None, "429": 1.0}.get(fault, faults.retry_after)
            headers = {} if retry_after is None else {"retry-after": f"{retry_after:g}"}
            faults.injected[str(code)] += 1
            response = JSONResponse({"error": f"injected {code}"}, code, headers)
            await response(scope, receive, send)
            return
        if fault == "html":
            faults.injected["html"] += 1
            await send_html(send)
            return
        if fault in ("drop", "truncated", "late"):
            await self._apply_then_break(fault, scope, receive, send)
            return
        if faults.mode == "slow":
            await asyncio.sleep(faults.delay)
        await self._app(scope, receive, send)

    async def _apply_then_break(
        self, fault: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Let the app handle the request, then lose its answer the way `fault` says."""
        start: Message = {}
        body = b""

        async def keep(message: Message) -> None:
            nonlocal start, body
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                body += message.get("body", b"")

        await self._app(scope, receive, keep)
        self.faults.injected[fault] += 1
        if start.get("status") == 200 and scope["method"] == "POST":
            self.faults.unanswered["create" if scope["path"] == "/api/share" else "sync"] += 1
        if fault == "late":
            await asyncio.sleep(self.faults.delay)
            await send(start)
            await send({"type": "http.response.body", "body": body})
        elif fault == "truncated":
            cut = body[: len(body) // 2]
            await send(_with_length(start, len(cut)))
            await send({"type": "http.response.body", "body": cut})
        else:
            # The declared length is never reached: the client sees the connection drop.
            await send(_with_length(start, len(body)))
            await send({"type": "http.response.body", "body": body[: len(body) // 2],
                        "more_body": True})  # fmt: skip

    def _recording(self, scope: Scope, send: Send) -> Send:
        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.answers.append((scope["method"], scope["path"], message["status"]))
            await send(message)

        return record

    async def _listen(self) -> None:
        if self._server is not None:
            return
        sock = listening_socket("127.0.0.1", self.port)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=0.2,
            ws_max_size=self.max_body,  # as `syncd serve`: one limit, body or message
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                sock.close()
                task.result()
                raise RuntimeError("receiver did not start")
            await asyncio.sleep(0.01)
        self._server, self._task, self._socket = server, task, sock

    async def _close(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await self._task
        if self._socket is not None:
            self._socket.close()
        self._server = self._task = self._socket = None


async def send_html(send: Send) -> None:
    headers = [(b"content-type", b"text/html"), (b"content-length", str(len(HTML_PAGE)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": HTML_PAGE})


def _with_length(start: Message, length: int) -> Message:
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
    return {**start, "headers": [*headers, (b"content-length", str(length).encode())]}


@contextlib.asynccontextmanager
async def running_receiver(
    tmp_path: Path,
    key: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    store: str | None = None,
) -> AsyncIterator[Receiver]:
    """A receiver on 127.0.0.1 (ephemeral port) over the archive `store` names (the
    `store_url` fixture: SQLite or PostgreSQL), by default a fresh SQLite one in `tmp_path`."""
    opened = await open_archive(store or tmp_path / "receiver-archive.db", pool_size=TEST_POOL_SIZE)
    try:
        # Share urls take the request's host, which is this receiver's address.
        app = build_app(opened, key=key, max_body=max_body)
        receiver = Receiver(opened, app, port=0, max_body=max_body)
        await receiver._listen()
        try:
            yield receiver
        finally:
            await receiver._close()
    finally:
        await opened.close()


@contextlib.contextmanager
def receiver_in_thread(
    tmp_path: Path, key: str | None = None, max_body: int = DEFAULT_MAX_BODY
) -> Iterator[Receiver]:
    """`running_receiver` on its own event loop in a thread, for tests that run several event
    loops of their own (one per hypothesis example). Read its archive from another loop by
    opening the file (`tmp_path / "receiver-archive.db"`), not through `store`."""
    ready: queue.Queue[Receiver | BaseException] = queue.Queue()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        try:
            async with running_receiver(tmp_path, key=key, max_body=max_body) as receiver:
                ready.put(receiver)
                await stop.wait()
        except BaseException as error:
            ready.put(error)
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    started = ready.get(timeout=30)
    if isinstance(started, BaseException):
        raise started
    try:
        yield started
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()
