"""syncd's own SQLite databases (the state and the receiver store): opened the same way, written
in the same short transactions."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite

from .migrate import migrate


async def open_private(
    path: Path, migrations: Path, *, synchronous: str = "FULL"
) -> aiosqlite.Connection:
    """Create `path` (mode 0600: both databases hold share secrets), open it in WAL mode and
    apply `migrations`. Raises OSError or aiosqlite.Error for the caller to word."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(path, 0o600)
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        for pragma in (
            "busy_timeout = 10000",
            "journal_mode = WAL",
            f"synchronous = {synchronous}",
            "foreign_keys = ON",
        ):
            await conn.execute(f"PRAGMA {pragma}")
        await migrate(conn, migrations)
    except BaseException:
        await conn.close()
        raise
    return conn


@contextlib.asynccontextmanager
async def transaction(
    conn: aiosqlite.Connection, lock: asyncio.Lock
) -> AsyncIterator[aiosqlite.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error. The lock keeps the other tasks
    sharing the connection out of a transaction that is half done."""
    async with lock:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        await conn.execute("COMMIT")
