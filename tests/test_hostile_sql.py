"""Hostile tests of syncd's own SQLite stores (syncd/sqlite.py, the state store, the archive):
cancellation, failing transactions and other processes holding the database."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from syncd.state.store import StateStore


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


async def wait_until(condition, seconds: float = 10) -> None:  # type: ignore[no-untyped-def]
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
    with pytest.raises(asyncio.CancelledError):
        await writer
    other_process.execute("COMMIT")
    await asyncio.wait_for(store.set_meta("k", "later"), 15)
    assert await store.meta("k") == "later"
    # and the daemon does not keep the write lock: another process can write at once
    other_process.execute("PRAGMA busy_timeout = 0")
    other_process.execute("BEGIN IMMEDIATE")
    other_process.execute("ROLLBACK")
