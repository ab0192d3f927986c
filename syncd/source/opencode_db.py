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


class OpencodeDb:
    """One long-lived read-only connection to opencode.db."""

    def __init__(self, path: Path, conn: aiosqlite.Connection, has_journal: bool) -> None:
        self.path = path
        self._conn = conn
        self.has_journal = has_journal
        # Session workers share the connection; their snapshots take turns.
        self._snapshot_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, busy_timeout_ms: int = 5000) -> OpencodeDb:
        if not path.is_file():
            raise UserError(
                f"opencode database not found at {path}: run opencode once, "
                "or point syncd at it with --db (`opencode db path` prints it)"
            )
        uri = f"file:{quote(str(path.resolve()))}?mode=ro"
        try:
            conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
            await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            conn.row_factory = aiosqlite.Row
            conn.text_factory = _text
            columns = await _columns(conn)
        except aiosqlite.Error as exc:
            raise UserError(f"cannot read opencode database {path}: {exc}") from exc
        missing = _missing(columns, REQUIRED_COLUMNS)
        if missing:
            await conn.close()
            raise UserError(
                f"opencode database {path} has an unknown schema: missing {missing} "
                "(syncd reads the schema of opencode 1.18.x; upgrade syncd or opencode)"
            )
        has_journal = not _missing(columns, JOURNAL_COLUMNS)
        return cls(path, conn, has_journal)

    async def close(self) -> None:
        await self._conn.close()

    async def data_version(self) -> int:
        """Changes whenever another connection commits: the cheap "did anything change?"."""
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
