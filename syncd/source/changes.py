"""Which sessions changed since the cursors, and which entities in them.

Two ways to see a change, chosen per session:
- the journal (`event_sequence` / `event`): a session whose `seq` moved is read from its
  cursor on, and its events name the entities that changed;
- the tables alone, for a database without a journal (or a session the journal does not
  know yet): rows whose `time_updated`, or a diff file whose modification time, is new or
  changed since the last read, looked for from a margin below the session's watermark (or
  below that read, when it was lower). The last read is kept with the cursor (TableRead), so
  a restart neither misses nor re-sends rows. The rows below that floor are counted, not
  read (TablePrint): a message or part rewritten with a stamp below it (a writer whose clock
  is far behind) makes them other than the last read left them, and the session is read
  (and sent) whole.
A session seen for the first time, or whose journal has a gap or went backwards (another
database under the same name), is captured whole; so is every session of a database captured
afresh (`fresh`: the file was replaced). A session that vanished from the `session` table was
deleted (no deletion event survives).
"""

from __future__ import annotations

import functools
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from .. import jsontext
from ..model import Cursor, TablePrint, TableRead
from . import storage
from .opencode_db import OpencodeDb

ItemKey = tuple[str, str]  # (kind, id); kind is session | message | part
# Without a journal, a part can grow without its session's time_updated moving: sessions
# active this recently are checked on every wake-up, the others on the deep safety poll.
ACTIVE_WINDOW_MS = 15 * 60 * 1000
# A row's `time_updated` is its writer's wall clock when it built the row, not the order of
# commits: another opencode process commits a row stamped before the newest one syncd read,
# and a clock set back stamps new rows below it. Table mode reads rows from this far below the
# watermark, or below the last read (by the clock as it is now, when it went back since), and
# captures those it has not seen with their stamp.
RESTAMP_MARGIN_MS = 60 * 1000
# The stamps a read keeps reach this much lower than the next read's floor: the boot clock and
# the wall clock are read a moment apart, and a few milliseconds must not make a re-send.
CLOCK_SLACK_MS = 1000
# A row's `time_updated` as syncd reads it: an integer, whatever the row holds (a REAL cut to
# its milliseconds and to 64 bits, text or a blob as SQLite casts them, 0 for no number), so
# that a stamp opencode would never write is compared, kept as JSON and added up like any
# other instead of stopping every capture (a TypeError, or infinity in the kept read).
STAMP = "CAST(time_updated AS INTEGER)"
# A TablePrint adds up each stamp modulo this: no session's total overflows SQLite's integers,
# and Python adds up the same values for the rows it has stamps of.
PRINT_MODULUS = 2**32
_WEIGHT = f"({STAMP} % {PRINT_MODULUS} + {PRINT_MODULUS}) % {PRINT_MODULUS}"
# The floor of a read that takes every row: below any stamp, a REAL one included (a stamp
# before 1970 is below -1).
EVERY_ROW = float("-inf")
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
log = structlog.get_logger("syncd.source")


@dataclass
class SessionChange:
    session_id: str
    keys: set[ItemKey] = field(default_factory=set)
    journal_seq: int | None = None
    time_updated: int | None = None
    read: TableRead | None = None  # table mode: the read that found the change, to record


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
    def __init__(
        self, db: OpencodeDb, *, only_shared: bool, reads: dict[str, TableRead] | None = None
    ) -> None:
        self._db = db
        self.only_shared = only_shared
        # Table mode, per session: its last read (so that reading again from below the
        # watermark captures only the new); `reads` are those the state kept, when the
        # session's last capture recorded it.
        self._reads: dict[str, TableRead] = dict(reads or {})

    async def scan(
        self,
        cursors: dict[str, Cursor],
        *,
        deep: bool = False,
        fresh: bool = False,
        check: Collection[str] = (),
    ) -> Scan:
        """The session list, the journal heads and the shares, in one snapshot: two rows per
        session, whatever the number of messages and parts. `fresh`: every session is a
        candidate, to be captured whole (the cursors still tell which sessions vanished).
        `deep`: every table-mode session's rows are read, idle or not; `check`: those of these
        sessions. Raises SchemaError when the database cannot be read as it is now."""
        db = self._db
        await db.readable()
        if fresh:
            self._reads.clear()
        async with db.snapshot():
            sessions = {
                row[0]: (row[1], bool(row[2]))
                for row in await db.rows(f"SELECT id, {STAMP}, share_url FROM session")
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
        # Memory grows with the sessions alive, and those whose cursor is kept while they are gone
        # (a deletion held): back, they are read on from where they were.
        for gone in self._reads.keys() - sessions.keys() - cursors.keys():
            del self._reads[gone]
        now = int(time.time() * 1000)
        candidates = []
        for session_id, (time_updated, has_share_url) in sessions.items():
            if self.only_shared and not (has_share_url or session_id in shared):
                continue
            head, cursor = heads.get(session_id), cursors.get(session_id)
            check_rows = deep or session_id in check or now - time_updated < ACTIVE_WINDOW_MS
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
        seen = self._seen(session_id, cursor).get(("session", session_id))
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

    async def detect(
        self, cursors: dict[str, Cursor], *, deep: bool = False, check: Collection[str] = ()
    ) -> ChangeSet:
        """Everything that changed, collected (for callers that need the whole picture)."""
        scan = await self.scan(cursors, deep=deep, check=check)
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
        wall, (boot, clock) = _wall_ms(), boot_clock()  # before the snapshot's first read
        floor, kept = self._floor(session_id, cursor), self._kept(session_id, cursor)
        look = _look_at_tables(db, self._db.storage, session_id, floor, kept)
        fresh = _unseen(look.stamps, kept.seen if kept else {})
        newest = max(look.stamps.values(), default=None)
        watermark = newest if fresh else cursor.time_updated if cursor else None
        # Kept: what the next read, from its floor up, can meet again (a first read takes every
        # row of the session; keeping them all would grow with the database), and what it
        # knows of the rows below that.
        below = max(_floor_below(watermark, wall) - CLOCK_SLACK_MS, look.floor)
        seen = {key: stamp for key, stamp in look.stamps.items() if stamp >= below}
        read = self._reads[session_id] = TableRead(wall, boot, clock, seen, look.print(below))
        if fresh:
            return SessionChange(session_id, keys=fresh, time_updated=newest, read=read)
        if kept is not None and (kept.print is None or look.fewer):
            # A read kept before syncd kept prints (or a damaged one): keep one from now on.
            # Fewer rows below (deleted): the next read, a new process's too, compares with this
            # one, not with the kept one it cannot compare with.
            return SessionChange(session_id, read=read)
        return None

    def _seen(self, session_id: str, cursor: Cursor | None) -> dict[ItemKey, int]:
        read = self._kept(session_id, cursor)
        return read.seen if read is not None else {}

    def _kept(self, session_id: str, cursor: Cursor | None) -> TableRead | None:
        """The session's last read; none for a session without a watermark (new to syncd, or
        to the receiver it now delivers to, whose first failure may have recorded its error
        on a cursor row already: every row of it is new there)."""
        return self._reads.get(session_id) if cursor and cursor.time_updated is not None else None

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
                cursor = cursors[session_id]
                kept = self._kept(session_id, cursor)
                floor = self._floor(session_id, cursor)
                read = functools.partial(_look_at_tables, storage_path=self._db.storage,
                                         session_id=session_id, floor=floor, kept=kept)  # fmt: skip
                newer = _unseen((await self._db.read(read)).stamps, kept.seen if kept else {})
                if newer:
                    counts[session_id] = len(newer)
        return counts

    def _floor(self, session_id: str, cursor: Cursor | None) -> float:
        """The lowest `time_updated` table mode reads a session's rows from (EVERY_ROW: all
        of them): a margin below its watermark, or below its last read if that is lower. The
        rows written since the last read are stamped from the clock as it was then, however
        far below the watermark it is now (the clock was set back, even while syncd was
        stopped and caught up since): when the last read ran in this boot, the boot's clock
        tells when it was by the wall clock as it is now (unless that clock is now behind the
        one the read recorded: a snapshot restored, a time namespace). Otherwise, a clock now
        behind the watermark or the last read went back at some time unknown: every row."""
        watermark = cursor.time_updated if cursor else None
        if watermark is None:
            return EVERY_ROW
        now, (boot, clock) = _wall_ms(), boot_clock()
        read = self._reads.get(session_id)
        if read is not None and read.boot == boot and read.clock <= clock:
            return _floor_below(watermark, now - (clock - read.clock))
        if watermark > now or (read is not None and read.wall > now):
            return EVERY_ROW
        # A last read in another boot (or in a syncd that did not record it): its own time.
        return _floor_below(watermark, read.wall if read is not None else now)

    async def whole_session(self, session_id: str) -> set[ItemKey]:
        """Every entity of the session: for a first capture, a journal gap, a lost share."""
        return await self._db.read(functools.partial(_whole_session, session_id=session_id))


def _floor_below(watermark: int | None, read_began: int) -> float:
    """The floor of a read (see _floor): a margin below the watermark, or below when the last
    read began (ms, by the wall clock as it is now) if that is lower."""
    if watermark is None:
        return EVERY_ROW
    return min(watermark, read_began) - RESTAMP_MARGIN_MS


def _wall_ms() -> int:
    return int(time.time() * 1000)


@functools.cache
def _boot_id() -> str:
    """The boot the boot clock counts in: Linux names each; elsewhere, only this process's own
    readings compare."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return uuid.uuid4().hex


def boot_clock() -> tuple[str, int]:
    """The boot and its clock (ms, suspend included): every process of the boot reads the same
    clock, and no correction of the wall clock moves it."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    seconds = time.monotonic() if boottime is None else time.clock_gettime(boottime)
    return _boot_id(), int(seconds * 1000)


@dataclass
class _TableLook:
    """One read of a session's rows in table mode, as of one snapshot: the entities stamped at
    or above `floor` with their stamps, the session's own stamp (None: its row is gone), and
    how many messages and parts are stamped below `floor` with their stamps added up."""

    stamps: dict[ItemKey, int]
    session: int | None
    floor: float
    counted: tuple[int, int]
    fewer: bool = False  # fewer rows below than the kept read left there (deleted, or rewritten)

    def print(self, below: float) -> TablePrint:
        """What this read knows of the rows stamped below `below` (at or above its floor)."""
        rows, total = self.counted
        for (kind, _), stamp in self.stamps.items():
            if kind != "session" and stamp < below:
                rows, total = rows + 1, total + _weight(stamp)
        return TablePrint(below, self.session, rows, total)


def _look_at_tables(
    db: sqlite3.Connection,
    storage_path: Path,
    session_id: str,
    floor: float,
    kept: TableRead | None,
) -> _TableLook:
    """The session's rows from `floor` up, as of this snapshot; every row when, since the
    `kept` read, a message or part was rewritten (or written) with a stamp below the floor or
    below what that read kept stamps of. The session's own stamp is read here, not taken from
    the session list read earlier: a rename since then must be seen with the rows read with
    it; one that changed since the kept read is new whatever its stamp."""
    printed = kept.print if kept is not None else None
    if printed is not None:
        floor = max(floor, printed.below)  # its stamps reach down to there
    stamps: dict[ItemKey, int] = {}
    session = None
    row = db.execute(f"SELECT {STAMP} FROM session WHERE id = ?", (session_id,)).fetchone()
    if row is not None:
        # A diff kept in a file (opencode <= 1.15) is written after the row: the file's own
        # stamp tells whether the session must be read again for it.
        session = max(row[0], storage.diff_stamp(storage_path, session_id) or 0)
        if session >= floor or (printed is not None and session != printed.session):
            stamps[("session", session_id)] = session
    rows = total = 0
    for kind in ("message", "part"):
        stamps.update(
            ((kind, row[0]), row[1])
            for row in db.execute(
                f"SELECT id, {STAMP} FROM {kind} WHERE session_id = ? AND {STAMP} >= ?",
                (session_id, floor),
            )
        )
        below = db.execute(
            f"SELECT COUNT(*), COALESCE(SUM({_WEIGHT}), 0) FROM {kind} "
            f"WHERE session_id = ? AND {STAMP} < ?",
            (session_id, floor),
        ).fetchone()
        rows, total = rows + below[0], total + below[1]
    look = _TableLook(stamps, session, floor, (rows, total))
    if kept is None or printed is None:
        return look
    # The messages and parts stamped below the floor now, against those below it at the read
    # that kept `printed` and `seen` (less the rows rewritten since with a stamp at or above
    # it): more of them, or as many with other stamps, and a row was written below the floor.
    # Fewer: rows that read only counted were rewritten above the floor, or deleted; not
    # knowing their old stamps, the others are not compared.
    left_rows, left_total = _left_below(printed, kept.seen, look)
    if rows > left_rows or (rows == left_rows and total != left_total):
        log.info(
            "rows written with stamps below what table mode reads from (a writer's clock "
            "behind?): the session is read whole",
            session=session_id,
        )
        return _look_at_tables(db, storage_path, session_id, EVERY_ROW, None)
    look.fewer = rows < left_rows
    return look


def _left_below(printed: TablePrint, seen: dict[ItemKey, int], look: _TableLook) -> tuple[int, int]:
    """How many messages and parts the read that kept `printed` and `seen` left below
    `look`'s floor, their stamps added up, less those `look` met at or above it."""
    rows, total = printed.rows, printed.total
    for key, stamp in seen.items():
        if key[0] != "session" and stamp < look.floor and key not in look.stamps:
            rows, total = rows + 1, total + _weight(stamp)
    return rows, total


def _weight(stamp: int) -> int:
    """A stamp as a TablePrint adds it up (as _WEIGHT does in SQL)."""
    return stamp % PRINT_MODULUS


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
