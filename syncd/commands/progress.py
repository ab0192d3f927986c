"""Progress of a backfill (`syncd backfill`): on a terminal one live display owns it, the bars
at the bottom and log lines printed above them; elsewhere a plain line every 5 s.

The totals are counted before anything is delivered, cheaply (row counts, no data read):
items already pending from an earlier run, plus the entities of every session the capture is
about to read. What is done is the total less what is left: the pending items, and the
counted items of sessions not captured yet. Items are opencode's entities (sessions, messages,
parts); the models and diffs derived from them are not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from ..model import Cursor
from ..pipeline.pipeline import Pipeline
from ..state.store import StateStore
from .screen import duration

POLL_SECONDS = 0.5
LINE_EVERY_SECONDS = 5.0
Clock = Callable[[], float]


@dataclass(frozen=True)
class BackfillPlan:
    """What the backfill has to do, counted before it starts."""

    pending: dict[str, int]  # session -> items pending from an earlier run
    counted: dict[str, int]  # session -> items the capture is about to record
    cursors: dict[str, Cursor]  # the counted sessions' cursors then (moved: captured)

    @property
    def sessions(self) -> int:
        return len(self.pending.keys() | self.counted.keys())

    @property
    def items(self) -> int:
        return sum(self.pending.values()) + sum(self.counted.values())


async def plan_backfill(pipeline: Pipeline) -> BackfillPlan:
    cursors = await pipeline.state.cursors()
    scan = await pipeline.detector.scan(cursors, deep=True)
    counted = await pipeline.detector.count(scan, cursors)
    pending = await pipeline.state.pending_counts()
    return BackfillPlan(pending, counted, {sid: cursors[sid] for sid in counted if sid in cursors})


class BackfillCount:
    """Sessions and items done out of the totals, the rate and what is left in time."""

    def __init__(self, plan: BackfillPlan, clock: Clock = time.monotonic) -> None:
        self.plan = plan
        self.clock = clock
        self.started = clock()
        self.total_items, self.total_sessions = plan.items, plan.sessions
        self.done_items = self.done_sessions = 0

    def update(
        self, pending: dict[str, int], cursors: dict[str, Cursor], *, captured: bool = False
    ) -> None:
        """From the state's pending items per session and its cursors, read together.
        `captured`: the capture went through every counted session (one read again from
        below its cursor, without a journal, leaves the cursor as it was)."""
        plan = self.plan
        uncaptured = set() if captured else {
            sid for sid in plan.counted if cursors.get(sid) == plan.cursors.get(sid)
        }  # fmt: skip
        items_left = sum(pending.values()) + sum(plan.counted[sid] for sid in uncaptured)
        sessions_left = len(pending.keys() | uncaptured)
        # A capture that finds more than was counted (opencode wrote meanwhile) raises the
        # total; what is done never goes back.
        self.done_items = max(self.done_items, self.total_items - items_left)
        self.total_items = max(self.total_items, self.done_items + items_left)
        self.done_sessions = max(self.done_sessions, self.total_sessions - sessions_left)
        self.total_sessions = max(self.total_sessions, self.done_sessions + sessions_left)

    @property
    def rate(self) -> float:
        elapsed = self.clock() - self.started
        return self.done_items / elapsed if elapsed > 0 else 0.0

    def eta(self) -> str:
        left = self.total_items - self.done_items
        if not left:
            return "done"
        return f"{duration(left / self.rate)} left" if self.rate > 0 else "estimating"

    def line(self) -> str:
        return (
            f"backfill: {self.done_sessions:,}/{self.total_sessions:,} sessions, "
            f"{self.done_items:,}/{self.total_items:,} items, {self.rate:,.0f} items/s, "
            f"{self.eta()}"
        )


class BackfillDisplay:
    """The bars on a terminal. While shown, whatever is written to stderr and stdout (the log
    included: see syncd.log) is printed above them, so they are never broken up or repeated."""

    def __init__(self, console: Console, count: BackfillCount) -> None:
        self.count = count
        self.progress = Progress(
            TextColumn("{task.description:<8}"),
            BarColumn(bar_width=None),
            TextColumn("{task.fields[done]}", justify="right"),
            TextColumn("{task.fields[tail]}"),
            console=console,
            auto_refresh=False,  # refreshed on every update: the clock is the count's
            expand=True,
        )
        self.sessions = self.progress.add_task("sessions", done="", tail="")
        self.items = self.progress.add_task("items", done="", tail="")

    def start(self) -> None:
        self.progress.start()
        self.show()

    def show(self) -> None:
        count, progress = self.count, self.progress
        sessions, items = (
            (count.done_sessions, count.total_sessions),
            (count.done_items, count.total_items),
        )
        progress.update(self.sessions, completed=sessions[0], total=sessions[1],
                        done="{:,}/{:,}".format(*sessions), tail="")  # fmt: skip
        progress.update(self.items, completed=items[0], total=items[1],
                        done="{:,}/{:,}".format(*items),
                        tail=f"{count.rate:,.0f}/s  {count.eta()}")  # fmt: skip
        progress.refresh()

    def stop(self) -> None:
        self.show()
        self.progress.stop()


@contextlib.asynccontextmanager
async def follow_backfill(
    state: StateStore,
    plan: BackfillPlan,
    out: TextIO | None = None,
) -> AsyncIterator[BackfillCount]:
    """Show progress while the block captures and delivers."""
    out = out or sys.stderr
    count = BackfillCount(plan)
    display = BackfillDisplay(Console(file=out), count) if out.isatty() else None

    async def refresh(*, captured: bool = False) -> None:
        # Cursors first: a capture committed in between then counts twice for a moment,
        # never zero times (done never goes back, so an overcount would stick).
        cursors = await state.cursors()
        count.update(await state.pending_counts(), cursors, captured=captured)

    async def poll() -> None:
        last_line = time.monotonic()
        while True:
            await asyncio.sleep(POLL_SECONDS)
            await refresh()
            if display is not None:
                display.show()
            elif time.monotonic() - last_line >= LINE_EVERY_SECONDS:
                print(count.line(), file=out, flush=True)
                last_line = time.monotonic()

    if display is None:
        print(count.line(), file=out, flush=True)
    else:
        display.start()
    task = asyncio.create_task(poll(), name="backfill progress")
    finished = False
    try:
        yield count
        finished = True
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await refresh(captured=finished)
        if display is None:
            print(count.line(), file=out, flush=True)
        else:
            display.stop()
