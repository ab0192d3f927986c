"""Table mode's last read, kept in the state (TableRead), under attack: a receiver switched
while the daemon runs, a capture in flight meanwhile."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Literal

from syncd.commands.sync import sync_once
from syncd.config import Config
from syncd.pipeline.deliver import RetryPolicy
from syncd.pipeline.pipeline import Pipeline
from syncd.state.store import StateStore
from tests.support.archive_check import make_config
from tests.support.fake_opencode import FakeOpencode


def a_session(tmp_path: Path, fixtures_dir: Path) -> tuple[FakeOpencode, str, set]:
    """A database without a journal: one session, its message and three parts, every row
    stamped within the margin below the watermark (the stamps a read keeps)."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=False)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user"})
    parts = [writer.part(sid, mid, {"type": "text", "text": str(n)}) for n in range(3)]
    whole = {("session", sid), ("message", mid), *(("part", part) for part in parts)}
    return writer, sid, whole


async def pending_keys(state: StateStore, session_id: str) -> set:
    return {(item.kind, item.item_id) for item in await state.pending(session_id, 1000)}


async def delivered_then_daemon(config: Config) -> Pipeline:
    """A `sync` delivers everything; then a daemon's pipeline on the same state, whose
    windows stay open for the test's length (what it captures stays pending)."""
    assert await sync_once(config) == 0
    return await Pipeline.open(replace(config, window=600.0), RetryPolicy())


async def test_a_new_receiver_gets_every_row_when_a_delivery_error_came_first(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """A reload to another receiver forgets the cursors; a delivery to it that fails before
    the reload's capture records its error on the session's cursor row, which then exists
    without a watermark. The stamps read for the old receiver must not hold any row back."""
    writer, sid, whole = a_session(tmp_path, fixtures_dir)
    pipeline = await delivered_then_daemon(make_config(tmp_path, writer.path, sessions="all"))
    try:
        await pipeline.state.bind_target("http:http://127.0.0.1:9")  # what the reload does
        await pipeline.state.record_error(sid, "connection refused")  # the new one is down
        await pipeline.capture(deep=True)
        assert await pending_keys(pipeline.state, sid) == whole
    finally:
        await pipeline.window.cancel()
        await pipeline.close()
        writer.close()


class WatchedLock(asyncio.Lock):
    """The capture lock, telling each time someone asks for it."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    async def acquire(self) -> Literal[True]:
        self.asked += 1
        return await super().acquire()


async def test_a_reload_to_another_receiver_during_a_capture_sends_it_every_row(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """SIGHUP to another receiver while a wake-up's capture is recording a new part: that
    capture read with the old receiver's cursor and stamps. Its cursor must not outlive the
    switch, or the rows the old receiver got never reach the new one."""
    writer, sid, whole = a_session(tmp_path, fixtures_dir)
    config = make_config(tmp_path, writer.path, sessions="all")
    pipeline = await delivered_then_daemon(config)
    try:
        mid = next(item_id for kind, item_id in whole if kind == "message")
        whole.add(("part", writer.part(sid, mid, {"type": "text", "text": "new"})))
        gate, recording = asyncio.Event(), asyncio.Event()
        state_capture = pipeline.state.capture

        async def held_capture(*args, **kwargs) -> None:
            recording.set()
            await gate.wait()
            await state_capture(*args, **kwargs)

        pipeline.state.capture = held_capture  # type: ignore[method-assign]
        lock = pipeline._capturing = WatchedLock()
        wake_up = asyncio.create_task(pipeline.capture())
        await asyncio.wait_for(recording.wait(), 10)
        other = replace(config, transport="http", url="http://127.0.0.1:9")
        reload = asyncio.create_task(pipeline.reload(other))
        deadline = time.monotonic() + 10
        while lock.asked < 2 and time.monotonic() < deadline:  # the reload waits its turn
            await asyncio.sleep(0.01)
        assert lock.asked == 2
        gate.set()
        await asyncio.wait_for(asyncio.gather(wake_up, reload), 10)
        assert await pending_keys(pipeline.state, sid) == whole
    finally:
        await pipeline.window.cancel()
        await pipeline.close()
        writer.close()
