"""The durable state: acknowledgements never drop newer captures, dead letters keep payloads,
the file is private, migrations follow the layout."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import stat
from pathlib import Path

import aiosqlite
import pytest

from syncd.archive.sqlite import MIGRATIONS as SERVE_MIGRATIONS
from syncd.archive.sqlite import SqliteArchive as ShareStore
from syncd.errors import UserError
from syncd.migrate import migrate, migration_folders
from syncd.model import PendingItem, Share, TablePrint, TableRead
from syncd.state.store import MIGRATIONS, UPSERT_PENDING, StateStore


@pytest.fixture
async def state(tmp_path: Path):
    store = await StateStore.open(tmp_path / "state" / "state.db", "share:http://127.0.0.1:1")
    yield store
    await store.close()


async def test_file_is_private(state: StateStore) -> None:
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o600


async def test_ack_keeps_a_capture_newer_than_the_batch(state: StateStore) -> None:
    await state.capture("ses_1", [("part", "p1"), ("part", "p2")], journal_seq=3)
    in_flight = await state.pending("ses_1", 10)
    await state.capture("ses_1", [("part", "p1")], journal_seq=4)  # p1 grew while sending
    await state.ack("ses_1", in_flight)
    left = await state.pending("ses_1", 10)
    assert [(p.kind, p.item_id) for p in left] == [("part", "p1")]
    assert (await state.cursors())["ses_1"].journal_seq == 4


async def test_pending_comes_session_first_and_bounded(state: StateStore) -> None:
    await state.capture("ses_1", [("part", "p1"), ("message", "m1"), ("session", "ses_1")])
    assert [p.kind for p in await state.pending("ses_1", 10)] == ["session", "message", "part"]
    assert len(await state.pending("ses_1", 2)) == 2


async def test_next_batch_brings_the_diff_hash_the_session_was_delivered_with(
    state: StateStore,
) -> None:
    await state.capture("ses_1", [("session", "ses_1"), ("part", "p1")])
    await state.capture("ses_2", [("session", "ses_2")])
    assert await state.next_batch("ses_1", 10) == (await state.pending("ses_1", 10), None)
    await state.ack("ses_1", await state.pending("ses_1", 1), "hash-1")
    await state.ack("ses_2", await state.pending("ses_2", 1), "hash-2")
    await state.capture("ses_1", [("session", "ses_1")])
    pending, delivered = await state.next_batch("ses_1", 10)
    assert [(p.kind, p.item_id) for p in pending] == [("session", "ses_1"), ("part", "p1")]
    assert delivered == "hash-1"
    await state.reset_diff_hash("ses_1")
    assert (await state.next_batch("ses_1", 10))[1] is None


async def test_table_reads_are_kept_with_the_cursor(tmp_path: Path) -> None:
    """Table mode's last read travels with the capture it found and survives a reopen; a
    capture without one (journal mode, a lost share) keeps it; a new receiver forgets it with
    the cursors. An id that is not UTF-8 (read as bytes) comes back as bytes."""
    path = tmp_path / "state.db"
    seen = {("session", "ses_1"): 990, ("part", b"p\xff"): 995}
    read = TableRead(1_000, "boot-a", 50, seen, TablePrint(980, 990, 3, 2_900))
    first = await StateStore.open(path, "share:http://a")
    await first.capture("ses_1", [("part", "p1")], time_updated=995, read=read)
    await first.capture("ses_1", [("session", "ses_1")])
    await first.capture("ses_2", [("session", "ses_2")], journal_seq=3)
    await first.close()
    same = await StateStore.open(path, "share:http://a")
    assert await same.table_reads() == {"ses_1": read}
    await same.capture("ses_1", [("part", "p2")], time_updated=996)  # no read: both kept
    assert await same.table_reads() == {"ses_1": read}
    await same.close()
    moved = await StateStore.open(path, "share:http://b")
    assert await moved.table_reads() == {}
    await moved.close()


async def test_a_damaged_table_read_is_read_as_none_kept(tmp_path: Path) -> None:
    """A read_seen that is not what syncd writes (a state edited by hand, or damaged) leaves
    the session without a kept read (it is read again from its watermark's margin) instead of
    failing every start with a traceback."""
    path = tmp_path / "state.db"
    read = TableRead(1_000, "boot-a", 50, {("session", "ses_1"): 990})
    state = await StateStore.open(path, "share:http://a")
    await state.capture("ses_1", [("session", "ses_1")], time_updated=990, read=read)
    await state.capture("ses_2", [("session", "ses_2")], time_updated=990, read=read)
    await state.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE session_cursor SET read_seen = '[[1]' WHERE session_id = 'ses_1'")
    reopened = await StateStore.open(path, "share:http://a")
    assert await reopened.table_reads() == {"ses_2": read}
    await reopened.close()


async def test_dead_letters_keep_payload_and_reason(state: StateStore) -> None:
    await state.capture("ses_1", [("part", "p1")])
    [item] = await state.pending("ses_1", 10)
    await state.dead_letter("ses_1", [(item, {"type": "part", "data": {"id": "p1"}})], "400 bad")
    assert await state.pending("ses_1", 10) == []
    [letter] = await state.dead_letters()
    assert letter["reason"] == "400 bad" and letter["item_id"] == "p1"
    [row] = await state.session_report()
    assert row["dead_letters"] == 1 and row["last_error"] == "400 bad"


async def test_shares_survive_reopen_and_target_change_recaptures(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = await StateStore.open(path, "share:http://a")
    await first.capture("ses_1", [("session", "ses_1")], journal_seq=7)
    await first.save_share("ses_1", "share:http://a", Share("id1", "secret1", "http://a/share/id1"))
    await first.close()

    same = await StateStore.open(path, "share:http://a")
    share, recreated = await same.share("ses_1", "share:http://a")  # type: ignore[misc]
    assert (share.id, share.secret, recreated) == ("id1", "secret1", False)
    assert "secret1" not in repr(share)
    assert (await same.cursors())["ses_1"].journal_seq == 7
    await same.close()

    moved = await StateStore.open(path, "share:http://b")
    assert await moved.cursors() == {}  # the new receiver has nothing yet: capture again
    assert len(await moved.pending("ses_1", 10)) == 1  # pending survives
    await moved.close()


async def test_migration_layout_and_idempotence(tmp_path: Path) -> None:
    folders = migration_folders(MIGRATIONS)
    assert folders, "the state has at least its initial migration"
    for folder in folders:
        assert (folder / "migration.sql").is_file()
    async with aiosqlite.connect(tmp_path / "m.db") as db:
        assert await migrate(db, MIGRATIONS) == [f.name for f in folders]
        assert await migrate(db, MIGRATIONS) == []


async def test_upgrade_keeps_pending_items(tmp_path: Path) -> None:
    """A later migration applied to a state with pending items leaves them in place."""
    root = tmp_path / "migration"
    for folder in migration_folders(MIGRATIONS):
        (root / folder.name).mkdir(parents=True)
        (root / folder.name / "migration.sql").write_text((folder / "migration.sql").read_text())
    path = tmp_path / "state.db"
    async with aiosqlite.connect(path) as db:
        await migrate(db, root)
    store = await StateStore.open(path)
    await store.capture("ses_1", [("part", "p1")])
    await store.close()
    later = root / "29990101000000_add_note"
    later.mkdir()
    (later / "migration.sql").write_text("ALTER TABLE pending_item ADD COLUMN note TEXT;")
    async with aiosqlite.connect(path) as db:
        assert await migrate(db, root) == [later.name]
        async with db.execute("SELECT item_id FROM pending_item") as cursor:
            assert [row[0] for row in await cursor.fetchall()] == ["p1"]


async def test_pending_items_survive_the_move_to_one_b_tree(tmp_path: Path) -> None:
    """A state written before pending_item lost its rowid keeps its pending items."""
    root = tmp_path / "migration"
    first = migration_folders(MIGRATIONS)[0]
    (root / first.name).mkdir(parents=True)
    (root / first.name / "migration.sql").write_text((first / "migration.sql").read_text())
    path = tmp_path / "state.db"
    async with aiosqlite.connect(path) as db:
        await migrate(db, root)
        await db.execute(
            "INSERT INTO pending_item (session_id, kind, item_id, version, time_created) "
            "VALUES ('ses_1', 'part', 'p1', 3, 5)"
        )
        await db.commit()
    store = await StateStore.open(path)
    try:
        assert await store.pending("ses_1", 10) == [PendingItem("ses_1", "part", "p1", 3)]
    finally:
        await store.close()
    async with aiosqlite.connect(path) as db:
        sql = await db.execute_fetchall(
            "SELECT type, sql FROM sqlite_master WHERE tbl_name = 'pending_item'"
        )
    assert [row[0] for row in sql] == ["table"] and "WITHOUT ROWID" in sql[0][1]


async def test_bad_migration_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "not-a-migration").mkdir()
    with pytest.raises(UserError, match="must be named"):
        migration_folders(tmp_path)


async def test_unwritable_state_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot open the state database"):
        await StateStore.open(blocker / "state.db")


def test_pending_item_is_hashable() -> None:
    assert len({PendingItem("s", "part", "p", 1), PendingItem("s", "part", "p", 1)}) == 1


async def test_two_processes_opening_a_new_database_migrate_it_once(tmp_path: Path) -> None:
    """`syncd run` and `syncd serve` (or a test) opening the same new archive at once (one
    time in about ten, SQLite refused all but one their switch to WAL without waiting)."""
    for attempt in range(20):
        path = tmp_path / f"archive-{attempt}.db"
        stores = await asyncio.gather(*(ShareStore.open(path) for _ in range(4)))
        for store in stores:
            await store.close()
        async with aiosqlite.connect(path) as db, db.execute("SELECT COUNT(*) FROM migration") as c:
            assert (await c.fetchone())[0] == len(migration_folders(SERVE_MIGRATIONS))


async def test_a_read_never_sees_another_tasks_transaction_half_done(state: StateStore) -> None:
    class Abandoned(Exception):
        pass

    with pytest.raises(Abandoned):
        async with state._write() as db:  # a capture's transaction, held open
            await db.execute(UPSERT_PENDING, ("ses_1", "part", "p1", 1))
            read = asyncio.create_task(state.pending_sessions())
            await asyncio.sleep(0.1)
            raise Abandoned  # rolled back: ses_1 never had anything pending
    assert await read == {}


async def test_reads_and_writes_from_many_tasks_never_meet_a_malformed_database(
    state: StateStore,
) -> None:
    """The daemon's tasks share one connection: captures, acknowledgements and error notes
    while others list what is pending (under load this read "database disk image is malformed"
    when a read's statement stayed open across another task's writes)."""
    rng = random.Random(3)
    sessions = [f"ses_{index}" for index in range(40)]
    loop = asyncio.get_running_loop()
    end = loop.time() + 4.0

    async def capture() -> None:
        while loop.time() < end:
            keys = [("part", f"p{rng.randrange(200)}") for _ in range(rng.randrange(1, 30))]
            await state.capture(rng.choice(sessions), keys, time_updated=1)
            await asyncio.sleep(0)

    async def note_errors() -> None:
        while loop.time() < end:
            await state.record_error(rng.choice(sessions), "POST /api/share/x/sync: 503")
            await asyncio.sleep(0)

    async def acknowledge() -> None:
        while loop.time() < end:
            session = rng.choice(sessions)
            if items := await state.pending(session, 50):
                await state.ack(session, items[: rng.randrange(1, len(items) + 1)])
            await asyncio.sleep(0)

    async def list_pending() -> int:
        reads = 0
        while loop.time() < end:
            await state.pending_sessions()
            await state.pending_totals()
            reads += 1
        return reads

    writers = [capture, capture, note_errors, note_errors, acknowledge, acknowledge]
    *_, reads = await asyncio.gather(*(task() for task in writers), list_pending(), list_pending())
    assert reads > 0
