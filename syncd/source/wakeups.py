"""When to look at the database: file events, confirmed by `PRAGMA data_version`, and a slow
safety poll for events that never arrive (network filesystems, missed inotify events).

Reading the database touches its `-shm` file, so events on it are ignored: a watcher that
reacted to its own reads would loop for ever (CONTRACTS.md section 1).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from enum import Enum
from pathlib import Path

from watchfiles import Change, awatch


class Wakeup(Enum):
    FILE = "file"  # the database or its WAL was written
    POLL = "poll"  # the safety poll
    DEEP = "deep"  # every DEEP_EVERY poll intervals: also re-checks sessions that look idle


DEEP_EVERY = 10


async def wakeups(
    db_path: Path, poll_interval: float, stop: asyncio.Event
) -> AsyncIterator[Wakeup]:
    names = {db_path.name, f"{db_path.name}-wal"}

    def relevant(change: Change, path: str) -> bool:
        return Path(path).name in names

    loop = asyncio.get_running_loop()
    last_deep = loop.time()
    async for changes in awatch(
        db_path.parent,
        watch_filter=relevant,
        recursive=False,
        debounce=50,
        step=25,
        rust_timeout=int(poll_interval * 1000),
        yield_on_timeout=True,
        stop_event=stop,
    ):
        if loop.time() - last_deep >= poll_interval * DEEP_EVERY:
            last_deep = loop.time()
            yield Wakeup.DEEP
        else:
            yield Wakeup.FILE if changes else Wakeup.POLL
