"""When the source looks at opencode's database: file events on it, and the safety poll."""

from __future__ import annotations

import asyncio
from pathlib import Path

from syncd.source.wakeups import Wakeup, wakeups


async def test_a_directory_that_never_goes_quiet_still_gets_its_safety_poll(
    tmp_path: Path,
) -> None:
    """opencode's directory holds other files that change all the time (its logs, a state or
    archive kept beside it): their events are ignored, and must not hold off the poll."""
    db = tmp_path / "opencode.db"
    db.write_bytes(b"")
    stop = asyncio.Event()

    async def churn() -> None:
        while not stop.is_set():
            (tmp_path / "opencode.log").write_text("busy")
            await asyncio.sleep(0.05)

    async def first_wakeup() -> Wakeup:
        async for wakeup in wakeups(db, 0.5, stop):
            return wakeup
        raise AssertionError("the watcher stopped")

    churning = asyncio.create_task(churn())
    try:
        assert await asyncio.wait_for(first_wakeup(), 10) is Wakeup.POLL
    finally:
        stop.set()
        await churning


async def test_a_commit_wakes_it_at_once(tmp_path: Path) -> None:
    db = tmp_path / "opencode.db"
    db.write_bytes(b"")
    stop = asyncio.Event()

    async def first_wakeup() -> Wakeup:
        async for wakeup in wakeups(db, 60.0, stop):
            return wakeup
        raise AssertionError("the watcher stopped")

    watching = asyncio.create_task(first_wakeup())
    await asyncio.sleep(0.3)  # the watcher is set up
    Path(f"{db}-wal").write_bytes(b"commit")
    try:
        assert await asyncio.wait_for(watching, 10) is Wakeup.FILE
    finally:
        stop.set()
