"""syncd's durable state: source cursors, pending items, shares and dead letters.

One SQLite file (mode 0600: it holds share secrets), one connection, short transactions.
A capture records the pending items and moves the source cursor in the same transaction, and
pending items leave only when the receiver acknowledged them, so a `kill -9` at any moment
re-sends at most the batch that was in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import structlog

from .. import jsontext
from ..errors import UserError, os_problem
from ..files import prepare_database_file, private_directory
from ..model import Cursor, PendingItem, Share, TablePrint, TableRead
from ..redact import scrub
from ..sqlite import GroupWriter, fetch_all, open_private, read_whole, remedy, transaction

MIGRATIONS = Path(__file__).with_name("migration")
log = structlog.get_logger("syncd")
# Send order inside a session: the session first, then what hangs off it.
KIND_ORDER = ("session", "message", "part")
# A capture of an entity already pending bumps its version, so that the acknowledgement of a
# batch that carried the older version (`version <= sent`) leaves the newer capture pending.
# Versions only need to grow per entity; a global counter would cost a scan per capture.
UPSERT_PENDING = (
    "INSERT INTO pending_item (session_id, kind, item_id, version, time_created) "
    "VALUES (?, ?, ?, 1, ?) ON CONFLICT (session_id, kind, item_id) "
    "DO UPDATE SET version = pending_item.version + 1"
)


_ORDER = " ".join(f"WHEN '{kind}' THEN {i}" for i, kind in enumerate(KIND_ORDER))
PENDING_IN_ORDER = (
    "SELECT kind, item_id, version FROM pending_item WHERE session_id = ? "
    f"ORDER BY CASE kind {_ORDER} ELSE 99 END, time_created, item_id LIMIT ?"
)

# An acknowledgement leaves a newer capture of the same entity pending (see UPSERT_PENDING).
REMOVE_PENDING = (
    "DELETE FROM pending_item WHERE session_id = ? AND kind = ? AND item_id = ? AND version <= ?"
)


def _removal(items: Iterable[PendingItem]) -> list[tuple[str, str, str, int]]:
    return [(item.session_id, item.kind, item.item_id, item.version) for item in items]


T = TypeVar("T")


class StateError(UserError):
    """syncd's own state cannot be read or written: the daemon stops, in one line."""

    exit_code = 1


def _readable_id(item_id: str | bytes) -> str:
    """A dead letter's id as text every listing can show: an id opencode stored as TEXT that
    is not UTF-8 is read as bytes (and no query can find its row by it again)."""
    if isinstance(item_id, bytes):
        return item_id.decode("utf-8", "backslashreplace")
    return item_id


def _file_identity(path: Path) -> tuple[int, int] | None:
    """Which file `path` names (device, inode), None when there is none; OSError when the
    path cannot be looked at."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def merged_spans(spans: Iterable[range]) -> list[range]:
    """`spans` (ranges of step 1) in order, those that overlap or touch made one, empty ones
    left out: each id is in one span at most."""
    merged: list[range] = []
    for span in sorted((span for span in spans if span), key=lambda span: span.start):
        if merged and span.start <= merged[-1].stop:
            merged[-1] = range(merged[-1].start, max(merged[-1].stop, span.stop))
        else:
            merged.append(span)
    return merged


def now_ms() -> int:
    return int(time.time() * 1000)


class StateStore:
    def __init__(self, path: Path, conn: aiosqlite.Connection) -> None:
        self.path = path
        self._conn = conn
        # One lock for the connection: reads and writes never interleave (syncd.sqlite).
        self._lock = asyncio.Lock()
        self._writer = GroupWriter(conn, self._lock)
        self._opened = _file_identity(path)  # the file this connection writes
        self._deleted = False  # found deleted at its path: written back there when closed

    @classmethod
    async def open(cls, path: Path, target: str | None = None) -> StateStore:
        """Open (creating, 0600) and migrate the state at `path`. With `target` (the receiver
        this daemon delivers to), a state last used with another target forgets its cursors
        so that every session is captured and delivered again to the new one."""
        try:
            # In WAL mode NORMAL survives any process crash; a power cut can only undo the
            # newest commits as a whole (a capture with its cursor, or an ack: re-sent).
            conn = await open_private(path, MIGRATIONS, synchronous="NORMAL")
            conn.row_factory = aiosqlite.Row
        except OSError as exc:
            raise UserError(
                f"cannot open the state database {path}: {os_problem(exc, path)}; choose a "
                "writable state location (--state, or state in the config file)"
            ) from None
        except aiosqlite.Error as exc:
            raise UserError(f"cannot open the state database {path}: {exc}") from exc
        store = cls(path, conn)
        if target is not None:
            await store.bind_target(target)
        return store

    @classmethod
    async def open_readonly(cls, path: Path) -> StateStore:
        """Open an existing state without ever writing to it (`syncd status`, safe while the
        daemon runs: a WAL reader neither blocks the writer nor is blocked by it)."""
        try:
            exists = path.is_file()
        except OSError as exc:
            raise UserError(
                f"cannot read the state database {path}: {os_problem(exc, path)}"
            ) from None
        if not exists:
            raise UserError(
                f"no state database at {path}: syncd has not run with this state yet "
                "(start `syncd run` or `syncd sync`, or pass --state)"
            )
        conn = None
        try:
            conn = await aiosqlite.connect(
                f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None
            )
            await conn.execute("PRAGMA busy_timeout = 10000")
            conn.row_factory = aiosqlite.Row
            await conn.execute("SELECT 1 FROM pending_item LIMIT 1")
        except (OSError, aiosqlite.Error) as exc:
            if conn is not None:  # its thread would keep the process alive
                await conn.close()
            raise UserError(f"cannot read the state database {path}: {exc}") from exc
        return cls(path, conn)

    async def close(self) -> None:
        if self._deleted:
            await self._write_back()
        await self._conn.close()

    async def check_on_disk(self) -> None:
        """StateError when the file at `path` is no longer the one this connection writes:
        what syncd records would go into a file nobody can open again, and the next start
        would deliver every session anew (a second copy of each). A deleted state is written
        back from the open connection when it closes (`_write_back`)."""
        try:
            now = _file_identity(self.path)
        except OSError:
            return  # cannot look (a directory made unreadable): its writes will fail and say so
        if now == self._opened:
            return
        if now is not None:
            raise StateError(
                f"the state database {self.path} was replaced by another file while syncd ran; "
                "syncd stops rather than record into the file it had open: start it again to go "
                "on from the new file (stop syncd before replacing its state)"
            )
        self._deleted = True
        raise StateError(
            f"the state database {self.path} was deleted while syncd ran: syncd stops, and "
            "writes it back from the open copy as it stops, so that it starts again on it "
            "(stop syncd before moving or removing its state)"
        )

    async def _write_back(self) -> None:
        """Write the open database to its path, where it was deleted (VACUUM INTO, 0600). Done
        last, once nothing records any more: a share whose answer comes while syncd stops is
        recorded then, and a copy made before it would make the next start create it again.
        The copy goes onto an empty file at the path: SQLite then removes a write-ahead log
        left there, which would otherwise be read into the copy."""
        try:
            if _file_identity(self.path) is not None:
                raise FileExistsError("another file is there now, left alone")
            private_directory(self.path.parent)
            prepare_database_file(self.path)
            async with self._lock:
                await self._conn.execute("VACUUM INTO ?", (str(self.path),))
        except (OSError, sqlite3.Error, UserError) as exc:
            log.error(
                "the deleted state database could not be written back: starting again "
                "delivers every session anew",
                state=str(self.path),
                error=str(exc),
            )
            return
        log.warning(
            "the deleted state database was written back from the open copy", state=str(self.path)
        )

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        with self._told():
            async with transaction(self._conn, self._lock) as db:
                yield db

    async def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        with self._told():
            return await fetch_all(self._conn, self._lock, sql, params)

    async def _write_in_thread(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` in a transaction, grouped with the writes made meanwhile, in one hand-off to
        the connection's thread (the writes every captured session and delivered batch make)."""
        with self._told():
            return await self._writer(work)

    @contextlib.contextmanager
    def _told(self) -> Iterator[None]:
        """The state's own failures (a full disk, a lock another process holds too long) as
        one line naming the state: the daemon stops on it rather than go on without a record
        of what it captured and delivered."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StateError(
                f"the state database {self.path} failed: {exc}; syncd stops rather than lose "
                f"track of what is pending: {remedy(exc)}, then start syncd again"
            ) from exc

    async def bind_target(self, target: str) -> None:
        rows = await self._rows("SELECT value FROM meta WHERE key = 'target'")
        if rows and rows[0][0] == target:
            return
        async with self._write() as db:
            if rows:  # delivered elsewhere before: this receiver has seen nothing yet
                await db.execute("DELETE FROM session_cursor")
            await db.execute(
                "INSERT INTO meta (key, value) VALUES ('target', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (target,),
            )

    async def meta(self, key: str) -> str | None:
        rows = await self._rows("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    async def set_meta(self, key: str, value: str | None) -> None:
        """Record `value` under `key` (None: forget it)."""
        async with self._write() as db:
            if value is None:
                await db.execute("DELETE FROM meta WHERE key = ?", (key,))
                return
            await db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # -- source side -------------------------------------------------------------------------

    async def cursors(self) -> dict[str, Cursor]:
        rows = await self._rows("SELECT session_id, journal_seq, time_updated FROM session_cursor")
        return {row[0]: Cursor(row[1], row[2]) for row in rows}

    async def capture(
        self,
        session_id: str,
        keys: Iterable[tuple[str, str]],
        *,
        journal_seq: int | None = None,
        time_updated: int | None = None,
        read: TableRead | None = None,
    ) -> None:
        """Record `keys` as pending and move the session's cursor, with table mode's `read`
        that found them, atomically."""
        stamp = now_ms()
        rows = [(session_id, kind, item_id, stamp) for kind, item_id in keys]
        read_columns: tuple[int | str | None, ...] = (None, None, None, None, None)
        if read is not None:
            printed = None if read.print is None else jsontext.dumps(list(read.print))
            read_columns = (read.wall, read.boot, read.clock, _seen_text(read.seen), printed)
        cursor = (session_id, journal_seq, time_updated, *read_columns)

        def record(db: sqlite3.Connection) -> None:
            db.executemany(UPSERT_PENDING, rows)
            db.execute(
                "INSERT INTO session_cursor (session_id, journal_seq, time_updated, read_wall, "
                "read_boot, read_clock, read_seen, read_print) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (session_id) DO UPDATE SET "
                "journal_seq = COALESCE(excluded.journal_seq, journal_seq), "
                "time_updated = COALESCE(excluded.time_updated, time_updated), "
                "read_wall = COALESCE(excluded.read_wall, read_wall), "
                "read_boot = COALESCE(excluded.read_boot, read_boot), "
                "read_clock = COALESCE(excluded.read_clock, read_clock), "
                "read_seen = COALESCE(excluded.read_seen, read_seen), "
                # A read's print goes with its stamps, or none does.
                "read_print = CASE WHEN excluded.read_seen IS NULL THEN read_print "
                "ELSE excluded.read_print END",
                cursor,
            )

        await self._write_in_thread(record)

    async def table_reads(self) -> dict[str, TableRead]:
        """Table mode's last read of each session, as its last capture recorded it."""
        rows = await self._rows(
            "SELECT session_id, read_wall, read_boot, read_clock, read_seen, read_print "
            "FROM session_cursor WHERE read_seen IS NOT NULL"
        )
        reads = {}
        for session_id, wall, boot, clock, seen_text, print_text in rows:
            seen = _seen_from(seen_text)
            if seen is not None:
                reads[session_id] = TableRead(wall, boot, clock, seen, _print_from(print_text))
        return reads

    async def forget_session(self, session_id: str) -> None:
        """A session gone from opencode (its remote copy kept or deleted): stop tracking it,
        a deletion held for it included."""
        async with self._write() as db:
            for table in ("pending_item", "session_cursor", "share", "held_deletion"):
                await db.execute(f"DELETE FROM {table} WHERE session_id = ?", (session_id,))

    # -- delivery side -----------------------------------------------------------------------

    async def pending_sessions(self) -> dict[str, int]:
        """Sessions with pending items, and the capture time (ms) of their oldest one."""
        rows = await self._rows(
            "SELECT session_id, MIN(time_created) FROM pending_item GROUP BY session_id"
        )
        return {row[0]: row[1] for row in rows}

    async def pending_counts(self) -> dict[str, int]:
        """Pending items per session."""
        rows = await self._rows("SELECT session_id, COUNT(*) FROM pending_item GROUP BY session_id")
        return {row[0]: row[1] for row in rows}

    async def pending_totals(self) -> tuple[int, int | None]:
        """Pending items in all, and the capture time (ms) of the oldest (None: none)."""
        rows = await self._rows("SELECT COUNT(*), MIN(time_created) FROM pending_item")
        return rows[0][0], rows[0][1]

    async def sessions_delivered_since(self, stamp_ms: int) -> int:
        """Sessions with a delivery at or after `stamp_ms` and nothing pending now."""
        rows = await self._rows(
            "SELECT COUNT(*) FROM session_cursor c WHERE c.time_last_delivery >= ? AND NOT "
            "EXISTS (SELECT 1 FROM pending_item p WHERE p.session_id = c.session_id)",
            (stamp_ms,),
        )
        return rows[0][0]

    async def pending(self, session_id: str, limit: int) -> list[PendingItem]:
        """The next (at most `limit`) pending items of the session, in send order."""
        return (await self.next_batch(session_id, limit))[0]

    async def next_batch(self, session_id: str, limit: int) -> tuple[list[PendingItem], str | None]:
        """`pending`, and the diff hash last delivered for the session, in one hand-off to the
        connection's thread (a delivery needs both for every batch it plans)."""

        def read(db: sqlite3.Connection) -> tuple[list[PendingItem], str | None]:
            rows = db.execute(PENDING_IN_ORDER, (session_id, limit)).fetchall()
            cursor = db.execute(
                "SELECT diff_hash FROM session_cursor WHERE session_id = ?", (session_id,)
            ).fetchone()
            items = [PendingItem(session_id, row[0], row[1], row[2]) for row in rows]
            return items, cursor[0] if cursor else None

        with self._told():
            return await read_whole(self._conn, self._lock, read)

    async def ack(
        self, session_id: str, items: Iterable[PendingItem], diff_hash: str | None = None
    ) -> None:
        """The receiver acknowledged `items`: drop them unless captured again meanwhile."""
        removed = _removal(items)
        stamp = now_ms()

        def drop(db: sqlite3.Connection) -> None:
            db.executemany(REMOVE_PENDING, removed)
            db.execute(
                "UPDATE session_cursor SET time_last_delivery = ?, last_error = NULL, "
                "attempts = 0, diff_hash = COALESCE(?, diff_hash) WHERE session_id = ?",
                (stamp, diff_hash, session_id),
            )

        await self._write_in_thread(drop)

    async def dead_letter(
        self, session_id: str, letters: Iterable[tuple[PendingItem, Any]], reason: str
    ) -> None:
        """Move items the receiver refused (or that could not be read) to the dead letters,
        with their payload, so that nothing disappears unseen."""
        letters = list(letters)
        reason = jsontext.readable_text(reason)  # it may quote what was refused
        stamp = now_ms()
        async with self._write() as db:
            reason = await self._scrubbed(db, session_id, reason)
            await db.executemany(
                "INSERT INTO dead_letter (session_id, kind, item_id, payload, reason, "
                "time_created) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        session_id,
                        item.kind,
                        _readable_id(item.item_id),
                        _payload(payload),
                        reason,
                        stamp,
                    )
                    for item, payload in letters
                ],
            )
            await self._remove(db, (item for item, _ in letters))
            await db.execute(
                "UPDATE session_cursor SET last_error = ? WHERE session_id = ?",
                (reason, session_id),
            )

    async def requeue_dead_letters(self, letters: dict[int, set[tuple[str, str]]]) -> list[int]:
        """Put the entities behind each dead letter (id -> (kind, item_id) keys of its
        session) back as pending, and delete the letter, in one transaction. Content is read
        from opencode at send time, so a retry always sends the newest state; a key already
        pending gets a newer version, so no acknowledgement of an older batch can drop it.
        Returns the ids actually requeued (a letter retried or discarded meanwhile is skipped)."""
        stamp = now_ms()

        # In one hand-off: a round trip per statement held the write lock for seconds per
        # thousand letters, and a running daemon's writes give up after BUSY_TIMEOUT_MS.
        def requeue(db: sqlite3.Connection) -> list[int]:
            done: list[int] = []
            for letter_id, keys in letters.items():
                row = db.execute(
                    "SELECT session_id FROM dead_letter WHERE id = ?", (letter_id,)
                ).fetchone()
                if row is None:
                    continue
                db.executemany(
                    UPSERT_PENDING, [(row[0], kind, item_id, stamp) for kind, item_id in keys]
                )
                db.execute("DELETE FROM dead_letter WHERE id = ?", (letter_id,))
                done.append(letter_id)
            return done

        return await self._write_in_thread(requeue)

    async def discard_dead_letters(self, letter_ids: Iterable[int]) -> int:
        """Delete dead letters for good; returns how many existed."""
        rows = [(letter_id,) for letter_id in letter_ids]

        def discard(db: sqlite3.Connection) -> int:  # one hand-off, as requeue_dead_letters
            return db.executemany("DELETE FROM dead_letter WHERE id = ?", rows).rowcount

        return await self._write_in_thread(discard)

    async def record_error(self, session_id: str, message: str) -> None:
        message = jsontext.readable_text(message)
        async with self._write() as db:
            message = await self._scrubbed(db, session_id, message)
            await db.execute(
                "INSERT INTO session_cursor (session_id, last_error, attempts) VALUES (?, ?, 1) "
                "ON CONFLICT (session_id) DO UPDATE SET last_error = excluded.last_error, "
                "attempts = attempts + 1",
                (session_id, message),
            )

    @staticmethod
    async def _scrubbed(db: aiosqlite.Connection, session_id: str, text: str) -> str:
        """`text` fit to store: a receiver may echo the share secrets of the session."""
        async with db.execute("SELECT secret FROM share WHERE session_id = ?", (session_id,)) as c:
            secrets = [row[0] for row in await c.fetchall()]
        return scrub(text, secrets)

    @staticmethod
    async def _remove(db: aiosqlite.Connection, items: Iterable[PendingItem]) -> None:
        await db.executemany(REMOVE_PENDING, _removal(items))

    async def reset_diff_hash(self, session_id: str) -> None:
        async with self._write() as db:
            await db.execute(
                "UPDATE session_cursor SET diff_hash = NULL WHERE session_id = ?", (session_id,)
            )

    # -- shares ------------------------------------------------------------------------------

    async def share(self, session_id: str, target: str) -> tuple[Share, bool] | None:
        """The session's share on `target`, and whether it was already re-created once."""
        rows = await self._rows(
            "SELECT share_id, secret, url, recreated FROM share "
            "WHERE session_id = ? AND target = ?",
            (session_id, target),
        )
        if not rows:
            return None
        row = rows[0]
        return Share(row[0], row[1], row[2]), bool(row[3])

    async def save_share(
        self, session_id: str, target: str, share: Share, *, recreated: bool = False
    ) -> None:
        row = (session_id, target, share.id, share.secret, share.url, int(recreated), now_ms())

        def save(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO share (session_id, target, share_id, secret, url, recreated, "
                "time_created) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (session_id, target) "
                "DO UPDATE SET share_id = excluded.share_id, secret = excluded.secret, "
                "url = excluded.url, recreated = excluded.recreated",
                row,
            )

        await self._write_in_thread(save)

    async def drop_share(self, session_id: str, target: str) -> None:
        async with self._write() as db:
            await db.execute(
                "DELETE FROM share WHERE session_id = ? AND target = ?", (session_id, target)
            )

    # -- reporting ---------------------------------------------------------------------------

    async def session_report(self) -> list[dict[str, Any]]:
        rows = await self._rows(
            """
            SELECT c.session_id, s.url, c.time_last_delivery, c.last_error, c.attempts,
                   (SELECT COUNT(*) FROM pending_item p WHERE p.session_id = c.session_id),
                   (SELECT MIN(time_created) FROM pending_item p
                     WHERE p.session_id = c.session_id),
                   (SELECT COUNT(*) FROM dead_letter d WHERE d.session_id = c.session_id)
            FROM session_cursor c LEFT JOIN share s ON s.session_id = c.session_id
            ORDER BY c.session_id
            """
        )
        keys = ("session_id", "share_url", "time_last_delivery", "last_error", "attempts",
                "pending", "oldest_pending", "dead_letters")  # fmt: skip
        return [dict(zip(keys, row, strict=True)) for row in rows]

    async def dead_letters(self, spans: Iterable[range] | None = None) -> list[dict[str, Any]]:
        """Every dead letter (or those with an id in one of `spans`), oldest first, without
        payloads."""
        sql = "SELECT id, session_id, kind, item_id, reason, time_created FROM dead_letter"
        params: tuple[str, ...] = ()
        if spans is not None:
            bounds = [[span.start, span.stop - 1] for span in merged_spans(spans)]
            if not bounds:
                return []
            # The spans travel as one JSON value: a variable per id would meet SQLite's limit
            # (32,766 by default) on a large refusal's letters, and a range is never expanded.
            # Each span looks its letters up by id (CROSS JOIN keeps the spans outside):
            # letters compared with every span took minutes for a thousand ids named.
            sql = (
                "SELECT dead_letter.id, session_id, kind, item_id, reason, time_created "
                "FROM json_each(?) AS span CROSS JOIN dead_letter WHERE dead_letter.id "
                "BETWEEN json_extract(span.value, '$[0]') AND json_extract(span.value, '$[1]')"
            )
            params = (jsontext.dumps(bounds),)
        rows = await self._rows(f"{sql} ORDER BY dead_letter.id", params)
        keys = ("id", "session_id", "kind", "item_id", "reason", "time_created")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    async def dead_letter_payload(self, letter_id: int) -> Any:
        """What was refused (the SyncData item, or the raw row), as JSON; None if unknown."""
        rows = await self._rows("SELECT payload FROM dead_letter WHERE id = ?", (letter_id,))
        return jsontext.loads(rows[0][0]) if rows and rows[0][0] is not None else None

    # -- conditions and held deletions -------------------------------------------------------

    async def set_condition(self, name: str, message: str | None, *, problem: bool = True) -> None:
        """Record (or, with None, clear) a condition that is not one session's."""
        message = None if message is None else jsontext.readable_text(message)
        async with self._write() as db:
            if message is None:
                await db.execute("DELETE FROM condition WHERE name = ?", (name,))
                return
            await db.execute(
                "INSERT INTO condition (name, message, problem, time_created) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET message = excluded.message, "
                "problem = excluded.problem, time_created = excluded.time_created",
                (name, message, int(problem), now_ms()),
            )

    async def conditions(self) -> list[dict[str, Any]]:
        rows = await self._rows(
            "SELECT name, message, problem, time_created FROM condition ORDER BY name"
        )
        return [
            {"name": row[0], "message": row[1], "problem": bool(row[2]), "time_created": row[3]}
            for row in rows
        ]

    async def hold_deletions(self, session_ids: Iterable[str]) -> None:
        stamp = now_ms()
        async with self._write() as db:
            await db.executemany(
                "INSERT INTO held_deletion (session_id, time_created) VALUES (?, ?) "
                "ON CONFLICT (session_id) DO NOTHING",
                [(session_id, stamp) for session_id in session_ids],
            )

    async def held_deletions(self) -> dict[str, bool]:
        """Sessions whose remote deletion is held back, and whether it was confirmed."""
        rows = await self._rows("SELECT session_id, confirmed FROM held_deletion")
        return {row[0]: bool(row[1]) for row in rows}

    async def release_held(self, session_id: str) -> None:
        """The session is back in opencode: nothing to hold any more."""
        async with self._write() as db:
            await db.execute("DELETE FROM held_deletion WHERE session_id = ?", (session_id,))

    async def confirm_deletions(self) -> int:
        async with self._write() as db:
            cursor = await db.execute("UPDATE held_deletion SET confirmed = 1")
            return cursor.rowcount


def _seen_text(seen: dict[tuple[str, str], int]) -> str:
    """Table mode's seen stamps as JSON: [[kind, id, stamp], ...], an id that is not UTF-8 (read
    as bytes) as {"hex": ...}, so that it compares equal when read back."""
    return jsontext.dumps(
        [
            [kind, {"hex": item_id.hex()} if isinstance(item_id, bytes) else item_id, stamp]
            for (kind, item_id), stamp in seen.items()
        ]
    )


def _seen_from(text: str) -> dict[tuple[str, Any], int] | None:
    """`_seen_text` read back; None when the state holds something else (edited by hand, or
    damaged): the session is then read as if no read were kept, which re-sends, never loses."""
    try:
        return {
            (kind, bytes.fromhex(item_id["hex"]) if isinstance(item_id, dict) else item_id): stamp
            for kind, item_id, stamp in jsontext.loads(text)
        }
    except (ValueError, TypeError, KeyError):  # JsonTextError is a ValueError
        return None


def _print_from(text: str | None) -> TablePrint | None:
    """A read's TablePrint as the capture wrote it; None when there is none (a read kept before
    syncd kept prints) or the state holds something else: the session's next read then keeps
    one, without comparing."""
    try:
        values = jsontext.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    if not isinstance(values, list) or len(values) != len(TablePrint._fields):
        return None
    below, session, rows, total = values
    if type(below) not in (int, float) or not all(type(value) is int for value in (rows, total)):
        return None  # below: a REAL watermark's margin is one too
    if session is not None and type(session) not in (int, float):  # as opencode stored it
        return None
    return TablePrint(below, session, rows, total)


def _payload(payload: Any) -> str | None:
    """A dead letter's payload as JSON text; None when it has none or cannot be written (the
    item stays readable in opencode by its id)."""
    if payload is None:
        return None
    try:
        return jsontext.dumps(payload)
    except jsontext.JsonTextError:
        return None
