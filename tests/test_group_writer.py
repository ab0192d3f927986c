"""syncd/sqlite.py GroupWriter: concurrent writes share one transaction and one commit, yet
each succeeds or fails on its own, and none is answered before it is committed."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiosqlite
import pytest

from syncd.sqlite import GroupWriter


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    conn = await aiosqlite.connect(tmp_path / "w.db", isolation_level=None)
    await conn.execute("PRAGMA journal_mode = WAL")
    await conn.execute("PRAGMA busy_timeout = 0")
    await conn.execute("CREATE TABLE t (name TEXT PRIMARY KEY)")
    try:
        yield conn
    finally:
        await conn.close()


def insert(name: str, fail: bool = False) -> Callable[[sqlite3.Connection], str]:
    def work(db: sqlite3.Connection) -> str:
        db.execute("INSERT INTO t (name) VALUES (?)", (name,))
        if fail:
            raise LookupError(f"{name} refused")
        return name

    return work


async def names(db: aiosqlite.Connection) -> list[str]:
    return [row[0] for row in await db.execute_fetchall("SELECT name FROM t ORDER BY name")]


async def test_concurrent_writes_share_one_commit_and_each_fails_alone(
    db: aiosqlite.Connection,
) -> None:
    statements: list[str] = []
    await db.set_trace_callback(statements.append)
    writer = GroupWriter(db, asyncio.Lock())
    outcomes = await asyncio.gather(
        *(writer(insert(f"w{n}", fail=n == 3)) for n in range(10)), return_exceptions=True
    )
    assert [str(o) for o in outcomes] == [f"w{n}" if n != 3 else "w3 refused" for n in range(10)]
    assert isinstance(outcomes[3], LookupError)
    assert await names(db) == [f"w{n}" for n in range(10) if n != 3]  # w3 rolled back alone
    assert statements.count("COMMIT") < 10  # grouped (all ten were queued before the first)


async def test_a_write_alone_is_committed_at_once(db: aiosqlite.Connection) -> None:
    writer = GroupWriter(db, asyncio.Lock())
    assert await asyncio.wait_for(writer(insert("alone")), 10) == "alone"
    assert await names(db) == ["alone"]


async def test_when_the_transaction_cannot_start_every_write_of_the_group_fails(
    db: aiosqlite.Connection, tmp_path: Path
) -> None:
    holder = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        writer = GroupWriter(db, asyncio.Lock())
        outcomes = await asyncio.gather(
            writer(insert("a")), writer(insert("b")), return_exceptions=True
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert all(isinstance(o, sqlite3.OperationalError) for o in outcomes), outcomes
    assert await names(db) == []
    assert await GroupWriter(db, asyncio.Lock())(insert("later")) == "later"  # not stuck


async def test_a_write_whose_caller_gave_up_before_its_turn_is_not_made(
    db: aiosqlite.Connection,
) -> None:
    writer = GroupWriter(db, asyncio.Lock())
    given_up = asyncio.create_task(writer(insert("given-up")))
    await asyncio.sleep(0)  # queued, its group not started yet
    given_up.cancel()
    assert await writer(insert("kept")) == "kept"
    assert given_up.cancelled()
    assert await names(db) == ["kept"]
