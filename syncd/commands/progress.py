"""Progress of a backfill (`syncd backfill`): a live bar on a terminal, plain lines otherwise.

Done is what the receiver acknowledged in this run, left is what the state holds as pending,
so a resumed backfill counts only what was left.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..state.store import StateStore, now_ms

POLL_SECONDS = 0.5
LINE_EVERY_SECONDS = 5.0


class BackfillCount:
    """Items and sessions done out of the total; the total grows while the capture goes on
    (sessions are delivered as soon as they are captured) and if opencode writes meanwhile."""

    def __init__(self) -> None:
        self.total_items = self.total_sessions = 0
        self.done_items = self.done_sessions = 0
        self.started = time.monotonic()

    def update(
        self, done_items: int, items_left: int, done_sessions: int, sessions_left: int
    ) -> None:
        self.done_items, self.total_items = done_items, done_items + items_left
        self.done_sessions, self.total_sessions = done_sessions, done_sessions + sessions_left

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.done_items / elapsed if elapsed > 0 else 0.0
        left = self.total_items - self.done_items
        eta = f"{left / rate:.0f}s" if rate > 0 else "unknown"
        return (
            f"backfill: {self.done_sessions}/{self.total_sessions} sessions, "
            f"{self.done_items}/{self.total_items} items, {rate:.0f} items/s, ETA {eta}"
        )


@contextlib.asynccontextmanager
async def follow_backfill(
    state: StateStore, delivered: Callable[[], int], out: TextIO | None = None
) -> AsyncIterator[BackfillCount]:
    """Show progress while the block captures and delivers; `delivered()` counts the items
    acknowledged so far, the state tells what is left (read together, so nothing that is
    captured and delivered between two looks escapes the count)."""
    out = out or sys.stderr
    started_ms = now_ms()
    count = BackfillCount()
    bar = _bar(out) if out.isatty() else None

    async def refresh() -> None:
        items_left, _ = await state.pending_totals()
        sessions_left = len(await state.pending_sessions())
        done_sessions = await state.sessions_delivered_since(started_ms)
        count.update(delivered(), items_left, done_sessions, sessions_left)

    async def poll() -> None:
        last_line = time.monotonic()
        while True:
            await asyncio.sleep(POLL_SECONDS)
            await refresh()
            if bar is not None:
                _show(bar, count)
            elif time.monotonic() - last_line >= LINE_EVERY_SECONDS:
                print(count.line(), file=out, flush=True)
                last_line = time.monotonic()

    await refresh()
    if bar is None:
        print(count.line(), file=out, flush=True)
    else:
        bar.start()
        _show(bar, count)
    task = asyncio.create_task(poll(), name="backfill progress")
    try:
        yield count
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await refresh()
        if bar is None:
            print(count.line(), file=out, flush=True)
        else:
            _show(bar, count)
            bar.stop()


def _bar(out: TextIO) -> Progress:
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(file=out),
    )
    progress.add_task("sessions", total=None, rate="")
    progress.add_task("items", total=None, rate="")
    return progress


def _show(bar: Progress, count: BackfillCount) -> None:
    sessions, items = bar.task_ids
    elapsed = time.monotonic() - count.started
    rate = f"{count.done_items / elapsed:.0f} items/s" if elapsed > 0 else ""
    bar.update(sessions, total=count.total_sessions, completed=count.done_sessions)
    bar.update(items, total=count.total_items, completed=count.done_items, rate=rate)
