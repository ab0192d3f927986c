"""The archive store in PostgreSQL: a team's receiver, any number of `syncd serve` replicas on
one database. The rules it keeps are described in `base`; here is how they hold across
processes:

- Every write to a share first locks the share's row (`SELECT ... FOR UPDATE`), so its batch
  keys, sync count and sequence numbers advance one transaction at a time, whichever replica
  runs it. A batch retried through two replicas at once is applied by the first; the second
  finds its key in `share_sync` and changes nothing.
- A transaction cut off by a killed replica or a lost connection is rolled back by the server,
  so nothing is half applied; the sender's retry (same batch key) applies it once.
- A committed sync notifies channel `syncd_share` with the share's id. Each replica listens on
  one connection of its own and wakes the pages waiting on that share.
- Migrations (`migration_postgres/`) run under an advisory lock: replicas starting together
  apply each one once.
- A database that cannot be reached (refused, down, restarting, pool exhausted) raises
  `StoreUnavailable`; the receiver answers 503 with Retry-After and senders retry later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
import structlog
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..errors import UserError
from ..migrate import migration_folders
from ..model import Share, SyncItem
from ..redact import scrub
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
    secret_matches,
    session_list_query,
    share_ids,
    summary_of_row,
    summary_update,
)

log = structlog.get_logger("syncd.archive")

MIGRATIONS = Path(__file__).with_name("migration_postgres")
CHANNEL = "syncd_share"
# pg_advisory_lock key serialising migrations across replicas ("syncd" in ASCII).
MIGRATION_LOCK = 0x73796E6364
# How long a request waits for a pooled connection before the receiver answers 503.
POOL_TIMEOUT = 5.0
# A failing reconnection backs off (1, 2, 4 s...) for this long, then starts over at 1 s on
# the next request: the pool is back within seconds of the database, however long it was down.
RECONNECT_TIMEOUT = 10.0
# libpq settings used unless the store URL sets them: give up connecting after a few seconds,
# and notice a dead server on an idle connection within a minute.
CONNECTION_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "application_name": "syncd-serve",
}
LISTEN_RETRY = 1.0
# A batch's items in one statement: one row per merge key (arrays of key, kind, text, seq).
UPSERT_ITEMS = """
INSERT INTO share_item (share_id, item_key, kind, data, time_updated, seq)
SELECT %s, k, kd, d, %s, s FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[])
  AS u (k, kd, d, s)
ON CONFLICT (share_id, item_key) DO UPDATE
SET kind = excluded.kind, data = excluded.data, time_updated = excluded.time_updated,
    seq = excluded.seq
"""
RETRY_AFTER = 5

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


def _has_nul(value: str) -> bool:
    # PostgreSQL text cannot hold NUL: such an id names no share here.
    return "\x00" in value


class PostgresArchive(ArchiveStore):
    # Notifications wake waiters on every replica; the poll only backs up a lost one.
    change_poll_interval = 10.0

    def __init__(self, url: str, pool: psycopg_pool.AsyncConnectionPool[Conn]) -> None:
        super().__init__()
        self.url = url
        self._pool = pool
        self._listener: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"PostgresArchive({scrub(self.url)})"

    @classmethod
    async def open(
        cls, url: str, pool_size: int, pool_timeout: float = POOL_TIMEOUT
    ) -> PostgresArchive:
        """Connect, apply migrations and start listening; UserError (the URL's password
        hidden) when the database cannot be reached or refuses us. `pool_timeout`: how long
        a request waits for a connection before StoreUnavailable."""
        conninfo = _with_defaults(url)
        try:
            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                await migrate_postgres(conn, MIGRATIONS)
            listening = await _listening_connection(conninfo)
        except psycopg.Error as exc:
            raise UserError(
                f"cannot open the store {scrub(url)}: {_one_line(exc)}; check the URL, "
                "the server and the role's rights"
            ) from exc
        pool: psycopg_pool.AsyncConnectionPool[Conn] = psycopg_pool.AsyncConnectionPool(
            conninfo,
            kwargs={"autocommit": True},
            min_size=1,
            max_size=pool_size,
            timeout=pool_timeout,
            reconnect_timeout=RECONNECT_TIMEOUT,
            open=False,
            check=psycopg_pool.AsyncConnectionPool.check_connection,
            name="syncd-archive",
        )
        await pool.open()
        store = cls(url, pool)
        store._listener = asyncio.create_task(store._listen(conninfo, listening))
        try:
            await store._summarise_unsummarised()
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._pool.close()

    # -- plumbing --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Conn]:
        """One transaction on a pooled connection; a database that is out of reach becomes
        StoreUnavailable (whether an interrupted commit landed is then unknown: the sender's
        retry, with the same batch key, settles it)."""
        try:
            async with self._pool.connection() as conn, conn.transaction():
                yield conn
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(_one_line(exc), retry_after=RETRY_AFTER) from exc

    async def _fetchone(self, conn: Conn, sql: str, params: tuple[Any, ...]) -> Any:
        cursor = await conn.execute(sql, params)
        return await cursor.fetchone()

    async def _lock_share(self, conn: Conn, share_id: str, secret: str) -> tuple[int, int]:
        """Lock the share's row after checking `secret`; returns its (seq, sync_count)."""
        if _has_nul(share_id):
            raise ShareNotFound()
        row = await self._fetchone(
            conn, "SELECT secret, seq, sync_count FROM share WHERE id = %s FOR UPDATE", (share_id,)
        )
        if row is None:
            raise ShareNotFound()
        if not secret_matches(row[0], secret):
            raise InvalidSecret()
        return int(row[1]), int(row[2])

    # -- shares ----------------------------------------------------------------------------

    async def create_share(self, session_id: str, base_url: str) -> Share:
        check_session_id(session_id)
        async with self._transaction() as conn:
            return await self._create(conn, session_id, base_url)

    async def _create(self, conn: Conn, session_id: str, base_url: str) -> Share:
        secret, stamp = new_secret(), now_ms()
        for share_id in share_ids(session_id):
            url = f"{base_url}/share/{share_id}"
            created = await self._fetchone(
                conn,
                "INSERT INTO share (id, session_id, secret, url, time_created, time_updated, "
                "session_updated) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO NOTHING RETURNING id",
                (share_id, session_id, secret, url, stamp, stamp, stamp),
            )
            if created is not None:
                break
        return Share(id=share_id, secret=secret, url=url)

    async def delete_share(self, share_id: str, secret: str) -> None:
        async with self._transaction() as conn:
            await self._lock_share(conn, share_id, secret)
            await conn.execute("DELETE FROM share WHERE id = %s", (share_id,))
            await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, share_id))

    async def list_shares(self) -> list[dict[str, Any]]:
        async with self._transaction() as conn:
            cursor = await conn.execute(
                "SELECT id, session_id, url, time_updated FROM share ORDER BY time_updated DESC, id"
            )
            rows = await cursor.fetchall()
        return [
            {"id": row[0], "session_id": row[1], "url": row[2], "time_updated": row[3]}
            for row in rows
        ]

    # -- content ---------------------------------------------------------------------------

    async def create_share_with(
        self,
        session_id: str,
        base_url: str,
        data: list[Any],
        dedup_key: str | None = None,
        texts: list[str] | None = None,
    ) -> Share:
        check_session_id(session_id)
        merged = merged_items(data, texts)
        async with self._transaction() as conn:
            share = await self._create(conn, session_id, base_url)
            await self._apply(conn, share.id, share.secret, merged, dedup_key, now_ms())
        return share

    async def sync(
        self,
        share_id: str,
        secret: str,
        data: list[Any],
        dedup_key: str | None = None,
        texts: list[str] | None = None,
    ) -> int:
        merged = merged_items(data, texts)
        async with self._transaction() as conn:
            return await self._apply(conn, share_id, secret, merged, dedup_key, now_ms())

    async def _apply(
        self,
        conn: Conn,
        share_id: str,
        secret: str,
        merged: list[tuple[str, str, str]],
        dedup_key: str | None,
        stamp: int,
    ) -> int:
        """Merge the checked items into the share, inside the caller's transaction; the
        share's sync count."""
        seq, sync_count = await self._lock_share(conn, share_id, secret)
        if dedup_key is not None:
            fresh = await self._fetchone(
                conn,
                "INSERT INTO share_sync (share_id, dedup_key, time_applied) "
                "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
                (share_id, dedup_key.encode("utf-8", "surrogatepass"), stamp),
            )
            if fresh is None:
                return sync_count
            # The newest DEDUP_KEYS_KEPT keys of the share stay.
            await conn.execute(
                "DELETE FROM share_sync WHERE share_id = %s AND applied <= (SELECT applied "
                "FROM share_sync WHERE share_id = %s ORDER BY applied DESC OFFSET %s LIMIT 1)",
                (share_id, share_id, DEDUP_KEYS_KEPT),
            )
        # One row per key, the batch's last item for it winning, as if applied in order;
        # each item's seq is its place in the batch.
        newest = {key: (kind, text, seq + n) for n, (key, kind, text) in enumerate(merged, 1)}
        if newest:
            kinds, bodies, seqs = zip(*newest.values(), strict=True)
            await conn.execute(
                UPSERT_ITEMS,
                (share_id, stamp, list(newest), list(kinds), list(bodies), list(seqs)),
            )
        row = await self._fetchone(
            conn,
            "UPDATE share SET sync_count = sync_count + 1, time_updated = %s, seq = %s "
            "WHERE id = %s RETURNING sync_count",
            (stamp, seq + len(merged), share_id),
        )
        if any(kind in ("session", "message") for kind, _, _ in newest.values()):
            await self._summarise(conn, share_id)
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, share_id))
        return int(row[0])

    async def read_items(self, share_id: str) -> list[SyncItem]:
        rows = await self._share_items(
            "SELECT i.kind, i.data FROM share s LEFT JOIN share_item i ON i.share_id = s.id "
            "WHERE s.id = %s ORDER BY i.item_key",
            (share_id,),
        )
        return [{"type": kind, "data": json.loads(text)} for kind, text in rows]

    async def changes(
        self, share_id: str, after: int, limit: int = 500
    ) -> list[tuple[int, SyncItem]]:
        rows = await self._share_items(
            "SELECT i.seq, i.kind, i.data FROM share s LEFT JOIN share_item i "
            "ON i.share_id = s.id AND i.seq > %s WHERE s.id = %s ORDER BY i.seq LIMIT %s",
            (after, share_id, limit),
        )
        return [(seq, {"type": kind, "data": json.loads(text)}) for seq, kind, text in rows]

    async def _share_items(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """The item rows of a share's query (share LEFT JOIN item, the share id among
        `params`), in one statement: no rows at all means no such share, a row of NULLs a
        share without (matching) items."""
        if any(isinstance(p, str) and _has_nul(p) for p in params):
            raise ShareNotFound()
        async with self._transaction() as conn:
            cursor = await conn.execute(sql, params)
            rows = await cursor.fetchall()
        if not rows:
            raise ShareNotFound()
        return [row for row in rows if row[-1] is not None]

    async def seq(self, share_id: str) -> int:
        if _has_nul(share_id):
            raise ShareNotFound()
        async with self._transaction() as conn:
            row = await self._fetchone(conn, "SELECT seq FROM share WHERE id = %s", (share_id,))
        if row is None:
            raise ShareNotFound()
        return int(row[0])

    # -- the session list ------------------------------------------------------------------

    async def _summarise(self, conn: Conn, share_id: str) -> None:
        """Bring the share's summary columns up to date with its items (its row locked)."""
        row = await self._fetchone(
            conn,
            "SELECT data FROM share_item WHERE share_id = %s AND item_key = 'session'",
            (share_id,),
        )
        await conn.execute(*summary_update(share_id, row[0] if row else None, mark="%s"))

    async def _summarise_unsummarised(self) -> None:
        """Shares stored before the archive kept summaries have none yet (NULL update time).
        Replicas starting together may both try: the row lock lets one fill each in."""
        async with self._transaction() as conn:
            cursor = await conn.execute("SELECT id FROM share WHERE session_updated IS NULL")
            unsummarised = [share_id for (share_id,) in await cursor.fetchall()]
        for share_id in unsummarised:
            async with self._transaction() as conn:
                locked = await self._fetchone(
                    conn,
                    "SELECT 1 FROM share WHERE id = %s AND session_updated IS NULL FOR UPDATE",
                    (share_id,),
                )
                if locked:
                    await self._summarise(conn, share_id)

    async def list_sessions(
        self,
        query: str = "",
        *,
        before: SessionCursor | None = None,
        after: SessionCursor | None = None,
        limit: int = 50,
    ) -> list[SessionSummary]:
        if _has_nul(query):
            return []  # no stored text holds one
        sql, params, oldest_first = session_list_query(
            query, before, after, limit, mark="%s", like="ILIKE"
        )
        async with self._transaction() as conn:
            cursor = await conn.execute(sql, params)
            summaries = [summary_of_row(row) for row in await cursor.fetchall()]
        return summaries[::-1] if oldest_first else summaries

    async def session_summary(self, share_id: str) -> SessionSummary:
        if _has_nul(share_id):
            raise ShareNotFound()
        async with self._transaction() as conn:
            row = await self._fetchone(
                conn, f"SELECT {SUMMARY_COLUMNS} FROM share WHERE id = %s", (share_id,)
            )
        if row is None:
            raise ShareNotFound()
        return summary_of_row(row)

    # -- change notifications --------------------------------------------------------------

    async def _listen(self, conninfo: str, conn: Conn | None) -> None:
        """Hand every notification to the waiters for as long as the store is open,
        reconnecting after a loss; after a reconnect every waiter is woken, as changes may
        have been missed meanwhile."""
        outage = False
        while True:
            try:
                if conn is None:
                    conn = await _listening_connection(conninfo)
                    log.info("listening for changes again", store=scrub(self.url))
                    outage = False
                    self.waiters.wake()
                async with conn:
                    async for notification in conn.notifies():
                        self.waiters.wake(notification.payload)
            except psycopg.OperationalError as exc:
                if not outage:
                    log.warning(
                        "lost the store's change notifications; reconnecting",
                        store=scrub(self.url),
                        error=_one_line(exc),
                    )
                    outage = True
            conn = None
            await asyncio.sleep(LISTEN_RETRY)


async def _listening_connection(conninfo: str) -> Conn:
    conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    try:
        await conn.execute(f"LISTEN {CHANNEL}")
    except BaseException:
        await conn.close()
        raise
    return conn


async def migrate_postgres(conn: Conn, root: Path) -> list[str]:
    """Apply the migrations under `root` that the database has not seen; returns their names.

    Replicas starting together queue on one advisory lock, so each migration runs once, in
    its own transaction together with its row in `migration`."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS migration "
            "(id text PRIMARY KEY, time_completed bigint NOT NULL)"
        )
        for folder in migration_folders(root):
            async with conn.transaction():
                done = await (
                    await conn.execute("SELECT 1 FROM migration WHERE id = %s", (folder.name,))
                ).fetchone()
                if done:
                    continue
                await conn.execute((folder / "migration.sql").read_text())
                await conn.execute(
                    "INSERT INTO migration (id, time_completed) VALUES (%s, %s)",
                    (folder.name, int(time.time() * 1000)),
                )
                applied.append(folder.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied


def _with_defaults(url: str) -> str:
    try:
        given = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise UserError(f"store URL is not a valid PostgreSQL URL: {_one_line(exc)}") from exc
    return make_conninfo(url, **{k: v for k, v in CONNECTION_DEFAULTS.items() if k not in given})


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
