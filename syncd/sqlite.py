"""syncd's own SQLite databases (the state and the receiver store): opened the same way, written
in the same short transactions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite

from .files import prepare_database_file, private_directory, refuse_links
from .migrate import migrate

# The files SQLite opens beside a WAL database, by name.
COMPANIONS = ("-wal", "-shm", "-journal")


async def open_private(
    path: Path, migrations: Path, *, synchronous: str = "FULL"
) -> aiosqlite.Connection:
    """Create `path` (mode 0600 in a 0700 directory: both databases hold share secrets),
    open it in WAL mode and apply `migrations`. Raises UserError for a directory others can
    write or a linked file (`syncd.files`), OSError or aiosqlite.Error for the caller to word."""
    private_directory(path.parent)
    prepare_database_file(path)
    refuse_links(*(path.with_name(path.name + suffix) for suffix in COMPANIONS))
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
