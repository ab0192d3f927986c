"""Read-only access to opencode's SQLite database.

Rules from CONTRACTS.md section 1: open with `mode=ro`, set a busy timeout, never change the
journal mode, never use `immutable=1`, and never leave a read transaction open between polls
(an open reader pins the WAL and stops checkpoints). Every read here is one statement in
autocommit mode or one short explicit transaction that ends before the call returns.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiosqlite

from ..errors import UserError
from ..model import Share
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


class OpencodeDb:
    """One long-lived read-only connection to opencode.db, and the JSON sessions under its
    `storage/` (json_store). Its schema is read when opened and again whenever opencode
    migrates it (`refresh_schema`): an unreadable one does not stop the connection, only the
    reads (`readable` raises SchemaError naming what is missing). Without a database file,
    the JSON sessions are read alone, until opencode creates its database."""

    def __init__(self, path: Path, conn: aiosqlite.Connection, busy_timeout_ms: int) -> None:
        self.path = path
        self.storage = storage_dir(path)  # opencode's JSON files beside the database
        self._conn = conn
        self._busy_timeout_ms = busy_timeout_ms
        self._attached = path.is_file()  # False: no database file yet, JSON sessions alone
        self.schema = NO_SCHEMA
        # The JSON files must be read again before the next look (json_store.refresh).
        self.json_stale = True
        # Session workers share the connection; their snapshots take turns.
        self._snapshot_lock = asyncio.Lock()

    @property
    def has_journal(self) -> bool:
        return self.schema.has_journal

    @classmethod
    async def open(cls, path: Path, busy_timeout_ms: int = 5000) -> OpencodeDb:
        storage = storage_dir(path)
        if not path.is_file() and not json_store.has_sessions(storage):
            raise UserError(
                f"opencode database not found at {path}, and no JSON sessions under {storage}: "
                "run opencode once, or point syncd at its database with --db "
                "(`opencode db path` prints it)"
            )
        db = cls(path, await _connect(path, busy_timeout_ms), busy_timeout_ms)
        try:
            await db.refresh_schema()
        except BaseException:
            await db.close()
            raise
        return db

    async def refresh_schema(self) -> Schema:
        """The schema as it is now, read again when opencode has migrated it or the JSON
        sessions have moved."""
        async with self._snapshot_lock:
            try:
                if not self._attached and self.path.is_file():  # opencode created it now
                    await self._conn.close()
                    self._conn = await _connect(self.path, self._busy_timeout_ms)
                    self._attached, self.schema, self.json_stale = True, NO_SCHEMA, True
                version = int((await self.one("PRAGMA main.schema_version"))[0])
                json_moved = self.json_stale and self.storage.is_dir()
                if json_moved:
                    await json_store.refresh(self._conn, self.storage)
                self.json_stale = False
                if version != self.schema.version or json_moved:
                    self.schema = await _read_schema(self._conn, version)
            except aiosqlite.Error as exc:
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
        await self._conn.close()

    async def data_version(self) -> int:
        """Changes whenever another connection commits: the cheap "did anything change?".
        Without a database file yet, it changes when the file appears."""
        if not self._attached:
            return -2 if self.path.is_file() else -1
        return int((await self.one("PRAGMA data_version"))[0])

    async def one(self, sql: str, params: Iterable[Any] = ()) -> aiosqlite.Row:
        async with self._conn.execute(sql, tuple(params)) as cursor:
            row = await cursor.fetchone()
        assert row is not None, sql
        return row

    async def rows(self, sql: str, params: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        async with self._conn.execute(sql, tuple(params)) as cursor:
            return list(await cursor.fetchall())

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
        async with self._snapshot_lock:
            await self._conn.execute("BEGIN")
            try:
                yield self
            finally:
                await self._conn.execute("COMMIT")


def _text(raw: bytes) -> str | bytes:
    """TEXT as str; text that is not valid UTF-8 stays bytes, so that the one row holding it
    is reported (syncdata.BadRow) instead of the whole query failing on it."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


async def _connect(path: Path, busy_timeout_ms: int) -> aiosqlite.Connection:
    """A read-only connection to the database, or, while it does not exist, to an empty
    in-memory one (the JSON sessions' TEMP tables need a connection)."""
    uri = f"file:{quote(str(path.resolve()))}?mode=ro" if path.is_file() else ":memory:"
    try:
        conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.row_factory = aiosqlite.Row
        conn.text_factory = _text
        await json_store.create_tables(conn)
    except aiosqlite.Error as exc:
        raise UserError(f"cannot read opencode database {path}: {exc}") from exc
    return conn


async def _read_schema(conn: aiosqlite.Connection, version: int) -> Schema:
    """The database's tables and columns (`main`: TEMP views may shadow them), and the TEMP
    views over them and the JSON sessions, made to match."""
    # One transaction: the version read belongs to the tables read with it.
    await conn.execute("BEGIN")
    try:
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
    finally:
        await conn.execute("COMMIT")
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
