"""syncd's own SQLite databases (the state and the receiver store): opened the same way, written
in the same short transactions."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiosqlite

from .files import prepare_database_file, private_directory, refuse_links
from .migrate import migrate

# The files SQLite opens beside a WAL database, by name.
COMPANIONS = ("-wal", "-shm", "-journal")
BUSY_TIMEOUT_MS = 10_000


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
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await _use_wal(conn)
        for pragma in (f"synchronous = {synchronous}", "foreign_keys = ON"):
            await conn.execute(f"PRAGMA {pragma}")
        await migrate(conn, migrations)
    except BaseException:
        await conn.close()
        raise
    return conn


async def _use_wal(conn: aiosqlite.Connection) -> None:
    """Switch a new database to WAL. Processes opening it at once (`syncd run` and `syncd
    serve` on a new archive) all ask; SQLite answers all but one "database is locked" at
    once, without waiting in its busy handler, so ask again for as long as that would wait."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            await conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or loop.time() >= give_up:
                raise
        await asyncio.sleep(0.02)


async def fetch_all(
    conn: aiosqlite.Connection, lock: asyncio.Lock, sql: str, params: Iterable[Any] = ()
) -> list[Any]:
    """Every row of one query, run whole under the lock that `transaction` takes. A read that
    interleaves with another task's writes on the same connection sees a transaction half done,
    and a statement left pending while another task writes the table it walks has read
    "database disk image is malformed" (the state store did, under load)."""
    async with lock:
        return list(await conn.execute_fetchall(sql, tuple(params)))


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
