"""Read-only access to opencode's SQLite database.

Rules from CONTRACTS.md section 1: open with `mode=ro`, set a busy timeout, never change the
journal mode, never use `immutable=1`, and never leave a read transaction open between polls
(an open reader pins the WAL and stops checkpoints). Every read here is one statement in
autocommit mode or one short explicit transaction that ends before the call returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiosqlite

from ..errors import UserError
from ..model import Share

# Columns syncd reads; a database without them is a schema syncd does not know.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "session": (
        "id", "project_id", "workspace_id", "parent_id", "slug", "directory", "path", "title",
        "version", "share_url", "summary_additions", "summary_deletions", "summary_files",
        "summary_diffs", "metadata", "cost", "tokens_input", "tokens_output", "tokens_reasoning",
        "tokens_cache_read", "tokens_cache_write", "revert", "permission", "agent", "model",
        "time_created", "time_updated", "time_compacting", "time_archived",
    ),
    "message": ("id", "session_id", "time_created", "time_updated", "data"),
    "part": ("id", "message_id", "session_id", "time_created", "time_updated", "data"),
    "session_share": ("session_id", "id", "secret", "url"),
}  # fmt: skip
# The journal is optional: some opencode versions write it only behind a flag.
JOURNAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "event": ("aggregate_id", "seq", "type", "data"),
    "event_sequence": ("aggregate_id", "seq"),
}

Row = dict[str, Any]
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
    """One long-lived read-only connection to opencode.db, reopened on the file at `path` when
    that file is replaced (`moved` tells; `reopen` does it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: aiosqlite.Connection | None = None
        self.has_journal = False
        self.identity: FileIdentity | None = None
        # Session workers share the connection; their snapshots take turns.
        self._snapshot_lock = asyncio.Lock()
        # Reads in flight per connection: a replaced connection is closed by its last reader.
        self._readers: Counter[aiosqlite.Connection] = Counter()

    @classmethod
    async def open(cls, path: Path, busy_timeout_ms: int = 5000) -> OpencodeDb:
        """The database at `path`, open; UserError naming why it cannot be read."""
        db = cls(path)
        await db.reopen(busy_timeout_ms)
        return db

    async def reopen(self, busy_timeout_ms: int = 5000) -> None:
        """Read the file now at `path` from here on (the first time: open it). Snapshots in
        progress end on the old connection first; UserError when the file cannot be read, and
        the old connection (if any) stays."""
        conn, has_journal, identity = await _connect(self.path, busy_timeout_ms)
        async with self._snapshot_lock:
            old, self._conn = self._conn, conn
            self.has_journal, self.identity = has_journal, identity
        if old is not None and not self._readers[old]:
            await _close(old)

    def moved(self) -> str | None:
        """How the file at `path` differs from the one open: "deleted", "replaced" (another
        file under the name), "truncated" (smaller than it was), or None."""
        now = FileIdentity.of(self.path)
        if now is None:
            return "deleted"
        if self.identity is None:
            return "replaced"
        if (now.device, now.inode) != (self.identity.device, self.identity.inode):
            return "replaced"
        if now.size < self.identity.size:
            return "truncated"
        self.identity = now
        return None

    async def close(self) -> None:
        if self._conn is not None:
            await _close(self._conn)
            self._conn = None

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection for one read; a failed read is a UserError naming the database
        (corrupted, unreadable, gone), never a raw sqlite3 error."""
        conn = self._conn
        if conn is None:
            raise UserError(f"the opencode database {self.path} is not open")
        self._readers[conn] += 1
        try:
            yield conn
        except sqlite3.Error as exc:  # aiosqlite raises sqlite3's errors
            raise UserError(f"cannot read opencode database {self.path}: {exc}") from exc
        finally:
            self._readers[conn] -= 1
            if conn is not self._conn and not self._readers[conn]:
                del self._readers[conn]
                await _close(conn)

    async def data_version(self) -> int:
        """Changes whenever another connection commits: the cheap "did anything change?"."""
        return int((await self.one("PRAGMA data_version"))[0])

    async def one(self, sql: str, params: Iterable[Any] = ()) -> aiosqlite.Row:
        async with self._reading() as conn, conn.execute(sql, tuple(params)) as cursor:
            row = await cursor.fetchone()
        assert row is not None, sql
        return row

    async def rows(self, sql: str, params: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        async with self._reading() as conn, conn.execute(sql, tuple(params)) as cursor:
            return list(await cursor.fetchall())

    async def share_of(self, session_id: str) -> Share | None:
        """The share opencode itself made of `session_id` (its `session_share` row), if any."""
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
        async with self._snapshot_lock, self._reading() as conn:
            await conn.execute("BEGIN")
            try:
                yield self
            finally:
                await conn.execute("COMMIT")


async def _connect(
    path: Path, busy_timeout_ms: int
) -> tuple[aiosqlite.Connection, bool, FileIdentity | None]:
    """A read-only connection to the database at `path`, whether it has a journal, and the
    file it is; UserError naming why not (the connection closed, so no thread outlives it)."""
    if not path.is_file():
        raise UserError(
            f"opencode database not found at {path}: run opencode once, "
            "or point syncd at it with --db (`opencode db path` prints it)"
        )
    if not is_sqlite(path):
        raise UserError(
            f"{path} is not an SQLite database: point --db (or db in the config file) at "
            "opencode's database (`opencode db path` prints it)"
        )
    identity = FileIdentity.of(path)
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    conn = None
    try:
        conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.row_factory = aiosqlite.Row
        conn.text_factory = _text
        columns = await _columns(conn)
        missing = _missing(columns, REQUIRED_COLUMNS)
        if missing:
            raise UserError(
                f"opencode database {path} has an unknown schema: missing {missing} "
                "(syncd reads the schema of opencode 1.18.x; upgrade syncd or opencode)"
            )
    except (aiosqlite.Error, OSError, UserError) as exc:
        if conn is not None:
            await _close(conn)
        if isinstance(exc, UserError):
            raise
        raise UserError(f"cannot read opencode database {path}: {exc}") from exc
    return conn, not _missing(columns, JOURNAL_COLUMNS), identity


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


def _text(raw: bytes) -> str | bytes:
    """TEXT as str; text that is not valid UTF-8 stays bytes, so that the one row holding it
    is reported (syncdata.BadRow) instead of the whole query failing on it."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


async def _columns(conn: aiosqlite.Connection) -> dict[str, set[str]]:
    async with conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'") as cursor:
        tables = [row[0] for row in await cursor.fetchall()]
    columns: dict[str, set[str]] = {}
    for table in tables:
        async with conn.execute(f"PRAGMA table_info(`{table}`)") as cursor:
            columns[table] = {row[1] for row in await cursor.fetchall()}
    return columns


def _missing(columns: dict[str, set[str]], wanted: dict[str, tuple[str, ...]]) -> str:
    """The first missing table or column, named the way a user can look it up, or ""."""
    for table, names in wanted.items():
        if table not in columns:
            return f"table {table}"
        for name in names:
            if name not in columns[table]:
                return f"column {table}.{name}"
    return ""
