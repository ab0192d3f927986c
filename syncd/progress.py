"""Progress of a backfill (`syncd backfill`): a live bar on a terminal, plain lines otherwise.

Progress is read from the state, not counted in the pipeline: what is done is what the
receiver acknowledged, so a resumed backfill starts from what is really left.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
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

from .state.store import StateStore

POLL_SECONDS = 0.5
LINE_EVERY_SECONDS = 5.0


class BackfillCount:
    """Items and sessions done out of the total, which grows if opencode writes meanwhile."""

    def __init__(self, items: int, sessions: int) -> None:
        self.total_items, self.total_sessions = items, sessions
        self.done_items = self.done_sessions = 0
        self.started = time.monotonic()

    def update(self, items_left: int, sessions_left: int) -> None:
        self.done_items = max(self.done_items, self.total_items - items_left)
        self.total_items = max(self.total_items, self.done_items + items_left)
        self.done_sessions = max(self.done_sessions, self.total_sessions - sessions_left)
        self.total_sessions = max(self.total_sessions, self.done_sessions + sessions_left)

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
    state: StateStore, out: TextIO | None = None
) -> AsyncIterator[BackfillCount]:
    """Show progress while the block delivers what is pending in `state`."""
    out = out or sys.stderr
    items, _ = await state.pending_totals()
    count = BackfillCount(items, len(await state.pending_sessions()))
    bar = _bar(out) if out.isatty() else None

    async def poll() -> None:
        last_line = time.monotonic()
        while True:
            await asyncio.sleep(POLL_SECONDS)
            items_left, _ = await state.pending_totals()
            count.update(items_left, len(await state.pending_sessions()))
            if bar is not None:
                _show(bar, count)
            elif time.monotonic() - last_line >= LINE_EVERY_SECONDS:
                print(count.line(), file=out, flush=True)
                last_line = time.monotonic()

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
        items_left, _ = await state.pending_totals()
        count.update(items_left, len(await state.pending_sessions()))
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
