"""The receiver's archive: merge rules of opencode's share server, atomic batches, secrets."""

from __future__ import annotations

import asyncio
import json
import re
import stat
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.archive import ArchiveStore, BadSyncData, InvalidSecret, ShareNotFound
from syncd.archive.sqlite import MIGRATIONS
from syncd.archive.sqlite import SqliteArchive as ShareStore
from syncd.migrate import MIGRATION_NAME, migrate
from tests.support.stores import opened_store

SESSION_ID = "ses_ded3f60c6ffeY2PHYjxlwlNfGw"


def message(id: str, **fields: Any) -> dict[str, Any]:
    return {"type": "message", "data": {"id": id, "sessionID": SESSION_ID, **fields}}


def part(id: str, message_id: str, **fields: Any) -> dict[str, Any]:
    data = {"id": id, "messageID": message_id, "sessionID": SESSION_ID, **fields}
    return {"type": "part", "data": data}


async def test_archive_survives_reopen(store_url: str) -> None:
    async with opened_store(store_url) as first:
        share = await first.create_share(SESSION_ID, "http://x")
        await first.sync(share.id, share.secret, [message("msg_1", role="user")])
    async with opened_store(store_url) as again:
        assert (await again.read_share(share.id))["messages"] == [
            message("msg_1", role="user")["data"]
        ]
        assert await again.sync(share.id, share.secret, []) == 2


async def test_archive_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "archive.db"
    await (await ShareStore.open(path)).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


async def test_create_names_share_like_opencode_and_never_reuses_an_id(store: ArchiveStore) -> None:
    first = await store.create_share(SESSION_ID, "http://127.0.0.1:9")
    second = await store.create_share(SESSION_ID, "http://127.0.0.1:9")
    assert first.id == SESSION_ID[-8:]
    assert first.url == f"http://127.0.0.1:9/share/{first.id}"
    assert second.id != first.id and second.secret != first.secret
    assert first.secret not in repr(first)
    listed = {row["id"]: row for row in await store.list_shares()}
    assert set(listed) == {first.id, second.id}
    assert listed[first.id]["session_id"] == SESSION_ID


async def test_upserts_by_id_and_last_write_wins(store: ArchiveStore) -> None:
    share = await store.create_share(SESSION_ID, "http://x")
    await store.sync(
        share.id,
        share.secret,
        [
            {"type": "session", "data": {"id": SESSION_ID, "title": "first"}},
            message("msg_2", role="assistant"),
            message("msg_1", role="user"),
            part("prt_1", "msg_1", text="hel"),
        ],
    )
    count = await store.sync(
        share.id,
        share.secret,
        [
            {"type": "session", "data": {"id": SESSION_ID, "title": "second"}},
            part("prt_1", "msg_1", text="hello"),
            part("prt_1", "msg_2", text="same id, other message"),
        ],
    )
    doc = await store.read_share(share.id)
    assert count == 2
    assert doc["session"] == {"id": SESSION_ID, "title": "second"}
    assert [m["id"] for m in doc["messages"]] == ["msg_1", "msg_2"]
    # opencode keys parts by (messageID, id)
    assert [(p["messageID"], p["text"]) for p in doc["parts"]] == [
        ("msg_1", "hello"),
        ("msg_2", "same id, other message"),
    ]


async def test_session_diff_and_models_replace_whole_arrays(store: ArchiveStore) -> None:
    # opencode's server keys every session_diff item "session_diff" (and models "model"):
    # the newest array replaces the stored one; sending it twice shows it once.
    share = await store.create_share(SESSION_ID, "http://x")
    diff = {"file": "f0.txt", "patch": "@@", "additions": 1, "deletions": 0, "status": "added"}
    other = {**diff, "file": "f1.txt"}
    await store.sync(share.id, share.secret, [{"type": "session_diff", "data": [diff]}])
    await store.sync(share.id, share.secret, [{"type": "session_diff", "data": [diff]}])
    await store.sync(share.id, share.secret, [{"type": "model", "data": [{"id": "a"}]}])
    assert (await store.read_share(share.id))["diffs"] == [diff]
    await store.sync(
        share.id,
        share.secret,
        [{"type": "session_diff", "data": [diff, other]}, {"type": "model", "data": []}],
    )
    doc = await store.read_share(share.id)
    assert doc["diffs"] == [diff, other]
    assert doc["models"] == []


async def test_real_sync_examples_read_back_unchanged(
    store: ArchiveStore, fixtures_dir: Path
) -> None:
    examples = json.loads((fixtures_dir / "opencode/share-sync-examples-1.18.33.json").read_text())
    items = [value for name, value in examples.items() if name != "create-request"]
    share = await store.create_share(examples["create-request"]["sessionID"], "http://x")
    await store.sync(share.id, share.secret, items)
    read = await store.read_items(share.id)
    key = json.dumps
    assert sorted(map(key, read)) == sorted(map(key, items))
    doc = await store.read_share(share.id)
    assert doc["session"] == examples["session"]["data"]


async def test_bad_item_rejects_the_whole_batch(store: ArchiveStore) -> None:
    share = await store.create_share(SESSION_ID, "http://x")
    await store.sync(share.id, share.secret, [message("msg_1", role="user")])
    before = await store.read_share(share.id)
    bad_batches = {
        "item 2 (part): data.messageID": [
            message("msg_1", role="changed"),
            message("msg_9", role="new"),
            {"type": "part", "data": {"id": "prt_1"}},
        ],
        "item 1: type 'todo'": [message("msg_9"), {"type": "todo", "data": {}}],
        "item 0 (message): data.id": [{"type": "message", "data": {"role": "user"}}],
        "item 0 (session_diff): data must be an array": [{"type": "session_diff", "data": {}}],
        "item 0 (session): 'data' is missing": [{"type": "session"}],
        "item 1 (message): data is not plain JSON": [
            message("msg_9"),
            message("m", x=float("nan")),
        ],
        "item 0: must be an object": [["session", {}]],
    }
    for expected, batch in bad_batches.items():
        with pytest.raises(BadSyncData, match=re.escape(expected)):
            await store.sync(share.id, share.secret, batch)  # type: ignore[arg-type]
    assert await store.read_share(share.id) == before
    assert await store.sync(share.id, share.secret, []) == 2  # one sync counted before


async def test_a_share_created_with_its_first_batch_is_both_or_neither(
    store: ArchiveStore,
) -> None:
    share = await store.create_share_with(
        SESSION_ID, "http://x", [message("msg_1", v=1), part("prt_1", "msg_1")], dedup_key="b1"
    )
    assert [row["id"] for row in await store.list_shares()] == [share.id]
    stored = await store.read_share(share.id)
    assert [m["v"] for m in stored["messages"]] == [1]
    assert [p["id"] for p in stored["parts"]] == ["prt_1"]
    # The first batch counted as a sync, under its key: re-sent, it changes nothing.
    assert await store.sync(share.id, share.secret, [message("msg_1", v=2)], dedup_key="b1") == 1
    # A refused batch: no share is made (the session's share id stays free).
    other = "ses_other_session"
    with pytest.raises(BadSyncData, match=re.escape("item 1: type 'todo'")):
        await store.create_share_with(other, "http://x", [message("m"), {"type": "todo"}])
    with pytest.raises(BadSyncData):
        await store.create_share_with("", "http://x", [message("m")])
    assert [row["id"] for row in await store.list_shares()] == [share.id]
    again = await store.create_share_with(other, "http://x", [])
    assert again.id == other[-len(again.id) :]


async def test_unknown_share_and_wrong_secret(store: ArchiveStore) -> None:
    share = await store.create_share(SESSION_ID, "http://x")
    with pytest.raises(ShareNotFound, match=r"^Share not found$"):
        await store.sync("nope", share.secret, [])
    with pytest.raises(InvalidSecret, match=r"^Invalid secret$"):
        await store.sync(share.id, share.secret + "x", [message("msg_1")])
    with pytest.raises(InvalidSecret):
        await store.delete_share(share.id, "")
    with pytest.raises(ShareNotFound):
        await store.read_share("nope")
    assert (await store.read_share(share.id))["messages"] == []


async def test_delete_removes_share_and_content(store: ArchiveStore) -> None:
    share = await store.create_share(SESSION_ID, "http://x")
    await store.sync(share.id, share.secret, [message("msg_1")], dedup_key="k")
    await store.delete_share(share.id, share.secret)
    with pytest.raises(ShareNotFound):
        await store.read_share(share.id)
    with pytest.raises(ShareNotFound):
        await store.delete_share(share.id, share.secret)
    assert await store.list_shares() == []
    # the id is free again and starts empty
    again = await store.create_share(SESSION_ID, "http://x")
    assert again.id == share.id
    assert (await store.read_share(again.id))["messages"] == []


async def test_dedup_key_applies_a_batch_once(store: ArchiveStore) -> None:
    share = await store.create_share(SESSION_ID, "http://x")
    assert await store.sync(share.id, share.secret, [message("msg_1", v=1)], dedup_key="b1") == 1
    # A late duplicate of an old batch must not overwrite newer content.
    assert await store.sync(share.id, share.secret, [message("msg_1", v=2)], dedup_key="b2") == 2
    assert await store.sync(share.id, share.secret, [message("msg_1", v=1)], dedup_key="b1") == 2
    assert (await store.read_share(share.id))["messages"][0]["v"] == 2
    other = await store.create_share("ses_other_session", "http://x")
    assert await store.sync(other.id, other.secret, [message("msg_1")], dedup_key="b1") == 1


async def test_concurrent_syncs_all_land(store: ArchiveStore) -> None:
    share = await store.create_share(SESSION_ID, "http://x")
    counts = await asyncio.gather(
        *(store.sync(share.id, share.secret, [message(f"msg_{i:03}")]) for i in range(40))
    )
    assert sorted(counts) == list(range(1, 41))
    assert len((await store.read_share(share.id))["messages"]) == 40


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=json_values)
async def test_json_types_survive_exactly(store: ArchiveStore, value: Any) -> None:
    share = await store.create_share(SESSION_ID, "http://x")
    await store.sync(share.id, share.secret, [part("prt_1", "msg_1", value=value)])
    stored = (await store.read_share(share.id))["parts"][0]["value"]
    # == alone treats 1 and 1.0 alike; the serialised form tells ints from floats
    assert json.dumps(stored) == json.dumps(value)


def test_migration_folders_follow_the_layout() -> None:
    folders = sorted(p for p in MIGRATIONS.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders, "the receiver has migrations"
    for folder in folders:
        assert MIGRATION_NAME.match(folder.name), folder.name
        assert (folder / "migration.sql").read_text().strip()


async def test_migrations_apply_once(tmp_path: Path) -> None:
    async with aiosqlite.connect(tmp_path / "m.db", isolation_level=None) as db:
        applied = await migrate(db, MIGRATIONS)
        assert applied == sorted(p.name for p in MIGRATIONS.iterdir() if p.is_dir())
        assert await migrate(db, MIGRATIONS) == []
        async with db.execute("SELECT name FROM sqlite_master WHERE type = 'table'") as cursor:
            tables = {row[0] async for row in cursor}
        assert {"share", "share_item", "share_sync", "migration"} <= tables


async def test_a_waiting_reader_sees_a_write_made_through_another_store(store_url: str) -> None:
    # Two stores on one archive: two processes on an SQLite file, two replicas on PostgreSQL.
    async with opened_store(store_url) as writer, opened_store(store_url) as reader:
        share = await writer.create_share(SESSION_ID, "http://x")
        assert await reader.seq(share.id) == 0
        assert await reader.wait_for_change(share.id, 0, timeout=0.1) is False
        waiting = asyncio.create_task(reader.wait_for_change(share.id, 0, timeout=30))
        await writer.sync(share.id, share.secret, [message("msg_1"), message("msg_2")])
        assert await asyncio.wait_for(waiting, 30) is True
        assert await reader.seq(share.id) == 2
        assert [seq for seq, _ in await reader.changes(share.id, 1)] == [2]
        with pytest.raises(ShareNotFound):
            await reader.wait_for_change("nope", 0, timeout=0.1)
