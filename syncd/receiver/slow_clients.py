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
"""

from __future__ import annotations

import asyncio
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
            super().connection_lost(exc)

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
            log.info(
                "slow client dropped",
                client=f"{self.client[0]}:{self.client[1]}" if self.client else None,
                waited_for=f"request {self._phase}",
                seconds=seconds,
            )
            self.transport.close()

    return DeadlineProtocol
