"""Hostile tests of syncd's own SQLite stores (syncd/sqlite.py, the state store, the archive):
cancellation, failing transactions and other processes holding the database."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiosqlite
import pytest
from structlog.testing import capture_logs

from syncd.archive.sqlite import SqliteArchive
from syncd.errors import UserError
from syncd.migrate import migrate
from syncd.pipeline.deliver import RetryPolicy
from syncd.pipeline.pipeline import Pipeline
from syncd.source.opencode_db import OpencodeDb, _read_schema
from syncd.sqlite import in_thread
from syncd.state.store import StateError, StateStore
from tests.support.archive_check import make_config


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[StateStore]:
    state = await StateStore.open(tmp_path / "state.db")
    try:
        yield state
    finally:
        await state.close()


@pytest.fixture
def other_process(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection to the state file, as `syncd dead-letters retry` would hold it."""
    conn = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    try:
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


async def wait_until(condition: Callable[[], object], seconds: float = 10) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.005)


async def test_a_transaction_cancelled_while_its_begin_waits_leaves_the_connection_usable(
    store: StateStore, other_process: sqlite3.Connection
) -> None:
    """A caller cancelled (shutdown, a client gone) while its BEGIN IMMEDIATE waits for another
    process's write lock: the BEGIN still runs on the connection's thread once the lock frees.
    Nothing may stay open after it, or every later write fails ("cannot start a transaction
    within a transaction") and the daemon holds the file's write lock for good."""
    other_process.execute("BEGIN IMMEDIATE")
    writer = asyncio.create_task(store.set_meta("k", "cancelled"))
    await wait_until(store._lock.locked)  # the writer holds the lock: it awaits its BEGIN
    writer.cancel()
    other_process.execute("COMMIT")
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(writer, 15)
    await asyncio.wait_for(store.set_meta("k", "later"), 15)
    assert await store.meta("k") == "later"
    # and the daemon does not keep the write lock: another process can write at once
    other_process.execute("PRAGMA busy_timeout = 0")
    other_process.execute("BEGIN IMMEDIATE")
    other_process.execute("ROLLBACK")


def _snapshot(db: OpencodeDb) -> Awaitable[object]:
    return db.snapshot().__aenter__()


def _schema(db: OpencodeDb) -> Awaitable[object]:
    assert db._conn is not None
    return _read_schema(db._conn, db.schema.version)


@pytest.mark.parametrize("read", [_snapshot, _schema])
async def test_a_source_read_cancelled_before_its_begin_ran_leaves_no_read_transaction_open(
    sample_db: Path, read: Callable[[OpencodeDb], Awaitable[object]]
) -> None:
    """The source's snapshot, or its schema read (at every schema change), cancelled
    (shutdown, a reload stopped, `syncd sync` giving up) while its BEGIN waits its turn on
    the connection's thread: the BEGIN runs all the same. A read transaction left open would
    pin an old snapshot (syncd sees no new change, opencode's WAL cannot be checkpointed) and
    every later snapshot fails."""
    db = await OpencodeDb.open(sample_db)
    try:
        conn = db._conn
        assert conn is not None
        started, gate = threading.Event(), threading.Event()

        def hold(_: sqlite3.Connection) -> None:
            started.set()
            gate.wait(10)

        busy = asyncio.create_task(in_thread(conn, hold))
        await wait_until(started.is_set)
        reading = asyncio.create_task(read(db))
        await wait_until(lambda: conn._tx.qsize() > 0)  # its BEGIN waits behind `hold`
        reading.cancel()
        gate.set()
        await busy
        with pytest.raises(asyncio.CancelledError):
            await reading
        async with asyncio.timeout(10), db.snapshot():
            assert await db.rows("SELECT 1")
        assert not await in_thread(conn, lambda c: c.in_transaction)
    finally:
        await db.close()


def _fill(db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO meta (key, value) VALUES ('big', ?)", ("x" * 1_000_000,))


def _small_write(key: str) -> Callable[[sqlite3.Connection], str]:
    def work(db: sqlite3.Connection) -> str:
        db.execute("INSERT INTO meta (key, value) VALUES (?, 'v')", (key,))
        return key

    return work


async def _cap_size(store: StateStore) -> None:
    """The file may not grow any more: SQLite's SQLITE_FULL, as on a full disk."""
    pages = (await store._rows("PRAGMA page_count"))[0][0]
    await store._rows(f"PRAGMA max_page_count = {pages + 2}")


async def test_a_full_disk_in_a_grouped_write_fails_every_write_of_the_group_naming_the_cause(
    store: StateStore,
) -> None:
    """SQLITE_FULL rolls the whole transaction back by itself: the writes grouped with the
    failing one are undone too, so each must fail, and with the cause ("full"), not a
    "no such savepoint" that sends whoever reads the log looking for a bug."""
    await _cap_size(store)
    outcomes = await asyncio.wait_for(
        asyncio.gather(
            store._writer(_small_write("before")),
            store._writer(_fill),
            store._writer(_small_write("after")),
            return_exceptions=True,
        ),
        15,
    )
    assert await store.meta("before") is None and await store.meta("after") is None
    assert all(isinstance(o, sqlite3.OperationalError) for o in outcomes), outcomes
    assert all("full" in str(o) for o in outcomes), outcomes


async def test_a_full_disk_in_a_transaction_is_reported_as_such(store: StateStore) -> None:
    await _cap_size(store)
    with pytest.raises(StateError, match=f"{re.escape(str(store.path))} failed: .*full"):
        await asyncio.wait_for(store.set_meta("big", "x" * 1_000_000), 15)
    await store.set_meta("small", "fits")  # not stuck in a transaction
    assert await store.meta("small") == "fits"


async def test_a_full_disk_and_a_read_only_state_each_say_what_to_do(store: StateStore) -> None:
    """The one line names the remedy for the failure at hand: "free disk space" for a full
    disk only, not for a file system remounted read-only (SQLite's SQLITE_READONLY, made here
    without a file system of its own)."""
    await _cap_size(store)
    with pytest.raises(StateError, match="free disk space") as full:
        await asyncio.wait_for(store.set_meta("big", "x" * 1_000_000), 15)
    assert "writable" not in str(full.value)
    await in_thread(store._conn, lambda db: db.execute("PRAGMA query_only = 1"))
    with pytest.raises(StateError, match="make it writable again") as read_only:
        await asyncio.wait_for(store.set_meta("small", "x"), 15)
    assert "disk space" not in str(read_only.value)


async def test_a_delivery_whose_state_cannot_be_written_is_logged_not_lost_in_a_dead_task(
    tmp_path: Path, sample_db: Path
) -> None:
    """The receiver took the batch but the state refuses the acknowledgement (a full disk,
    another process's lock): the error must reach syncd's log, and the daemon's worker must
    not die with it unlogged because recording the error in the same state failed too."""
    pipeline = await Pipeline.open(make_config(tmp_path, sample_db), RetryPolicy())
    try:
        await pipeline.capture()
        await pipeline.window.cancel()  # deliver by hand, below
        [session_id, *_] = await pipeline.state.pending_sessions()
        await pipeline.state._rows("PRAGMA query_only = 1")  # every state write fails
        with capture_logs() as logs:
            await asyncio.wait_for(pipeline.deliver(session_id), 30)
        assert [e for e in logs if e["event"] == "delivery stopped; items stay pending"], logs
        assert session_id in await pipeline.state.pending_sessions()  # nothing lost
    finally:
        await pipeline.state._rows("PRAGMA query_only = 0")
        await pipeline.close()


async def test_a_grouped_write_whose_caller_gave_up_while_the_lock_was_held_is_not_made(
    store: StateStore,
) -> None:
    """The group waits for the connection's lock (a long read, a transaction): a caller that
    gives up meanwhile has had no turn yet, so its write must not be made behind its back."""
    async with store._lock:
        given_up = asyncio.create_task(store._writer(_small_write("given-up")))
        await wait_until(lambda: bool(store._lock._waiters))  # its group waits for the lock
        given_up.cancel()
    assert await asyncio.wait_for(store._writer(_small_write("kept")), 10) == "kept"
    assert given_up.cancelled()
    assert await store.meta("given-up") is None


async def test_closing_the_store_with_writes_queued_answers_every_write(
    store: StateStore,
) -> None:
    """Shutdown closes the state while grouped writes wait for a long transaction: each is
    answered (made, or an error), none waits for ever."""
    async with store._lock:
        writes = [asyncio.create_task(store._writer(_small_write(f"w{n}"))) for n in range(3)]
        await wait_until(lambda: bool(store._lock._waiters))
        closing = asyncio.create_task(store.close())
    outcomes = await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), 10)
    await asyncio.wait_for(closing, 10)
    assert len(outcomes) == 3


async def test_a_capture_the_state_refuses_is_told_in_words_naming_the_state(
    tmp_path: Path, sample_db: Path
) -> None:
    """A full disk (or a lock held by another process past busy_timeout) under the state
    while the daemon captures: either one line naming the state database (UserError: the
    CLI's clean exit) or the daemon keeps going and logs an error naming it; never a bare
    sqlite3 error escaping `syncd run` as a traceback."""
    config = make_config(tmp_path, sample_db)
    pipeline = await Pipeline.open(config, RetryPolicy(), daemon=True)
    try:
        await pipeline.state._rows("PRAGMA query_only = 1")  # every state write fails
        try:
            with capture_logs() as logs:
                await asyncio.wait_for(pipeline.look(deep=True), 30)
        except UserError as error:
            assert str(config.state) in str(error)
        else:
            errors = [e for e in logs if e["log_level"] == "error"]
            assert any(str(config.state) in str(e) for e in errors), logs
    finally:
        await pipeline.state._rows("PRAGMA query_only = 0")
        await pipeline.window.cancel()
        await pipeline.close()


async def test_a_migration_on_a_full_disk_fails_naming_the_cause(tmp_path: Path) -> None:
    """An upgrade on a nearly full disk: the migration's own error ("full") is the one the
    user reads, not a ROLLBACK's "no transaction is active", and nothing of it is applied."""
    root = tmp_path / "migration"
    (root / "20260101000000_grow").mkdir(parents=True)
    (root / "20260101000000_grow" / "migration.sql").write_text(
        "CREATE TABLE grown (x);\nINSERT INTO grown VALUES (randomblob(1000000));\n"
    )
    async with aiosqlite.connect(tmp_path / "m.db", isolation_level=None) as db:
        await db.execute("CREATE TABLE IF NOT EXISTS migration (id TEXT PRIMARY KEY, "
                         "time_completed INTEGER NOT NULL)")  # fmt: skip
        pages = (await db.execute_fetchall("PRAGMA page_count"))[0][0]  # type: ignore[index]
        await db.execute(f"PRAGMA max_page_count = {pages + 2}")
        with pytest.raises(sqlite3.OperationalError, match="full"):
            await migrate(db, root)
        assert not await db.execute_fetchall("SELECT * FROM migration")


async def test_the_archive_keeps_taking_writes_after_a_create_share_cancelled_in_its_begin(
    tmp_path: Path,
) -> None:
    """`syncd serve` and a local-transport `syncd run` share one archive file. A capnweb
    session that closes cancels its worker; if that worker's createShare waited in BEGIN for
    the other process, the receiver must not be left refusing every later write."""
    archive = await SqliteArchive.open(tmp_path / "archive.db")
    other = sqlite3.connect(tmp_path / "archive.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        creating = asyncio.create_task(archive.create_share("ses_gone", "http://127.0.0.1:1"))
        await wait_until(archive._lock.locked)  # it waits in its BEGIN
        creating.cancel()
        other.execute("COMMIT")
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(creating, 15)
        share = await asyncio.wait_for(archive.create_share("ses_next", "http://127.0.0.1:1"), 15)
        assert await archive.sync(share.id, share.secret, []) == 1
    finally:
        other.close()
        await archive.close()


async def test_dead_letters_discarded_and_requeued_count_only_those_that_existed(
    store: StateStore,
) -> None:
    await store.capture("ses_1", [("part", "p1"), ("part", "p2"), ("part", "p3")])
    pending = await store.pending("ses_1", 10)
    await store.dead_letter("ses_1", [(item, None) for item in pending], "refused")
    first, second, third = [letter["id"] for letter in await store.dead_letters()]
    assert await store.discard_dead_letters([first, first + 1000]) == 1
    assert await store.requeue_dead_letters({second: {("part", "p2")}, first: set()}) == [second]
    assert [letter["id"] for letter in await store.dead_letters()] == [third]
    assert [item.item_id for item in await store.pending("ses_1", 10)] == ["p2"]
