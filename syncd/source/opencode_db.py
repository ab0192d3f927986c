"""Read-only access to opencode's SQLite database.

Rules from CONTRACTS.md section 1: open with `mode=ro`, set a busy timeout, never change the
journal mode, never use `immutable=1`, and never leave a read transaction open between polls
(an open reader pins the WAL and stops checkpoints). Every read here is one statement in
autocommit mode or one short explicit transaction that ends before the call returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiosqlite

from ..errors import UserError
from ..model import Share
from ..sqlite import in_thread, query_rows
from . import json_store
from .storage import storage_dir

# What every opencode that keeps sessions in SQLite (1.2 onwards) has, and syncd cannot do
# without. Other `session` columns are read when the release has them: the fields they make
# are left out otherwise, as that release's own share leaves them out (docs/opencode-releases.md).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "session": (
        "id", "project_id", "slug", "directory", "title", "version", "time_created",
        "time_updated",
    ),
    "message": ("id", "session_id", "time_created", "time_updated", "data"),
    "part": ("id", "message_id", "session_id", "time_created", "time_updated", "data"),
}  # fmt: skip
# Optional: opencode's own shares (every SQLite release so far), and the journal, which some
# releases create and leave empty (1.14, 1.15) or write only behind a flag.
SHARE_COLUMNS: dict[str, tuple[str, ...]] = {"session_share": ("session_id", "id", "secret", "url")}
JOURNAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "event": ("aggregate_id", "seq", "type", "data"),
    "event_sequence": ("aggregate_id", "seq"),
}


class SchemaError(UserError):
    """The database is not one syncd can read (a newer opencode, or one still being created)."""


@dataclass(frozen=True)
class Schema:
    """What the database holds, as far as syncd reads it."""

    version: int  # PRAGMA schema_version: moves whenever opencode migrates
    missing: tuple[str, ...]  # required tables and columns it lacks; () when readable
    has_journal: bool
    has_shares: bool
    json_sessions: int = 0  # sessions read from JSON files that the database does not have


NO_SCHEMA = Schema(version=-1, missing=(), has_journal=False, has_shares=False)
Row = dict[str, Any]
T = TypeVar("T")
SQLITE_HEADER = b"SQLite format 3\x00"


@dataclass(frozen=True)
class FileIdentity:
    """Which file a path names, and how large it is: a database deleted, recreated, renamed
    over or truncated while syncd reads it shows here, not in SQLite (an open connection
    keeps reading the file it opened)."""

    device: int
    inode: int
    size: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity | None:
        try:
            found = path.stat()
        except OSError:
            return None
        return cls(found.st_dev, found.st_ino, found.st_size)


class OpencodeDb:
    """One long-lived read-only connection to opencode.db, and the JSON sessions under its
    `storage/` (json_store). Its schema is read when opened and again whenever opencode
    migrates it (`refresh_schema`): an unreadable one does not stop the connection, only the
    reads (`readable` raises SchemaError naming what is missing). Without a database file,
    the JSON sessions are read alone, until opencode creates its database. The file at `path`
    is followed, not the one first opened: `moved` tells when it was replaced, `reopen`
    connects to the one there now."""

    def __init__(self, path: Path, busy_timeout_ms: int = 5000) -> None:
        self.path = path
        self.storage = storage_dir(path)  # opencode's JSON files beside the database
        self._conn: aiosqlite.Connection | None = None
        self._busy_timeout_ms = busy_timeout_ms
        self._attached = False  # False: no database file yet, JSON sessions alone
        self.identity: FileIdentity | None = None  # the database file open, when attached
        self.schema = NO_SCHEMA
        # The JSON files must be read again before the next look (json_store.refresh).
        self.json_stale = True
        # Session workers share the connection; their snapshots take turns.
        self._snapshot_lock = asyncio.Lock()
        # Reads in flight per connection: a replaced connection is closed by its last reader.
        self._readers: Counter[aiosqlite.Connection] = Counter()

    @property
    def has_journal(self) -> bool:
        return self.schema.has_journal

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @classmethod
    async def open(cls, path: Path, busy_timeout_ms: int = 5000) -> OpencodeDb:
        """The database at `path` (or its JSON sessions), open; UserError naming why not,
        with nothing left open."""
        db = cls(path, busy_timeout_ms)
        try:
            await db.reopen()
        except BaseException:
            await db.close()
            raise
        return db

    async def reopen(self) -> None:
        """Read from the file now at `path` from here on (the first time: open it), and its
        schema; snapshots in progress end on the old connection first. UserError when there
        is nothing to read (the new connection, if made, stays, so that a schema error is
        reported by `readable` as usual)."""
        if not self.path.is_file() and not json_store.has_sessions(self.storage):
            raise UserError(
                f"opencode database not found at {self.path}, and no JSON sessions under "
                f"{self.storage}: run opencode once, or point syncd at its database with --db "
                "(`opencode db path` prints it)"
            )
        await self._swap(*await _connect(self.path, self._busy_timeout_ms))
        await self.refresh_schema()

    def moved(self) -> str | None:
        """How the file at `path` differs from the database file open: "deleted", "replaced"
        (another file under the name), "truncated" (smaller than it was), or None (also while
        no file is open: `refresh_schema` attaches one that appears)."""
        if self.identity is None:
            return None
        now = FileIdentity.of(self.path)
        if now is None:
            return "deleted"
        if (now.device, now.inode) != (self.identity.device, self.identity.inode):
            return "replaced"
        if now.size < self.identity.size:
            return "truncated"
        self.identity = now
        return None

    async def refresh_schema(self) -> Schema:
        """The schema as it is now, read again when opencode has migrated it or the JSON
        sessions have moved."""
        if not self._attached and self.path.is_file():  # opencode created it now
            await self._swap(*await _connect(self.path, self._busy_timeout_ms))
        conn = self._require()
        async with self._snapshot_lock:
            try:
                version = int((await self.one("PRAGMA main.schema_version"))[0])
                json_moved = self.json_stale and self.storage.is_dir()
                if json_moved:
                    await json_store.refresh(conn, self.storage)
                self.json_stale = False
                if version != self.schema.version or json_moved:
                    self.schema = await _read_schema(conn, version)
            except (sqlite3.Error, ValueError) as exc:  # ValueError: a closed connection
                raise UserError(f"cannot read opencode database {self.path}: {exc}") from exc
        return self.schema

    async def readable(self) -> None:
        """Raises SchemaError, naming everything missing, unless syncd can read the database
        as it is now."""
        schema = await self.refresh_schema()
        if schema.missing:
            raise SchemaError(
                f"opencode database {self.path} has a schema syncd cannot read: missing "
                f"{', '.join(schema.missing)} (a newer opencode? upgrade syncd); syncd keeps "
                "checking and delivers once it can read it"
            )

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await _close(conn)

    async def _swap(self, conn: aiosqlite.Connection, identity: FileIdentity | None) -> None:
        """Read through `conn` from now on; the old connection closes once its reads end."""
        async with self._snapshot_lock:
            old, self._conn = self._conn, conn
            self._attached, self.identity = identity is not None, identity
            self.schema, self.json_stale = NO_SCHEMA, True
        if old is not None and not self._readers[old]:
            await _close(old)

    def _require(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise UserError(f"the opencode database {self.path} is not open")
        return self._conn

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection for one read; a failed read is a UserError naming the database
        (corrupted, unreadable, gone), never a raw sqlite3 error."""
        conn = self._require()
        self._readers[conn] += 1
        try:
            yield conn
        except (sqlite3.Error, ValueError) as exc:  # ValueError: a connection closed under it
            raise UserError(f"cannot read opencode database {self.path}: {exc}") from exc
        finally:
            self._readers[conn] -= 1
            if conn is not self._conn and not self._readers[conn]:
                del self._readers[conn]
                await _close(conn)

    async def data_version(self) -> int:
        """Changes whenever another connection commits: the cheap "did anything change?".
        Without a database file yet, it changes when the file appears."""
        if not self._attached:
            return -2 if self.path.is_file() else -1
        return int((await self.one("PRAGMA data_version"))[0])

    async def one(self, sql: str, params: Iterable[Any] = ()) -> aiosqlite.Row:
        rows = await self.rows(sql, params)
        assert rows, sql
        return rows[0]

    async def rows(self, sql: str, params: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        # One hand-off to the connection's thread (execute, fetch and close would be three), so
        # no statement stays open across an await while a JSON refresh rewrites its tables.
        query = functools.partial(query_rows, sql=sql, params=tuple(params))
        async with self._reading() as conn:
            return await in_thread(conn, functools.partial(_decoding, work=query))

    async def is_shared(self, session_id: str) -> bool:
        """Whether opencode shares the session: its `session_share` row, or its share url."""
        rows = await self.rows(
            "SELECT 1 FROM session WHERE id = ? AND (share_url IS NOT NULL OR EXISTS "
            "(SELECT 1 FROM session_share WHERE session_id = session.id))",
            (session_id,),
        )
        return bool(rows)

    async def share_of(self, session_id: str) -> Share | None:
        """The share opencode itself made of `session_id` (its `session_share` row), if any."""
        if not self.schema.has_shares:
            return None
        rows = await self.rows(
            "SELECT id, secret, url FROM session_share WHERE session_id = ?", (session_id,)
        )
        if not rows or not all(isinstance(value, str) and value for value in rows[0]):
            return None
        return Share(id=rows[0][0], secret=rows[0][1], url=rows[0][2])

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[OpencodeDb]:
        """A consistent view across several reads, ended before control returns to the loop
        that waits for the next wake-up."""
        async with self._snapshot_lock, self._reading() as conn, _read_transaction(conn):
            yield self

    async def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work(connection)` in one snapshot, as one hand-off to the connection's thread: the
        reads of a session (its keys, its rows) without a round trip per statement."""
        async with self._snapshot_lock, self._reading() as conn:
            return await in_thread(conn, functools.partial(_in_snapshot, work=work))


def _in_snapshot(db: sqlite3.Connection, *, work: Callable[[sqlite3.Connection], T]) -> T:
    db.execute("BEGIN")
    try:
        return _decoding(db, work=work)
    finally:
        db.execute("COMMIT")


@contextlib.asynccontextmanager
async def _read_transaction(conn: aiosqlite.Connection) -> AsyncIterator[None]:
    """One view across several reads. The BEGIN runs on the connection's thread even when
    its caller is cancelled while it waits there, so what ends it is queued behind it and
    looks whether one began: a read transaction left open would pin an old snapshot (no new
    change seen, opencode's WAL never checkpointed) and refuse every later BEGIN."""
    try:
        await conn.execute("BEGIN")
        yield
    finally:
        await in_thread(conn, _end_read)


def _end_read(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        db.execute("COMMIT")


def _decoding(db: sqlite3.Connection, *, work: Callable[[sqlite3.Connection], T]) -> T:
    """`work(db)` with text decoded by SQLite's C code; again, if some text was not UTF-8,
    with that text read as bytes (`_text`), so that the one row holding it is reported
    instead of the whole read failing. (A Python text factory on every value cost more than
    the rest of the read.)"""
    try:
        return work(db)
    except sqlite3.OperationalError as error:
        if "decode to UTF-8" not in str(error):
            raise
    db.text_factory = _text
    try:
        return work(db)
    finally:
        db.text_factory = str


def _text(raw: bytes) -> str | bytes:
    """TEXT as str; text that is not valid UTF-8 stays bytes, so that the one row holding it
    is reported (syncdata.BadRow) instead of the whole query failing on it."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


async def _connect(
    path: Path, busy_timeout_ms: int
) -> tuple[aiosqlite.Connection, FileIdentity | None]:
    """A read-only connection to the database and the file it is, or, while there is none, an
    empty in-memory one (the JSON sessions' TEMP tables need a connection) and None. UserError
    naming why not, the connection closed (its thread would keep the process alive)."""
    attached = path.is_file()
    if attached and not is_sqlite(path):
        raise UserError(
            f"{path} is not an SQLite database: point --db (or db in the config file) at "
            "opencode's database (`opencode db path` prints it)"
        )
    identity = FileIdentity.of(path) if attached else None
    uri = f"file:{quote(str(path.resolve()))}?mode=ro" if attached else ":memory:"
    conn = None
    try:
        conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.row_factory = aiosqlite.Row
        await json_store.create_tables(conn)
    except (sqlite3.Error, OSError) as exc:
        if conn is not None:
            await _close(conn)
        raise UserError(f"cannot read opencode database {path}: {exc}") from exc
    return conn, identity


def is_sqlite(path: Path) -> bool:
    """Whether the file at `path` is an SQLite database, or empty (one being created)."""
    try:
        with path.open("rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except OSError:
        return True  # unreadable: opening it says why
    return not header or header == SQLITE_HEADER


async def _close(conn: aiosqlite.Connection) -> None:
    with contextlib.suppress(Exception):  # a broken database may fail even to close
        await conn.close()


async def _read_schema(conn: aiosqlite.Connection, version: int) -> Schema:
    """The database's tables and columns (`main`: TEMP views may shadow them), and the TEMP
    views over them and the JSON sessions, made to match."""
    # One transaction: the version read belongs to the tables read with it.
    async with _read_transaction(conn):
        async with conn.execute(
            "SELECT name FROM main.sqlite_master WHERE type = 'table'"
        ) as cursor:
            tables = [row[0] for row in await cursor.fetchall()]
        columns: dict[str, set[str]] = {}
        for table in tables:
            async with conn.execute(f"PRAGMA main.table_info(`{table}`)") as cursor:
                columns[table] = {row[1] for row in await cursor.fetchall()}
        json_sessions = await _count(
            conn,
            "SELECT count(*) FROM json_session AS j WHERE NOT EXISTS "
            "(SELECT 1 FROM main.session AS s WHERE s.id = j.id)"
            if "session" in columns
            else "SELECT count(*) FROM json_session",
        )
    sessions_tables = [kind for kind in json_store.TABLES if kind in columns]
    if not sessions_tables and json_sessions:
        views = json_store.view_statements(None)  # no database yet: the JSON sessions alone
        missing: tuple[str, ...] = ()
    else:
        missing = _missing(columns, REQUIRED_COLUMNS)
        together = json_sessions and not missing
        views = json_store.view_statements(columns) if together else []
        json_sessions = json_sessions if together else 0
    for statement in json_store.drop_view_statements() + views:
        await conn.execute(statement)
    return Schema(
        version=version,
        missing=missing,
        has_journal=not _missing(columns, JOURNAL_COLUMNS),
        has_shares=not _missing(columns, SHARE_COLUMNS),
        json_sessions=json_sessions,
    )


async def _count(conn: aiosqlite.Connection, sql: str) -> int:
    async with conn.execute(sql) as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


def _missing(columns: dict[str, set[str]], wanted: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """Every missing table and column, named the way a user can look them up."""
    missing: list[str] = []
    for table, names in wanted.items():
        if table not in columns:
            missing.append(f"table {table}")
            continue
        missing.extend(f"column {table}.{name}" for name in names if name not in columns[table])
    return tuple(missing)
