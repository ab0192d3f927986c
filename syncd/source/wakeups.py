"""When to look at opencode's data: file events, and a slow safety poll for events that never
arrive (network filesystems, missed inotify events).

Two watchers: the database's directory (the database and its WAL; a database event is
confirmed by `PRAGMA data_version`, since reading the database touches its `-shm` file and a
watcher reacting to its own reads would loop for ever, CONTRACTS.md section 1), and opencode's
JSON `storage/` beside it (diff files of opencode <= 1.15, the sessions of the JSON era), from
when it exists.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from enum import Enum
from pathlib import Path

import structlog
from watchfiles import Change, awatch

from .storage import storage_dir

log = structlog.get_logger("syncd.source")


class Wakeup(Enum):
    FILE = "file"  # the database or its WAL was written
    STORAGE = "storage"  # a file under opencode's storage/ was written
    POLL = "poll"  # the safety poll
    DEEP = "deep"  # every DEEP_EVERY poll intervals: also re-checks sessions that look idle


DEEP_EVERY = 10


async def wakeups(
    db_path: Path, poll_interval: float, stop: asyncio.Event
) -> AsyncIterator[Wakeup]:
    events: asyncio.Queue[Wakeup] = asyncio.Queue()
    storage = storage_dir(db_path)
    names = {db_path.name, f"{db_path.name}-wal"}

    def database_file(change: Change, path: str) -> bool:
        return Path(path).name in names or Path(path) == storage

    async def watch_database() -> None:
        async for changes in _watch(db_path.parent, database_file, stop, recursive=False):
            if any(Path(path) == storage for _, path in changes):
                start_storage_watch()
            if any(Path(path).name in names for _, path in changes):
                events.put_nowait(Wakeup.FILE)

    async def watch_storage() -> None:
        async for _ in _watch(storage, lambda change, path: True, stop, recursive=True):
            events.put_nowait(Wakeup.STORAGE)

    watchers: dict[str, asyncio.Task[None]] = {}

    def start_storage_watch() -> None:
        if "storage" not in watchers and storage.is_dir():
            watchers["storage"] = asyncio.create_task(watch_storage(), name="storage watcher")
            events.put_nowait(Wakeup.STORAGE)  # what was written before the watch began

    watchers["database"] = asyncio.create_task(watch_database(), name="database watcher")
    if storage.is_dir():
        watchers["storage"] = asyncio.create_task(watch_storage(), name="storage watcher")
    loop = asyncio.get_running_loop()
    last_deep = loop.time()
    try:
        while not stop.is_set():
            stopping = asyncio.ensure_future(stop.wait())
            waiting = asyncio.ensure_future(events.get())
            done, _ = await asyncio.wait(
                {stopping, waiting}, timeout=poll_interval, return_when=asyncio.FIRST_COMPLETED
            )
            stopping.cancel()
            if waiting not in done:
                waiting.cancel()
            if stop.is_set():
                return
            if loop.time() - last_deep >= poll_interval * DEEP_EVERY:
                last_deep = loop.time()
                yield Wakeup.DEEP
            elif waiting in done:
                yield _drain(events, waiting.result())
            else:
                yield Wakeup.POLL
    finally:
        for task in watchers.values():
            task.cancel()
        for task in watchers.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _drain(events: asyncio.Queue[Wakeup], first: Wakeup) -> Wakeup:
    """One wake-up for the events queued so far: STORAGE when a storage file moved (it is
    read whatever the database says), else FILE (confirmed against the database)."""
    seen = {first}
    while not events.empty():
        seen.add(events.get_nowait())
    return Wakeup.STORAGE if Wakeup.STORAGE in seen else Wakeup.FILE


async def _watch(
    path: Path, relevant: Callable[[Change, str], bool], stop: asyncio.Event, *, recursive: bool
) -> AsyncIterator[set[tuple[Change, str]]]:
    try:
        async for changes in awatch(
            path,
            watch_filter=relevant,
            recursive=recursive,
            debounce=50,
            step=25,
            stop_event=stop,
        ):
            yield changes
    except (OSError, RuntimeError) as error:  # gone, or a filesystem without events
        log.warning(
            "file events unavailable; the safety poll remains", path=str(path), error=str(error)
        )
