"""Read deadlines for `syncd serve`'s connections, so that clients sending slowly cannot hold
the receiver's connections for ever (slowloris).

uvicorn bounds only the idle time between requests (`timeout_keep_alive`, reset by every byte
that arrives) and the number of concurrent connections (`limit_concurrency`, 503 beyond it).
Nothing bounds how long a request's head or body takes to arrive: a client sending one header
byte a second keeps its connection, and its place under the limit, indefinitely. An ASGI
middleware cannot help with the head, which is read before the app is called; so the deadlines
live in the HTTP protocol: uvicorn's httptools protocol (a C parser: h11, in Python, cost the
receiver several µs of CPU per item), subclassed, closes a connection whose request head has
not arrived `header_timeout` seconds after the connection opened (or the previous answer was
sent), or whose body has not arrived `body_timeout` seconds after its head. Deadlines count
from the start of each phase, not from the last byte, so trickling does not extend them. A
WebSocket is no longer HTTP once upgraded: its pings bound it.

A client that reads none of its answer holds its connection the other way: what the kernel's
buffers cannot take waits in the transport, and closing the connection (a deadline, uvicorn's
keep-alive) waits for it to be sent, for ever; a share's data and page need no key and may be
many MB. So while writing is held back (the transport's buffer above its high-water mark), a
connection whose client takes none of it for `body_timeout` seconds is aborted, the unread
answer dropped. As with nginx's send_timeout, this counts from one part taken to the next: a
client reading slowly keeps its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import sys
import termios
from typing import Any, Literal

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = structlog.get_logger("syncd.receiver")

Phase = Literal["head", "body"] | None


def deadline_protocol(header_timeout: float, body_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with the read deadlines above (for
    `uvicorn.Config(http=...)`)."""

    class DeadlineProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._phase: Phase = None
            self._deadline: asyncio.TimerHandle | None = None
            self._reading_body = False  # between a request's head and the end of its body
            self._upgraded = False  # a WebSocket now: no longer ours to time
            self._unread: asyncio.TimerHandle | None = None  # while writing is held back

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._watch()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch()

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._reading_body = True

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._reading_body = False

        def handle_websocket_upgrade(self) -> None:
            self._upgraded = True
            super().handle_websocket_upgrade()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch()

        def connection_lost(self, exc: Exception | None) -> None:
            self._set_phase(None)
            self._stop_unread_watch()
            super().connection_lost(exc)

        def pause_writing(self) -> None:
            super().pause_writing()
            self._watch_unread(self._unread_bytes())

        def resume_writing(self) -> None:
            super().resume_writing()
            self._stop_unread_watch()

        def _watch_unread(self, waiting: int) -> None:
            self._stop_unread_watch()
            self._unread = self.loop.call_later(body_timeout, self._check_unread, waiting)

        def _stop_unread_watch(self) -> None:
            if self._unread is not None:
                self._unread.cancel()
                self._unread = None

        def _check_unread(self, waited_before: int) -> None:
            waiting = self._unread_bytes()
            self._unread = None
            if waiting < waited_before:  # the client took some: it reads, however slowly
                self._watch_unread(waiting)
                return
            self._log_dropped("answer to be read", body_timeout)
            self.transport.abort()

        def _unread_bytes(self) -> int:
            """Answer bytes the client has not taken: in the transport and (where the kernel
            tells) in the socket's send queue. The transport alone would not do: it writes
            again only once the kernel's buffer has much room (MBs), which a slow reader
            takes longer than `body_timeout` to make."""
            waiting = self.transport.get_write_buffer_size()
            with contextlib.suppress(OSError, AttributeError):
                sock = self.transport.get_extra_info("socket")
                queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4))
                waiting += int.from_bytes(queued, sys.byteorder, signed=True)
            return waiting

        def _watch(self) -> None:
            """Arm the deadline of the phase the connection is in: none while the app
            answers (or a pipelined request waits for an earlier answer: nothing is read
            meanwhile), nor once the connection is closing or a WebSocket."""
            phase: Phase = None
            if self._upgraded or self.transport.is_closing() or self.pipeline:
                phase = None
            elif self._reading_body:
                phase = "body"
            elif self.cycle is None or self.cycle.response_complete:
                phase = "head"
            self._set_phase(phase)

        def _set_phase(self, phase: Phase) -> None:
            if phase == self._phase:
                return
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            self._phase = phase
            if phase is not None:
                seconds = header_timeout if phase == "head" else body_timeout
                self._deadline = self.loop.call_later(seconds, self._too_slow)

        def _too_slow(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            seconds = header_timeout if self._phase == "head" else body_timeout
            self._log_dropped(f"request {self._phase}", seconds)
            self.transport.close()

        def _log_dropped(self, waited_for: str, seconds: float) -> None:
            log.info(
                "slow client dropped",
                client=f"{self.client[0]}:{self.client[1]}" if self.client else None,
                waited_for=waited_for,
                seconds=seconds,
            )

    return DeadlineProtocol
