"""Transport `capnweb-ws`: Cap'n Web over one long-lived WebSocket per daemon.

Calls from concurrent deliveries share the socket; import ids grow for its life. Every
answered call is released at once (`["release", id, 1]`) so the receiver holds no result it
no longer needs. A session is broken by an `abort`, a close, a failed ping (silence past
`timeout`) or a call unanswered within `timeout`: every call in flight then raises
RetryableError (unacknowledged, so the delivery loop sends it again) and the next call opens a
fresh session. Nothing reconnects in the background. Redirects are never followed (websockets
would follow them, key header included): a 3xx answer to the upgrade is a refusal. A receiver
that closes the socket with 1009 (message too big) refuses the large message it was sent:
that call cannot be sent (UnsendableError, naming the receiver's limit), the others are
retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from typing import Any, ClassVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from syncd import __version__

from ...redact import scrub
from ...wire.capnweb.codec import CodecError, JsError, dumps
from ...wire.capnweb.protocol import PATH, Call, aborted, frame_calls, parse_answer, release
from ...wire.keys import KEY_HEADER
from ...wire.text import excerpt
from ..base import RetryableError, UnsendableError
from ..httpclient import MAX_ANSWER
from ..outcome import LARGE_BODY, refusal
from ..tls import verify_setting
from .share import CapnwebTransport

PING_INTERVAL = 20.0
MESSAGE_TOO_BIG = 1009  # the WebSocket close code of a receiver refusing a message's size


class _Connect(connect):
    """websockets' connect, without following redirects: the answer reaches `refusal` as
    it is, so the key never travels to the address a receiver names."""

    def process_redirect(self, exc: Exception) -> Exception:
        return exc


class CapnwebWsTransport(CapnwebTransport):
    name: ClassVar[str] = "capnweb-ws"

    def __init__(
        self,
        base_url: str,
        *,
        key: str | None,
        timeout: float,
        verify: bool | str | Path,
        max_answer: int = MAX_ANSWER,
    ) -> None:
        base = base_url.rstrip("/")
        if base.startswith("https://"):
            base = "wss://" + base.removeprefix("https://")
        elif base.startswith("http://"):
            base = "ws://" + base.removeprefix("http://")
        self.url = base + PATH
        self._key = key
        self._timeout = timeout
        self._verify = verify_setting(verify)
        self._max_answer = max_answer
        self._session: _Session | None = None
        self._opening = asyncio.Lock()
        self.sessions_opened = 0

    async def round_trip(self, calls: list[Call], *, secret: str | None = None) -> list[Any]:
        # Break messages never hold an argument, so there is no secret to scrub here.
        session = await self._open()
        return await session.round_trip(calls)

    async def _open(self) -> _Session:
        async with self._opening:
            if self._session is not None and self._session.broken is None:
                return self._session
            what = f"WebSocket {PATH}"
            headers = {KEY_HEADER: self._key} if self._key is not None else {}
            try:
                socket = await _Connect(
                    self.url,
                    additional_headers=headers,
                    user_agent_header=f"syncd/{__version__}",
                    open_timeout=self._timeout,
                    ping_interval=min(PING_INTERVAL, self._timeout),
                    ping_timeout=self._timeout,
                    close_timeout=min(self._timeout, 5.0),
                    max_size=self._max_answer,
                    ssl=self._ssl(),
                )
            except InvalidStatus as exc:
                response = exc.response
                raise refusal(
                    f"{what}: upgrade",
                    response.status_code,
                    response.headers,
                    (response.body or b"").decode("utf-8", "replace"),
                    key=self._key,
                ) from None
            except (OSError, TimeoutError, WebSocketException) as exc:
                reason = scrub(f"{type(exc).__name__}: {exc}", [self._key])
                raise RetryableError(f"{what}: cannot connect: {reason}") from None
            self._session = _Session(socket, self._timeout)
            self.sessions_opened += 1
            return self._session

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.url.startswith("wss://"):
            return None
        if isinstance(self._verify, ssl.SSLContext):
            return self._verify
        context = ssl.create_default_context()
        if not self._verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close("transport closed")
            self._session = None


class _Session:
    """One WebSocket capnweb session: the calls in flight and the reader settling them."""

    def __init__(self, socket: ClientConnection, timeout: float) -> None:
        self._socket = socket
        self._timeout = timeout
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._sending = asyncio.Lock()
        self.broken: str | None = None
        self.too_big = False  # the receiver closed with MESSAGE_TOO_BIG
        self._closing: asyncio.Task[None] | None = None
        self._reader = asyncio.create_task(self._read())

    async def round_trip(self, calls: list[Call]) -> list[Any]:
        loop = asyncio.get_running_loop()
        async with self._sending:
            self._check()
            # Encode before taking ids: a value that cannot travel leaves the session intact.
            first = self._next_id
            texts = [dumps(message) for message in frame_calls(calls, first)]
            self._next_id += len(calls)
            futures = [loop.create_future() for _ in calls]
            for offset, future in enumerate(futures):
                self._pending[first + offset] = future
            try:
                for text in texts:
                    await self._socket.send(text)
            except ConnectionClosed as exc:
                self._closed_by(exc, "socket closed while sending")
        try:
            _, unanswered = await asyncio.wait(futures, timeout=self._timeout)
            if unanswered:
                self._break(f"no answer within {self._timeout:g} s")
        finally:  # a call abandoned by its caller (a deadline) leaves nothing behind
            for offset in range(len(calls)):
                self._pending.pop(first + offset, None)
        # A broken session has set RetryableError on every call it left unanswered. Each one is
        # retrieved: asyncio reports an exception never retrieved on stderr, in no log's form.
        errors = [error for future in futures if (error := future.exception()) is not None]
        largest = max(len(text) for text in texts)
        if self.too_big and largest > LARGE_BODY and errors:
            raise UnsendableError(
                f"WebSocket {PATH}: a message of {largest} characters is larger than the "
                f"receiver accepts: {self.broken}"
            )
        if errors:
            raise errors[0]
        results = [future.result() for future in futures]
        return [
            JsError("Error", str(value))
            if kind == "reject" and not isinstance(value, JsError)
            else value
            for kind, value in results
        ]

    def _check(self) -> None:
        if self.broken is not None:
            raise RetryableError(f"WebSocket {PATH}: session broken: {self.broken}")

    async def _read(self) -> None:
        try:
            async for text in self._socket:
                try:
                    answer = parse_answer(text)
                except CodecError as exc:
                    self._break(f"answer not understood: {exc}")
                    return
                if answer.kind == "abort":
                    self._break(f"receiver aborted the session: {aborted(answer.value)}")
                    return
                future = self._pending.pop(answer.import_id, None)  # type: ignore[arg-type]
                if future is not None and not future.done():
                    future.set_result((answer.kind, answer.value))
                async with self._sending:
                    await self._socket.send(dumps(release(answer.import_id)))  # type: ignore[arg-type]
            self._break(f"socket closed: {_closed_code(self._socket)}")
        except ConnectionClosed as exc:
            self._closed_by(exc, "socket closed")
        except Exception as exc:  # the session is over whatever broke the reader
            self._break(f"reader failed: {type(exc).__name__}: {exc}")

    def _closed_by(self, exc: ConnectionClosed, what: str) -> None:
        if exc.rcvd is not None and exc.rcvd.code == MESSAGE_TOO_BIG:
            self.too_big = True
        self._break(f"{what}: {_closed(exc)}")

    def _break(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason
        error = f"WebSocket {PATH}: session broken, call unacknowledged: {self.broken}"
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RetryableError(error))
        self._pending.clear()
        if asyncio.current_task() is not self._reader:
            self._reader.cancel()
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(
                self._socket.close(3000, "session broken")
            )

    async def close(self, reason: str) -> None:
        self._break(reason)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        with contextlib.suppress(Exception):
            await self._socket.close()


def _closed(exc: ConnectionClosed) -> str:
    frame = exc.rcvd or exc.sent
    return f"{frame.code} {excerpt(frame.reason)}" if frame else "no close frame"


def _closed_code(socket: ClientConnection) -> str:
    return f"{socket.close_code} {excerpt(socket.close_reason or '')}"
