"""Table mode's last read, kept in the state (TableRead), under attack."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

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
