"""Per-session coalescing windows.

A session's first change opens its window; everything captured before the window closes goes
out together, and because entities are read at send time, the latest state of each wins.
Each session has its own worker, so a slow or failing session never holds up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


class Window:
    """Runs `deliver(session_id)` for each touched session once its window has passed."""

    def __init__(self, window: float, deliver: Callable[[str], Awaitable[None]]) -> None:
        self.window = window
        self._deliver = deliver
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._dirty: dict[str, asyncio.Event] = {}
        self._flush = asyncio.Event()

    def touch(self, session_id: str) -> None:
        self._dirty.setdefault(session_id, asyncio.Event()).set()
        if session_id not in self._workers:
            task = asyncio.create_task(self._worker(session_id), name=f"session {session_id}")
            self._workers[session_id] = task

    @property
    def busy(self) -> int:
        return len(self._workers)

    async def _worker(self, session_id: str) -> None:
        dirty = self._dirty[session_id]
        try:
            while dirty.is_set():
                if not self._flush.is_set():
                    # The window: wait for it to pass, or for a flush (shutdown, sync).
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._flush.wait(), self.window)
                dirty.clear()
                await self._deliver(session_id)
        finally:
            del self._workers[session_id]
            self._dirty.pop(session_id, None)

    async def drain(self) -> None:
        """Close every window now and wait for the deliveries in flight."""
        self._flush.set()
        while self._workers:
            await asyncio.gather(*list(self._workers.values()), return_exceptions=True)

    async def cancel(self) -> None:
        for task in list(self._workers.values()):
            task.cancel()
        await asyncio.gather(*list(self._workers.values()), return_exceptions=True)
