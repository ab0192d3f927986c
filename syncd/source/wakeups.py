"""When to look at the database: file events, confirmed by `PRAGMA data_version`, and a slow
safety poll for events that never arrive (network filesystems, missed inotify events).

Reading the database touches its `-shm` file, so events on it are ignored: a watcher that
reacted to its own reads would loop for ever (CONTRACTS.md section 1). Events on other files
in the directory are ignored too, but they do not hold off the safety poll: a directory that
never stays quiet for a whole poll interval (opencode's own files, a log) still gets its poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from enum import Enum
from pathlib import Path

from watchfiles import awatch


class Wakeup(Enum):
    FILE = "file"  # the database or its WAL was written
    POLL = "poll"  # the safety poll
    DEEP = "deep"  # every DEEP_EVERY poll intervals: also re-checks sessions that look idle


DEEP_EVERY = 10


async def wakeups(
    db_path: Path, poll_interval: float, stop: asyncio.Event
) -> AsyncIterator[Wakeup]:
    names = {db_path.name, f"{db_path.name}-wal"}
    loop = asyncio.get_running_loop()
    last_deep = last_look = loop.time()
    # Unfiltered: every batch of events comes back here, so that events on other files can
    # be dropped without starving the poll.
    async for changes in awatch(
        db_path.parent,
        watch_filter=None,
        recursive=False,
        debounce=50,
        step=25,
        rust_timeout=int(poll_interval * 1000),
        yield_on_timeout=True,
        stop_event=stop,
    ):
        now = loop.time()
        relevant = any(Path(path).name in names for _, path in changes)
        if not relevant and now - last_look < poll_interval:
            continue
        last_look = now
        if now - last_deep >= poll_interval * DEEP_EVERY:
            last_deep = now
            yield Wakeup.DEEP
        else:
            yield Wakeup.FILE if relevant else Wakeup.POLL
