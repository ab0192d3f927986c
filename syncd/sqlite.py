"""syncd's own SQLite databases (the state and the receiver store): opened the same way, written
in the same short transactions."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from .errors import UserError
from .files import prepare_database_file, private_directory, refuse_links
from .migrate import migrate, migration_folders

# The files SQLite opens beside a WAL database, by name.
COMPANIONS = ("-wal", "-shm", "-journal")
BUSY_TIMEOUT_MS = 10_000
T = TypeVar("T")


# What frees a database of SQLite's failure, by its primary result code.
_REMEDIES = {
    sqlite3.SQLITE_FULL: "free disk space",
    sqlite3.SQLITE_READONLY: "make it writable again (a file system mounted read-only, or the "
    "file's or its directory's mode)",
    sqlite3.SQLITE_BUSY: "stop what holds it locked",
    sqlite3.SQLITE_LOCKED: "stop what holds it locked",
    sqlite3.SQLITE_IOERR: "check the disk it is on",
    sqlite3.SQLITE_CANTOPEN: "check that its directory exists and can be written",
    sqlite3.SQLITE_CORRUPT: "move it aside (a new one is made; every session is sent again)",
    sqlite3.SQLITE_NOTADB: "move it aside (a new one is made; every session is sent again)",
}


def primary_code(error: sqlite3.Error) -> int | None:
    """SQLite's primary result code of `error`; None for an error the sqlite3 module raised
    itself (a ProgrammingError, say), which carries none."""
    code = getattr(error, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def remedy(error: sqlite3.Error) -> str:
    """What to do about `error`, in words for a one-line message."""
    code = primary_code(error)
    known = _REMEDIES.get(code) if code is not None else None
    return known or "free disk space or stop what holds it"


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
        await _refuse_foreign(conn, path, migrations)
        await _use_wal(conn)
        for pragma in (f"synchronous = {synchronous}", "foreign_keys = ON"):
            await conn.execute(f"PRAGMA {pragma}")
        await migrate(conn, migrations)
    except BaseException:
        await conn.close()
        raise
    return conn


async def _refuse_foreign(conn: aiosqlite.Connection, path: Path, migrations: Path) -> None:
    """UserError for a database with tables but without the first of `migrations` applied:
    another program's (opencode's own, given as --state), or syncd's other store. syncd would
    create its tables in it, and record its migrations in opencode's own `migration` table."""
    async with conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'") as cursor:
        tables = sorted(row[0] for row in await cursor.fetchall())
    if tables in ([], ["migration"]):  # new, or made by a start that stopped before migrating
        return
    if "migration" in tables:
        first = migration_folders(migrations)[0].name
        async with conn.execute("SELECT 1 FROM migration WHERE id = ?", (first,)) as cursor:
            if await cursor.fetchone() is not None:
                return
    shown = ", ".join(tables[:4]) + (", ..." if len(tables) > 4 else "")
    raise UserError(
        f"{path} is not a database of syncd's (it holds the tables {shown}), and syncd writes "
        "only into its own: give --state and --archive (or state and archive in the config "
        "file) paths of their own"
    )


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


async def read_whole(
    conn: aiosqlite.Connection, lock: asyncio.Lock, work: Callable[[sqlite3.Connection], T]
) -> T:
    """`work(connection)` run whole, in one hand-off, under the lock that `transaction` takes.
    A read that interleaves with another task's writes on the same connection sees a
    transaction half done, and a statement left pending while another task writes the table it
    walks has read "database disk image is malformed" (the state store did, under load)."""
    async with lock:
        return await in_thread(conn, work)


async def fetch_all(
    conn: aiosqlite.Connection, lock: asyncio.Lock, sql: str, params: Iterable[Any] = ()
) -> list[Any]:
    """Every row of one query (`read_whole`)."""
    return await read_whole(conn, lock, functools.partial(query_rows, sql=sql, params=params))


def query_rows(db: sqlite3.Connection, *, sql: str, params: Iterable[Any] = ()) -> list[Any]:
    return db.execute(sql, tuple(params)).fetchall()


@contextlib.asynccontextmanager
async def transaction(
    conn: aiosqlite.Connection, lock: asyncio.Lock
) -> AsyncIterator[aiosqlite.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error. The lock keeps the other tasks
    sharing the connection out of a transaction that is half done. A statement whose caller is
    cancelled still runs on the connection's thread (a BEGIN waiting for another process's
    lock, a COMMIT), so what ends the transaction is queued behind it and looks whether one
    is open: none may outlive the lock."""
    async with lock:
        try:
            await conn.execute("BEGIN IMMEDIATE")
            yield conn
            await conn.execute("COMMIT")
        except BaseException:
            await in_thread(conn, roll_back)
            raise


def roll_back(db: sqlite3.Connection) -> None:
    """Roll back the transaction open on `db`, if any: a failed COMMIT may leave it open, and
    SQLite rolls one back by itself on some errors (SQLITE_FULL, SQLITE_IOERR), where a bare
    ROLLBACK would raise and hide the error that caused it."""
    if db.in_transaction:
        db.execute("ROLLBACK")


async def in_thread(conn: aiosqlite.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """`work(connection)` on `conn`'s own thread, in one hand-off. Every awaited aiosqlite call
    is a round trip to that thread and back (two thread switches and a wake-up of the event
    loop), and those round trips, not SQLite, were most of a backfill's time. aiosqlite has no
    public call for this; `_execute` is the one its own methods queue their work with."""
    return await conn._execute(work, conn._conn)


Outcome = tuple[bool, Any]  # (succeeded, its value or its exception)
Queued = tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]  # a write, its answer


class GroupWriter:
    """The writes many tasks make to one connection, grouped: the writes queued while one
    transaction commits all go into the next, each in its own savepoint (a write that raises
    rolls back alone and its caller gets the exception), in one hand-off to the connection's
    thread. A write is answered only once the transaction holding it has committed, so an
    answer is as durable as before, while N concurrent writes cost one commit (one fsync under
    synchronous=FULL) instead of N. A write alone is committed at once."""

    def __init__(self, conn: aiosqlite.Connection, lock: asyncio.Lock) -> None:
        self._conn = conn
        self._lock = lock  # shared with the connection's other transactions
        self._queue: list[Queued] = []
        self._flushing: asyncio.Task[None] | None = None

    async def __call__(self, work: Callable[[sqlite3.Connection], T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((work, future))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._queue:
                group: list[Queued] = []
                try:
                    async with self._lock:
                        # Taken once the lock is ours: a caller that gave up while another
                        # transaction held it has had no turn, and its write is not made.
                        group = [(w, f) for w, f in self._queue if not f.cancelled()]
                        self._queue = []
                        works = [work for work, _ in group]
                        outcomes = await in_thread(
                            self._conn, functools.partial(_commit_group, works=works)
                        )
                except Exception as error:  # BEGIN or COMMIT failed: none of them happened
                    outcomes = [(False, error)] * len(group)
                except BaseException:  # cancelled (shutdown): no caller waits for ever
                    for _, future in group + self._queue:
                        future.cancel()
                    self._queue = []
                    raise
                for (_, future), (ok, value) in zip(group, outcomes, strict=True):
                    if future.done():
                        continue  # its caller was cancelled while the group committed
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        finally:
            self._flushing = None


def _commit_group(
    db: sqlite3.Connection, *, works: list[Callable[[sqlite3.Connection], Any]]
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    db.execute("BEGIN IMMEDIATE")
    try:
        for work in works:
            db.execute("SAVEPOINT write")
            try:
                outcomes.append((True, work(db)))
            except Exception as error:
                if not db.in_transaction:  # SQLite rolled all back (SQLITE_FULL, SQLITE_IOERR)
                    raise
                db.execute("ROLLBACK TO write")
                outcomes.append((False, error))
            db.execute("RELEASE write")
        db.execute("COMMIT")
    except BaseException:
        roll_back(db)
        raise
    return outcomes
