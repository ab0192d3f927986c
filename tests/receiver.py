"""A real receiver (`syncd serve`'s app over a ShareStore) on an ephemeral loopback port, with
faults a test can switch on and off:

    async with running_receiver(tmp_path) as r:
        await r.faults.status(503, retry_after=2)   # every request answers 503 + Retry-After
        await r.faults.slow(5)                      # every request answers after 5 s
        await r.faults.stop()                       # connections refused (socket closed)
        await r.faults.ok()                         # normal again, on the same port
        r.create_count                              # shares created successfully so far
        r.answers                                   # (method, path, status) of every answer
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from syncd.serve.app import build_app, listening_socket
from syncd.serve.body_limit import DEFAULT_MAX_BODY
from syncd.serve.store import ShareStore
from syncd.transports.base import Share


class _Server(uvicorn.Server):
    def capture_signals(self) -> contextlib.AbstractContextManager[None]:
        # Signals belong to the test runner, not to a server it starts and stops.
        return contextlib.nullcontext()


class Faults:
    """The receiver's current behaviour; `mode` is "ok", "status", "slow" or "stopped"."""

    def __init__(self, receiver: Receiver) -> None:
        self._receiver = receiver
        self.mode = "ok"
        self.status_code = 200
        self.retry_after: float | None = None
        self.delay = 0.0

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


class Receiver:
    def __init__(self, store: ShareStore, app: ASGIApp, port: int) -> None:
        self.store = store
        self.port = port
        self.url = ""
        self.faults = Faults(self)
        self.create_count = 0
        self.answers: list[tuple[str, str, int]] = []
        self._app = app
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self._count_creates()

    def _count_creates(self) -> None:
        create_share = self.store.create_share

        async def counted(session_id: str, base_url: str) -> Share:
            share = await create_share(session_id, base_url)
            self.create_count += 1
            return share

        self.store.create_share = counted  # type: ignore[method-assign]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            send = self._recording(scope, send)
        faults = self.faults
        if scope["type"] == "http" and faults.mode == "status":
            headers = (
                {} if faults.retry_after is None else {"retry-after": f"{faults.retry_after:g}"}
            )
            response = JSONResponse(
                {"error": f"injected {faults.status_code}"}, faults.status_code, headers
            )
            await response(scope, receive, send)
            return
        if scope["type"] == "websocket" and faults.mode == "status":
            await send({"type": "websocket.close", "code": 1013})
            return
        if faults.mode == "slow":
            await asyncio.sleep(faults.delay)
        await self._app(scope, receive, send)

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


@contextlib.asynccontextmanager
async def running_receiver(
    tmp_path: Path, key: str | None = None, max_body: int = DEFAULT_MAX_BODY
) -> AsyncIterator[Receiver]:
    """A receiver on 127.0.0.1 (ephemeral port) over a fresh archive in `tmp_path`."""
    store = await ShareStore.open(tmp_path / "receiver-archive.db")
    try:
        # Share urls take the request's host, which is this receiver's address.
        receiver = Receiver(store, build_app(store, key=key, max_body=max_body), port=0)
        await receiver._listen()
        try:
            yield receiver
        finally:
            await receiver._close()
    finally:
        await store.close()
