"""The archive store in one SQLite file: the default receiver store and the embedded archive.
The rules it keeps are described in `base`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from ..errors import UserError, os_problem
from ..model import Share, SyncItem
from ..sqlite import GroupWriter, fetch_all, open_private, primary_code
from .base import (
    DEDUP_KEYS_KEPT,
    SUMMARY_COLUMNS,
    ArchiveStore,
    InvalidSecret,
    SessionCursor,
    SessionSummary,
    ShareNotFound,
    StoreUnavailable,
    check_session_id,
    merged_items,
    new_secret,
    now_ms,
    require_text,
    secret_matches,
    session_list_query,
    share_ids,
    summary_of_row,
    summary_update,
)

MIGRATIONS = Path(__file__).with_name("migration")
T = TypeVar("T")
# SQLite's answers about the machine, not the request: a disk full, a file system remounted
# read-only, an I/O error, the file locked by another process past the busy timeout. They
# pass, so the request is to be retried (StoreUnavailable), never refused.
MACHINE_TROUBLE = frozenset({
    sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN,
})  # fmt: skip
RETRY_AFTER = 5  # seconds: enough for space to be freed, short enough not to be waited out


@contextlib.contextmanager
def _machine_trouble_passes() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        if primary_code(exc) not in MACHINE_TROUBLE:
            raise
        raise StoreUnavailable(f"archive: {exc}", retry_after=RETRY_AFTER) from exc


class SqliteArchive(ArchiveStore):
    def __init__(self, path: Path, conn: aiosqlite.Connection) -> None:
        super().__init__()
        self.path = path
        self._conn = conn
        # One connection: reads must not see another call's transaction half done.
        self._lock = asyncio.Lock()
        self._writer = GroupWriter(conn, self._lock)

    @classmethod
    async def open(cls, path: Path) -> SqliteArchive:
        """Open (creating, mode 0600: it holds share secrets) and migrate the archive."""
        try:
            conn = await open_private(path, MIGRATIONS)
        except OSError as exc:
            raise UserError(f"cannot open the archive {path}: {os_problem(exc, path)}") from None
        except aiosqlite.Error as exc:
            raise UserError(f"cannot open the archive {path}: {exc}") from exc
        archive = cls(path, conn)
        try:
            await archive._summarise_unsummarised()
        except BaseException:
            await conn.close()
            raise
        return archive

    async def close(self) -> None:
        await self._conn.close()

    async def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with _machine_trouble_passes():
            return [tuple(row) for row in await fetch_all(self._conn, self._lock, sql, params)]

    @staticmethod
    async def _fetch(db: aiosqlite.Connection, sql: str, params: Iterable[Any]) -> Any:
        async with db.execute(sql, tuple(params)) as cursor:
            return await cursor.fetchone()

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` in a transaction, in one hand-off to the connection's thread, grouped with
        the writes made meanwhile (one commit for all of them)."""
        with _machine_trouble_passes():
            return await self._writer(work)

    # -- shares ----------------------------------------------------------------------------

    async def create_share(self, session_id: str, base_url: str) -> Share:
        check_session_id(session_id)
        secret, stamp = new_secret(), now_ms()
        return await self._write(lambda db: _create(db, session_id, base_url, secret, stamp))

    async def create_share_with(
        self,
        session_id: str,
        base_url: str,
        data: list[Any],
        dedup_key: str | None = None,
        texts: list[str] | None = None,
    ) -> Share:
        check_session_id(session_id)
        merged = _checked(data, texts, dedup_key)
        secret, stamp = new_secret(), now_ms()

        def create_and_sync(db: sqlite3.Connection) -> Share:
            share = _create(db, session_id, base_url, secret, stamp)
            _apply_sync(db, share.id, secret, merged, dedup_key, stamp)
            return share

        share = await self._write(create_and_sync)
        self.waiters.wake(share.id)
        return share

    async def delete_share(self, share_id: str, secret: str) -> None:
        def delete(db: sqlite3.Connection) -> None:
            _check_secret(db, share_id, secret)
            db.execute("DELETE FROM share WHERE id = ?", (share_id,))

        await self._write(delete)
        self.waiters.wake(share_id)

    async def list_shares(self) -> list[dict[str, Any]]:
        rows = await self._rows(
            "SELECT id, session_id, url, time_updated FROM share ORDER BY time_updated DESC, id"
        )
        return [
            {"id": row[0], "session_id": row[1], "url": row[2], "time_updated": row[3]}
            for row in rows
        ]

    # -- content ---------------------------------------------------------------------------

    async def sync(
        self,
        share_id: str,
        secret: str,
        data: list[dict[str, Any]],
        dedup_key: str | None = None,
        texts: list[str] | None = None,
    ) -> int:
        merged = _checked(data, texts, dedup_key)
        stamp = now_ms()
        count = await self._write(
            lambda db: _apply_sync(db, share_id, secret, merged, dedup_key, stamp)
        )
        self.waiters.wake(share_id)
        return count

    async def read_items(self, share_id: str) -> list[dict[str, Any]]:
        async with self._lock:
            if not await self._fetch(self._conn, "SELECT 1 FROM share WHERE id = ?", (share_id,)):
                raise ShareNotFound()
            async with self._conn.execute(
                "SELECT kind, data FROM share_item WHERE share_id = ? ORDER BY item_key",
                (share_id,),
            ) as cursor:
                rows = await cursor.fetchall()
        return [{"type": kind, "data": json.loads(text)} for kind, text in rows]

    async def seq(self, share_id: str) -> int:
        rows = await self._rows("SELECT seq FROM share WHERE id = ?", (share_id,))
        if not rows:
            raise ShareNotFound()
        return int(rows[0][0])

    async def changes(
        self, share_id: str, after: int, limit: int = 500
    ) -> list[tuple[int, SyncItem]]:
        async with self._lock:
            if not await self._fetch(self._conn, "SELECT 1 FROM share WHERE id = ?", (share_id,)):
                raise ShareNotFound()
            async with self._conn.execute(
                "SELECT seq, kind, data FROM share_item WHERE share_id = ? AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (share_id, after, limit),
            ) as cursor:
                rows = await cursor.fetchall()
        return [(seq, {"type": kind, "data": json.loads(text)}) for seq, kind, text in rows]

    # -- the session list ------------------------------------------------------------------

    async def _summarise_unsummarised(self) -> None:
        """Shares stored before the archive kept summaries have none yet (NULL update time)."""
        for (share_id,) in await self._rows("SELECT id FROM share WHERE session_updated IS NULL"):
            await self._write(functools.partial(_summarise, share_id=share_id))

    async def list_sessions(
        self,
        query: str = "",
        *,
        before: SessionCursor | None = None,
        after: SessionCursor | None = None,
        limit: int = 50,
    ) -> list[SessionSummary]:
        sql, params, oldest_first = session_list_query(
            query, before, after, limit, mark="?", like="LIKE"
        )
        summaries = [summary_of_row(row) for row in await self._rows(sql, params)]
        return summaries[::-1] if oldest_first else summaries

    async def session_summary(self, share_id: str) -> SessionSummary:
        rows = await self._rows(f"SELECT {SUMMARY_COLUMNS} FROM share WHERE id = ?", (share_id,))
        if not rows:
            raise ShareNotFound()
        return summary_of_row(rows[0])


# -- the writes, each run whole on the connection's thread ------------------------------------

ITEM_UPSERT = (
    "INSERT INTO share_item (share_id, item_key, kind, data, time_updated, seq) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (share_id, item_key) DO UPDATE SET "
    "kind = excluded.kind, data = excluded.data, time_updated = excluded.time_updated, "
    "seq = excluded.seq"
)


def _checked(
    data: list[Any], texts: list[str] | None, dedup_key: str | None
) -> list[tuple[str, str, str]]:
    """A sync's items as `merged_items` checks them, and its batch key checked, before any
    write."""
    merged = merged_items(data, texts)
    if dedup_key is not None:
        require_text(dedup_key, "the batch key")
    return merged


def _create(
    db: sqlite3.Connection, session_id: str, base_url: str, secret: str, stamp: int
) -> Share:
    for share_id in share_ids(session_id):
        if db.execute("SELECT 1 FROM share WHERE id = ?", (share_id,)).fetchone() is None:
            break
    url = f"{base_url}/share/{share_id}"
    db.execute(
        "INSERT INTO share (id, session_id, secret, url, time_created, time_updated, "
        "session_updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (share_id, session_id, secret, url, stamp, stamp, stamp),
    )
    return Share(id=share_id, secret=secret, url=url)


def _check_secret(db: sqlite3.Connection, share_id: str, secret: str) -> tuple[int, int]:
    """The share's sync count and sequence number, once `secret` is its secret."""
    row = db.execute(
        "SELECT secret, sync_count, seq FROM share WHERE id = ?", (share_id,)
    ).fetchone()
    if row is None:
        raise ShareNotFound()
    if not secret_matches(row[0], secret):
        raise InvalidSecret()
    return int(row[1]), int(row[2])


def _upsert_items(
    db: sqlite3.Connection, share_id: str, merged: list[tuple[str, str, str]], stamp: int, seq: int
) -> None:
    """Store `merged` in order, numbered from seq + 1 (a key met twice: the later wins)."""
    rows = [
        (share_id, key, kind, text, stamp, seq + offset)
        for offset, (key, kind, text) in enumerate(merged, start=1)
    ]
    db.executemany(ITEM_UPSERT, rows)


def _apply_sync(
    db: sqlite3.Connection,
    share_id: str,
    secret: str,
    merged: list[tuple[str, str, str]],
    dedup_key: str | None,
    stamp: int,
) -> int:
    """Merge the items into the share; the share's sync count. The transaction holds the
    database's write lock, so the count and number read first stay current."""
    sync_count, seq = _check_secret(db, share_id, secret)
    if dedup_key is not None:
        applied = db.execute(
            "INSERT INTO share_sync (share_id, dedup_key, time_applied) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (share_id, dedup_key, stamp),
        )
        if applied.rowcount == 0:  # applied before
            return sync_count
        db.execute(
            "DELETE FROM share_sync WHERE share_id = ? AND rowid NOT IN (SELECT rowid "
            "FROM share_sync WHERE share_id = ? ORDER BY rowid DESC LIMIT ?)",
            (share_id, share_id, DEDUP_KEYS_KEPT),
        )
    _upsert_items(db, share_id, merged, stamp, seq)
    db.execute(
        "UPDATE share SET sync_count = ?, time_updated = ?, seq = ? WHERE id = ?",
        (sync_count + 1, stamp, seq + len(merged), share_id),
    )
    sessions = [text for _, kind, text in merged if kind == "session"]
    if sessions:  # the newest session item is the batch's last
        _summarise(db, share_id, sessions[-1])
    elif any(kind == "message" for _, kind, _ in merged):
        _summarise(db, share_id)
    return sync_count + 1


def _summarise(db: sqlite3.Connection, share_id: str, session_text: str | None = None) -> None:
    """Bring the share's summary columns up to date with its items; `session_text`: its
    session item's text when the caller has it (read from the share otherwise)."""
    if session_text is None:
        row = db.execute(
            "SELECT data FROM share_item WHERE share_id = ? AND item_key = 'session'",
            (share_id,),
        ).fetchone()
        session_text = row[0] if row else None
    db.execute(*summary_update(share_id, session_text, mark="?"))
