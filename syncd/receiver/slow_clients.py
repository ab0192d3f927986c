"""Read deadlines for `syncd serve`'s connections, so that clients sending slowly cannot hold
the receiver's connections for ever (slowloris).

uvicorn bounds only the idle time between requests (`timeout_keep_alive`, reset by every byte
that arrives) and the number of concurrent connections (`limit_concurrency`, 503 beyond it).
Nothing bounds how long a request's head or body takes to arrive: a client sending one header
byte a second keeps its connection, and its place under the limit, indefinitely. An ASGI
middleware cannot help with the head, which is read before the app is called; so the deadlines
live in the HTTP protocol: uvicorn's h11 protocol, subclassed, closes a connection whose
request head has not arrived `header_timeout` seconds after the connection opened (or the
previous answer was sent), or whose body has not arrived `body_timeout` seconds after its
head. Deadlines count from the start of each phase, not from the last byte, so trickling does
not extend them. A WebSocket is no longer HTTP once upgraded: its pings bound it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

log = structlog.get_logger("syncd.receiver")


def deadline_protocol(header_timeout: float, body_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with the read deadlines above (for `uvicorn.Config(http=...)`)."""

    class DeadlineProtocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._phase: str | None = None
            self._deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._watch()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch()

        def connection_lost(self, exc: Exception | None) -> None:
            self._set_phase(None)
            super().connection_lost(exc)

        def _watch(self) -> None:
            """Arm the deadline of the phase the connection is in (none while the app
            answers, or once the connection is a WebSocket)."""
            phase = None
            if not self.transport.is_closing():
                if self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE:
                    phase = "head"
                elif self.conn.their_state is h11.SEND_BODY:
                    phase = "body"
            self._set_phase(phase)

        def _set_phase(self, phase: str | None) -> None:
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
