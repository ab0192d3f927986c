"""The whole pipeline in-process on the real sample database: source -> state -> local
archive. (The end-to-end tests with the real opencode and a remote receiver are elsewhere.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from syncd.archive.sqlite import SqliteArchive as ShareStore
from syncd.commands.sync import sync_once
from syncd.errors import UserError
from syncd.pipeline import deliver
from syncd.state.store import StateStore
from syncd.transports.local import LocalTransport
from tests.support.archive_check import archived, expected_state, make_config
from tests.support.fake_opencode import FakeOpencode


async def test_sync_delivers_the_sample_database_exactly(tmp_path: Path, sample_db: Path) -> None:
    config = make_config(tmp_path, sample_db)
    assert config.transport == "local" and config.sessions == "all"
    assert await sync_once(config) == 0
    expected = expected_state(sample_db)
    got = await archived(config)
    assert set(got) == set(expected)
    for sid, want in expected.items():
        assert got[sid]["messages"] == want["messages"]
        assert got[sid]["parts"] == want["parts"]
        assert got[sid]["session"]["id"] == sid
    # Nothing changed: a second sync sends nothing and creates no share.
    assert await sync_once(config) == 0
    assert await archived(config) == got


async def test_changes_after_a_sync_arrive_and_diffs_are_not_repeated(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    diffs = [{"file": "a.txt", "patch": "+a", "additions": 1, "deletions": 0, "status": "added"}]
    sid = writer.session(summary_additions=1, summary_deletions=0, summary_files=1,
                         summary_diffs=json.dumps(diffs))  # fmt: skip
    mid = writer.message(sid, {"role": "user", "time": {"created": 1}})
    part = writer.part(sid, mid, {"type": "text", "text": "hel"})
    config = make_config(tmp_path, writer.path)
    assert await sync_once(config) == 0

    writer.part(sid, mid, {"type": "text", "text": "hello, world"}, part_id=part)
    writer.session(session_id=sid, title="renamed", summary_additions=1, summary_deletions=0,
                   summary_files=1, summary_diffs=json.dumps(diffs))  # fmt: skip
    assert await sync_once(config) == 0
    got = (await archived(config))[sid]
    assert got["parts"][part]["text"] == "hello, world"
    assert got["session"]["title"] == "renamed"
    assert got["diffs"] == diffs  # the server appends: sent once because it did not change
    writer.close()


async def test_a_malformed_row_is_dead_lettered_and_the_rest_flows(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user"})
    good = writer.part(sid, mid, {"type": "text", "text": "fine"})
    bad = writer.part(sid, mid, "{this is not json")
    config = make_config(tmp_path, writer.path)
    with pytest.raises(UserError, match="dead-lettered") as caught:
        await sync_once(config)
    assert caught.value.exit_code == 1
    got = (await archived(config))[sid]
    assert good in got["parts"] and bad not in got["parts"]
    state = await StateStore.open(config.state)
    [letter] = await state.dead_letters()
    await state.close()
    assert letter["item_id"] == bad and "not valid JSON" in letter["reason"]
    writer.close()


async def test_deleted_session_keeps_its_archived_copy(tmp_path: Path, fixtures_dir: Path) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    config = make_config(tmp_path, writer.path)
    assert await sync_once(config) == 0
    state = await StateStore.open(config.state)
    [share_row] = [r for r in await state.session_report() if r["session_id"] == sid]
    known = await state.share(sid, f"local:{config.archive}")
    await state.close()
    writer.delete_session(sid)
    assert await sync_once(config) == 0
    store = await ShareStore.open(config.archive)
    assert (await store.read_share(known[0].id))["session"]["id"] == sid
    await store.close()
    assert share_row["session_id"] == sid
    writer.close()


async def test_a_backfill_reads_sessions_only_so_far_ahead_of_its_calls(
    tmp_path: Path, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Capture runs far ahead of delivery in a backfill; the sessions whose rows are read and
    not yet sent stay bounded (their rows are in memory), however many sessions there are."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    for number in range(40):
        sid = writer.session(f"s{number}")
        mid = writer.message(sid, {"role": "user", "time": {"created": 1}})
        writer.part(sid, mid, {"type": "text", "text": "x" * 200})
    writer.close()
    read, most = 0, 0
    load, send = deliver.load, deliver.SessionDelivery._send

    async def reading(*args: Any) -> Any:
        nonlocal read, most
        read += 1
        most = max(most, read)
        return await load(*args)

    async def sending(self: deliver.SessionDelivery, *args: Any) -> bool:
        nonlocal read
        try:
            return await send(self, *args)
        finally:
            read -= 1

    # The receiver slower than the capture, as in a backfill (a new share's first batch
    # travels with its creation).
    async def slow_create(self: LocalTransport, session_id: str, batch: Any) -> Any:
        await asyncio.sleep(0.005)
        return await create(self, session_id, batch)

    async def slow_sync(self: LocalTransport, share: Any, batch: Any) -> None:
        await asyncio.sleep(0.005)
        await sync(self, share, batch)

    create, sync = LocalTransport.create, LocalTransport.sync
    monkeypatch.setattr(deliver, "load", reading)
    monkeypatch.setattr(deliver.SessionDelivery, "_send", sending)
    monkeypatch.setattr(LocalTransport, "create", slow_create)
    monkeypatch.setattr(LocalTransport, "sync", slow_sync)
    config = make_config(tmp_path, tmp_path / "opencode.db", concurrency=1)
    assert await sync_once(config) == 0
    assert len(await archived(config)) == 40
    assert 1 <= most <= 1 * deliver.READ_AHEAD_PER_CALL
