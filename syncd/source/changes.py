"""Which sessions changed since the cursors, and which entities in them.

Two ways to see a change, chosen per session:
- the journal (`event_sequence` / `event`): a session whose `seq` moved is read from its
  cursor on, and its events name the entities that changed;
- the tables alone, for a database without a journal (or a session the journal does not
  know yet): rows whose `time_updated`, or a diff file whose modification time, is new or
  changed since the last read, looked for from a margin below the session's watermark.
A session seen for the first time, or whose journal has a gap or went backwards (another
database under the same name), is captured whole; so is every session of a database captured
afresh (`fresh`: the file was replaced). A session that vanished from the `session` table was
deleted (no deletion event survives).
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from .. import jsontext
from ..model import Cursor
from . import storage
from .opencode_db import OpencodeDb

ItemKey = tuple[str, str]  # (kind, id); kind is session | message | part
# Without a journal, a part can grow without its session's time_updated moving: sessions
# active this recently are checked on every wake-up, the others on the deep safety poll.
ACTIVE_WINDOW_MS = 15 * 60 * 1000
# A row's `time_updated` is its writer's wall clock when it built the row, not the order of
# commits: another opencode process commits a row stamped before the newest one syncd read,
# and a clock set back stamps new rows below it. Table mode reads rows from this far below the
# watermark (or below now, when the clock went back past it) and captures those it has not
# seen with their stamp.
RESTAMP_MARGIN_MS = 60 * 1000


@dataclass
class SessionChange:
    session_id: str
    keys: set[ItemKey] = field(default_factory=set)
    journal_seq: int | None = None
    time_updated: int | None = None


@dataclass
class ChangeSet:
    changed: list[SessionChange]
    deleted: list[str]
    rows_read: int = 0


@dataclass
class Scan:
    """One look at the session list: the sessions that may have changed (each read later in its
    own short snapshot) and the sessions that vanished."""

    candidates: list[tuple[str, int | None, int]]  # (id, journal head, time_updated)
    deleted: list[str]
    rows_read: int = 0
    fresh: bool = False  # every candidate is captured whole, whatever its cursor


class ChangeDetector:
    def __init__(self, db: OpencodeDb, *, only_shared: bool) -> None:
        self._db = db
        self.only_shared = only_shared
        # Table mode, per session: the stamps of the entities read at or above its last floor
        # (_floor), so that reading again from below the watermark captures only the new;
        # and when that read began (time.monotonic()).
        self._seen: dict[str, dict[ItemKey, int]] = {}
        self._read_at: dict[str, float] = {}

    async def scan(
        self, cursors: dict[str, Cursor], *, deep: bool = False, fresh: bool = False
    ) -> Scan:
        """The session list, the journal heads and the shares, in one snapshot: two rows per
        session, whatever the number of messages and parts. `fresh`: every session is a
        candidate, to be captured whole (the cursors still tell which sessions vanished).
        Raises SchemaError when the database cannot be read as it is now."""
        db = self._db
        await db.readable()
        if fresh:
            self._seen.clear()
            self._read_at.clear()
        async with db.snapshot():
            sessions = {
                row[0]: (row[1], bool(row[2]))
                for row in await db.rows("SELECT id, time_updated, share_url FROM session")
            }
            heads: dict[str, int] = {}
            if db.has_journal:
                heads = {
                    row[0]: row[1]
                    for row in await db.rows("SELECT aggregate_id, seq FROM event_sequence")
                }
            shared: set[str] = set()
            if db.schema.has_shares:
                shared = {row[0] for row in await db.rows("SELECT session_id FROM session_share")}
        now = int(time.time() * 1000)
        candidates = []
        for session_id, (time_updated, has_share_url) in sessions.items():
            if self.only_shared and not (has_share_url or session_id in shared):
                continue
            head, cursor = heads.get(session_id), cursors.get(session_id)
            check_rows = deep or now - time_updated < ACTIVE_WINDOW_MS
            if fresh or self._may_have_changed(session_id, head, time_updated, cursor, check_rows):
                candidates.append((session_id, head, time_updated))
        deleted = [sid for sid in cursors if sid not in sessions]
        return Scan(candidates, deleted, len(sessions) + len(heads) + len(shared), fresh)

    def _may_have_changed(
        self,
        session_id: str,
        head: int | None,
        time_updated: int,
        cursor: Cursor | None,
        check_rows: bool,
    ) -> bool:
        """Whether the session is worth a read: the cheap test, so that a wake-up opens no
        snapshot for the sessions that did not move."""
        if head is not None:
            return cursor is None or cursor.journal_seq is None or head != cursor.journal_seq
        if check_rows or cursor is None or cursor.time_updated is None:
            return True
        watermark = cursor.time_updated
        seen = self._seen.get(session_id, {}).get(("session", session_id))
        return time_updated > watermark or (time_updated == watermark and seen != time_updated)

    async def changes(self, scan: Scan, cursors: dict[str, Cursor]) -> AsyncIterator[SessionChange]:
        """The changed sessions of `scan`, one at a time: each is read in its own snapshot and
        handed over before the next is read, so neither memory nor a read transaction grows
        with the database (a first capture of a million parts included)."""
        for session_id, head, _ in scan.candidates:
            cursor = None if scan.fresh else cursors.get(session_id)
            # The whole read in one hand-off to the connection's thread.
            if head is not None:
                read = functools.partial(self._from_journal, session_id=session_id, head=head,
                                         cursor=cursor)  # fmt: skip
            else:
                read = functools.partial(self._from_tables, session_id=session_id, cursor=cursor)
            change = await self._db.read(read)
            if change is not None:
                scan.rows_read += len(change.keys)
                yield change

    async def detect(self, cursors: dict[str, Cursor], *, deep: bool = False) -> ChangeSet:
        """Everything that changed, collected (for callers that need the whole picture)."""
        scan = await self.scan(cursors, deep=deep)
        changed = [change async for change in self.changes(scan, cursors)]
        return ChangeSet(changed, scan.deleted, scan.rows_read)

    def _from_journal(
        self, db: sqlite3.Connection, *, session_id: str, head: int, cursor: Cursor | None
    ) -> SessionChange | None:
        # The head as of this snapshot, so that the rows read with it are exactly the state it
        # names (a later event is the next wake-up's, not a repeat).
        row = db.execute(
            "SELECT seq FROM event_sequence WHERE aggregate_id = ?", (session_id,)
        ).fetchone()
        head = row[0] if row else head
        last = cursor.journal_seq if cursor else None
        change = SessionChange(session_id, journal_seq=head)
        if last is None or head < last:  # new to syncd, or a journal that went backwards
            change.keys = _whole_session(db, session_id)
            return change
        events = db.execute(
            "SELECT seq, type, data FROM event WHERE aggregate_id = ? AND seq > ? AND seq <= ? "
            "ORDER BY seq",
            (session_id, last, head),
        ).fetchall()
        keys = _keys_from_events(session_id, events)
        gap = not events or events[0][0] != last + 1 or len(events) != head - last
        change.keys = _whole_session(db, session_id) if keys is None or gap else keys
        return change

    def _from_tables(
        self, db: sqlite3.Connection, *, session_id: str, cursor: Cursor | None
    ) -> SessionChange | None:
        started = time.monotonic()  # before the snapshot's first read
        stamps = _table_stamps(db, self._db.storage, session_id, self._floor(session_id, cursor))
        self._read_at[session_id] = started
        fresh = _unseen(stamps, self._seen.get(session_id, {}))
        newest = max(stamps.values(), default=None)
        # Kept: what the next read, from the next floor up, can meet again (a first read takes
        # every row of the session; keeping them all would grow with the database).
        if fresh and newest is not None:
            below = _next_floor(newest)
        else:
            below = _next_floor(cursor.time_updated if cursor else None)
        self._seen[session_id] = {key: stamp for key, stamp in stamps.items() if stamp >= below}
        if not fresh:
            return None
        return SessionChange(session_id, keys=fresh, time_updated=newest)

    async def count(self, scan: Scan, cursors: dict[str, Cursor]) -> dict[str, int]:
        """How many entities a capture of `scan` will record, per session, counted without
        reading any row's data or touching the detector's own state (a backfill's totals,
        known before it starts): every entity of a session seen for the first time; for one
        seen before, the entities its newer journal events name, or its newer rows."""
        counts: dict[str, int] = {}
        async with self._db.snapshot():
            whole = {
                session_id
                for session_id, head, _ in scan.candidates
                if (cursor := cursors.get(session_id)) is None
                or (head is not None and cursor.journal_seq is None)
            }
            counts.update(dict.fromkeys(whole, 1))
            for kind in ("message", "part"):
                for session_id, rows in await self._db.rows(
                    f"SELECT session_id, COUNT(*) FROM {kind} GROUP BY session_id"
                ):
                    if session_id in whole:
                        counts[session_id] += rows
            for session_id, head, _ in scan.candidates:
                if session_id not in whole and head is not None:
                    # The entities _keys_from_events would name (one updated twice counts once).
                    row = await self._db.one(
                        "SELECT COUNT(DISTINCT CASE WHEN type LIKE 'session.%' THEN 'session' "
                        "ELSE COALESCE(json_extract(data, '$.part.id'), "
                        "json_extract(data, '$.info.id')) END) "
                        "FROM event WHERE aggregate_id = ? AND seq > ? AND seq <= ?",
                        (session_id, cursors[session_id].journal_seq, head),
                    )
                    if row[0]:
                        counts[session_id] = int(row[0])
        for session_id, head, _ in scan.candidates:
            if session_id not in whole and head is None:
                # The rows _from_tables would capture: their ids and stamps, not their data.
                floor = self._floor(session_id, cursors[session_id])
                read = functools.partial(_table_stamps, storage_path=self._db.storage,
                                         session_id=session_id, floor=floor)  # fmt: skip
                newer = _unseen(await self._db.read(read), self._seen.get(session_id, {}))
                if newer:
                    counts[session_id] = len(newer)
        return counts

    def _floor(self, session_id: str, cursor: Cursor | None) -> int:
        """The lowest `time_updated` table mode reads a session's rows from (-1: all of
        them): a margin below its watermark. A watermark ahead of the clock means the clock
        was set back (or a writer's ran fast): the rows written since the last read are
        stamped from the clock as it was then, however far below the watermark; when this
        detector has not read the session (syncd was stopped meanwhile), the clock may have
        gone back at any time since: every row."""
        watermark = cursor.time_updated if cursor else None
        now = int(time.time() * 1000)
        if watermark is None or watermark <= now:
            return _next_floor(watermark)
        read_at = self._read_at.get(session_id)
        if read_at is None:
            return -1
        return now - int((time.monotonic() - read_at) * 1000) - RESTAMP_MARGIN_MS

    async def whole_session(self, session_id: str) -> set[ItemKey]:
        """Every entity of the session: for a first capture, a journal gap, a lost share."""
        return await self._db.read(functools.partial(_whole_session, session_id=session_id))


def _next_floor(watermark: int | None) -> int:
    """The floor of a session's next read while the clock keeps going (see _floor)."""
    if watermark is None:
        return -1
    return min(watermark, int(time.time() * 1000)) - RESTAMP_MARGIN_MS


def _table_stamps(
    db: sqlite3.Connection, storage_path: Path, session_id: str, floor: int
) -> dict[ItemKey, int]:
    """The session's entities stamped at or above `floor`, with their stamps, as of this
    snapshot. The session's own stamp is read here, not taken from the session list read
    earlier: a rename since then must be seen with the rows read with it."""
    stamps: dict[ItemKey, int] = {}
    row = db.execute("SELECT time_updated FROM session WHERE id = ?", (session_id,)).fetchone()
    if row is not None:
        # A diff kept in a file (opencode <= 1.15) is written after the row: the file's own
        # stamp tells whether the session must be read again for it.
        stamp = max(row[0], storage.diff_stamp(storage_path, session_id) or 0)
        if stamp >= floor:
            stamps[("session", session_id)] = stamp
    for kind in ("message", "part"):
        rows = db.execute(
            f"SELECT id, time_updated FROM {kind} WHERE session_id = ? AND time_updated >= ?",
            (session_id, floor),
        )
        stamps.update(((kind, row[0]), row[1]) for row in rows)
    return stamps


def _unseen(stamps: dict[ItemKey, int], seen: dict[ItemKey, int]) -> set[ItemKey]:
    return {key for key, stamp in stamps.items() if seen.get(key) != stamp}


def _whole_session(db: sqlite3.Connection, session_id: str) -> set[ItemKey]:
    keys: set[ItemKey] = {("session", session_id)}
    for kind in ("message", "part"):
        rows = db.execute(f"SELECT id FROM {kind} WHERE session_id = ?", (session_id,))
        keys.update((kind, row[0]) for row in rows)
    return keys


def _keys_from_events(session_id: str, events: list) -> set[ItemKey] | None:
    """Entities named by journal events; None when an event cannot be understood (the
    caller then captures the whole session rather than guess)."""
    keys: set[ItemKey] = set()
    for _, event_type, data in events:
        name = event_type.rsplit(".", 1)[0]
        try:
            payload = jsontext.loads(data)
        except (TypeError, ValueError):
            return None
        try:
            if name.startswith("session."):
                keys.add(("session", session_id))
            elif name == "message.updated":
                keys.add(("message", str(payload["info"]["id"])))
            elif name == "message.part.updated":
                keys.add(("part", str(payload["part"]["id"])))
            elif name in ("message.removed", "message.part.removed"):
                continue  # the share API has no removal; the receiver keeps what it had
            else:
                return None
        except (KeyError, TypeError):
            return None
    return keys
