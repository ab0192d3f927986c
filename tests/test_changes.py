"""Change detection: journal mode, table mode, deletions, first sight, journal gaps."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from syncd.errors import UserError
from syncd.model import Cursor
from syncd.source.changes import CLOCK_SLACK_MS, RESTAMP_MARGIN_MS, ChangeDetector
from syncd.source.opencode_db import OpencodeDb, SchemaError
from tests.support.fake_opencode import FakeOpencode


def cursors_after(changes) -> dict[str, Cursor]:
    return {c.session_id: Cursor(c.journal_seq, c.time_updated) for c in changes.changed}


@contextlib.asynccontextmanager
async def detector_on(
    writer: FakeOpencode, *, only_shared: bool = False
) -> AsyncIterator[ChangeDetector]:
    """A change detector on the writer's database; both closed at the end."""
    db = await OpencodeDb.open(writer.path)
    try:
        yield ChangeDetector(db, only_shared=only_shared)
    finally:
        await db.close()
        writer.close()


async def test_first_sight_captures_every_entity(sample_db: Path) -> None:
    db = await OpencodeDb.open(sample_db)
    try:
        changes = await ChangeDetector(db, only_shared=False).detect({})
    finally:
        await db.close()
    keys = set().union(*(c.keys for c in changes.changed))
    assert len(changes.changed) == 5
    assert sum(1 for kind, _ in keys if kind == "session") == 5
    assert sum(1 for kind, _ in keys if kind == "message") == 15
    assert sum(1 for kind, _ in keys if kind == "part") == 35
    assert all(c.journal_seq == 27 for c in changes.changed)


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "tables"])
async def test_only_what_changed_is_captured(
    tmp_path: Path, fixtures_dir: Path, journal: bool
) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=journal)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user", "time": {"created": 1}})
    first = writer.part(sid, mid, {"type": "text", "text": "a"})
    other = writer.part(sid, mid, {"type": "text", "text": "b"})
    async with detector_on(writer) as detector:
        initial = await detector.detect({})
        cursors = cursors_after(initial)
        assert initial.changed[0].keys == {
            ("session", sid),
            ("message", mid),
            ("part", first),
            ("part", other),
        }
        assert (await detector.detect(cursors)).changed == []

        writer.part(sid, mid, {"type": "text", "text": "a, grown"}, part_id=first)
        again = await detector.detect(cursors)
        assert [c.keys for c in again.changed] == [{("part", first)}]


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "tables"])
async def test_count_tells_beforehand_what_a_capture_records(
    tmp_path: Path, fixtures_dir: Path, journal: bool
) -> None:
    """Backfill totals: the cheap count agrees with what the capture then records, on first
    sight and after changes (a part updated three times counts once)."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=journal)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user", "time": {"created": 1}})
    part = writer.part(sid, mid, {"type": "text", "text": "a"})
    quiet = writer.session()
    writer.message(quiet, {"role": "user", "time": {"created": 2}})
    async with detector_on(writer) as detector:
        scan = await detector.scan({}, deep=True)
        assert await detector.count(scan, {}) == {sid: 3, quiet: 2}
        cursors = cursors_after(await detector.detect({}))
        for text in ("ab", "abc", "abcd"):
            writer.part(sid, mid, {"type": "text", "text": text}, part_id=part)
        writer.part(sid, mid, {"type": "text", "text": "new"})
        scan = await detector.scan(cursors, deep=True)
        counted = await detector.count(scan, cursors)
        captured = {c.session_id: len(c.keys) for c in (await detector.detect(cursors)).changed}
        assert counted == captured == {sid: 2}


async def test_table_mode_counts_a_row_rewritten_far_below_as_its_capture_records_it(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """Backfill totals: a part rewritten with a stamp far below the margin table mode reads
    from is counted (the rows below it are), and the count agrees with the capture."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=False)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user"})
    parts = [writer.part(sid, mid, {"type": "text", "text": str(n)}) for n in range(3)]
    async with detector_on(writer) as detector:
        cursors = cursors_after(await detector.detect({}))
        writer.conn.execute("UPDATE part SET time_updated = 1000 WHERE id = ?", (parts[0],))
        scan = await detector.scan(cursors, deep=True)
        counted = await detector.count(scan, cursors)
        changed = (await detector.detect(cursors, deep=True)).changed
        assert [c.keys for c in changed] == [{("part", parts[0])}]
        assert counted == {sid: 1}


async def test_table_mode_sees_rows_written_in_the_same_millisecond(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=False)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user"})
    async with detector_on(writer) as detector:
        cursors = cursors_after(await detector.detect({}))
        stamp = cursors[sid].time_updated
        # A row committed later, stamped with the very millisecond of the watermark.
        writer.conn.execute(
            "INSERT INTO part (id, message_id, session_id, time_created, time_updated, data) "
            "VALUES ('prt_late', ?, ?, ?, ?, '{}')",
            (mid, sid, stamp, stamp),
        )
        later = await detector.detect(cursors)
        assert [c.keys for c in later.changed] == [{("part", "prt_late")}]


async def test_table_mode_remembers_only_what_its_next_read_can_meet(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """Without a journal the detector remembers the stamps it read, to capture only the new
    among rows read again from below the watermark; a first read takes every row of the
    session, and keeping those would grow with the database."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=False)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user"})
    newest = writer.conn.execute("SELECT time_updated FROM session").fetchone()[0]
    for n in range(200):  # an hour of parts, the last at the session's own stamp
        stamp = newest - (199 - n) * 18_000
        writer.conn.execute(
            "INSERT INTO part (id, message_id, session_id, time_created, time_updated, data) "
            "VALUES (?, ?, ?, ?, ?, '{}')",
            (f"prt_{n:03}", mid, sid, stamp, stamp),
        )
    async with detector_on(writer) as detector:
        first = await detector.detect({})
        assert len(first.changed[0].keys) == 202
        remembered = detector._reads[sid].seen
        assert 0 < len(remembered) < 10
        kept_from = newest - RESTAMP_MARGIN_MS - CLOCK_SLACK_MS
        assert all(stamp >= kept_from for stamp in remembered.values())
        cursors = cursors_after(first)
        assert (await detector.detect(cursors)).changed == []
        # A row committed late with a stamp inside the margin is still seen.
        writer.conn.execute(
            "INSERT INTO part (id, message_id, session_id, time_created, time_updated, data) "
            "VALUES ('prt_late', ?, ?, ?, ?, '{}')",
            (mid, sid, newest - 1000, newest - 1000),
        )
        assert [c.keys for c in (await detector.detect(cursors)).changed] == [
            {("part", "prt_late")}
        ]


async def test_table_mode_reads_from_the_last_read_when_the_clock_went_back(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """A watermark an hour ahead of the clock (it ran fast, then was corrected): the rows of a
    session read ten minutes ago (an idle one, read at the deep poll) may be stamped anywhere
    since then, far below the watermark and more than the margin below now."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=False)
    ahead = int(time.time() * 1000) + 3600 * 1000
    sid = writer.session(time_created=ahead, time_updated=ahead)
    mid = writer.message(sid, {"role": "user"})
    async with detector_on(writer) as detector:
        cursors = cursors_after(await detector.detect({}))
        assert cursors[sid].time_updated == ahead
        read = detector._reads[sid]  # that read was ten minutes ago
        detector._reads[sid] = replace(read, clock=read.clock - 600_000)
        stamp = int(time.time() * 1000) - 5 * 60 * 1000
        writer.conn.execute(
            "INSERT INTO part (id, message_id, session_id, time_created, time_updated, data) "
            "VALUES ('prt_since', ?, ?, ?, ?, '{}')",
            (mid, sid, stamp, stamp),
        )
        later = await detector.detect(cursors, deep=True)
        assert [c.keys for c in later.changed] == [{("part", "prt_since")}]


async def test_table_mode_captures_a_session_without_cursor_whole_again(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """A session whose cursor is gone (the daemon reloaded to another receiver, which has none
    of it) is new again: the stamps read for the old receiver must not hold any row back."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=False)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user"})
    part = writer.part(sid, mid, {"type": "text", "text": "a"})
    async with detector_on(writer) as detector:
        whole = {("session", sid), ("message", mid), ("part", part)}
        assert [c.keys for c in (await detector.detect({})).changed] == [whole]
        assert [c.keys for c in (await detector.detect({})).changed] == [whole]


async def test_table_mode_after_a_reboot_reads_every_row_of_a_session_ahead_of_the_clock(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """A last read recorded in another boot: no clock tells when it was by the wall clock as it
    is now. A watermark ahead of the clock says the clock went back at some time unknown: every
    row is read, and only those the last read did not keep are captured."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=False)
    ahead = int(time.time() * 1000) + 3600 * 1000
    sid = writer.session(time_created=ahead, time_updated=ahead)
    mid = writer.message(sid, {"role": "user"})
    async with detector_on(writer) as detector:
        first = await detector.detect({})
        cursors = cursors_after(first)
        stamp = int(time.time() * 1000) - 30 * 60 * 1000
        writer.conn.execute(
            "INSERT INTO part (id, message_id, session_id, time_created, time_updated, data) "
            "VALUES ('prt_since', ?, ?, ?, ?, '{}')",
            (mid, sid, stamp, stamp),
        )
        read = first.changed[0].read
        assert read is not None
        rebooted = ChangeDetector(
            detector._db, only_shared=False, reads={sid: replace(read, boot="another boot")}
        )
        later = await rebooted.detect(cursors, deep=True)
        assert [c.keys for c in later.changed] == [{("part", "prt_since")}]


async def test_deleted_sessions_are_reported(tmp_path: Path, fixtures_dir: Path) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    kept, gone = writer.session(), writer.session()
    async with detector_on(writer) as detector:
        cursors = cursors_after(await detector.detect({}))
        writer.delete_session(gone)
        changes = await detector.detect(cursors)
        assert changes.deleted == [gone]
        assert kept not in changes.deleted


async def test_a_journal_gap_recaptures_the_whole_session(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user"})
    async with detector_on(writer) as detector:
        cursors = cursors_after(await detector.detect({}))
        part = writer.part(sid, mid, {"type": "text"})
        writer.conn.execute("DELETE FROM event WHERE aggregate_id = ? AND seq > 1", (sid,))
        changes = await detector.detect(cursors)
        assert changes.changed[0].keys == {("session", sid), ("message", mid), ("part", part)}


async def test_shared_only_skips_sessions_opencode_did_not_share(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    private, public = writer.session(), writer.session()
    writer.share(public, "abc", "s3cret", "http://127.0.0.1:1/share/abc")
    async with detector_on(writer, only_shared=True) as detector:
        changes = await detector.detect({})
    assert [c.session_id for c in changes.changed] == [public]
    assert private not in {c.session_id for c in changes.changed}


async def test_missing_database_and_unknown_schema_are_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="opencode database not found at"):
        await OpencodeDb.open(tmp_path / "nope.db")
    odd = tmp_path / "odd.db"
    conn = sqlite3.connect(odd)
    conn.execute("CREATE TABLE session (id TEXT, time_updated INTEGER)")
    conn.close()
    db = await OpencodeDb.open(odd)  # open: the schema may still be on its way
    try:
        missing = (
            r"missing column session\.project_id, column session\.slug, .*"
            r"column session\.time_created, table message, table part \(a newer opencode"
        )
        with pytest.raises(SchemaError, match=missing):
            await db.readable()
        with pytest.raises(SchemaError):
            await ChangeDetector(db, only_shared=False).detect({})
    finally:
        await db.close()


async def test_reading_never_writes_or_holds_a_transaction(sample_db: Path) -> None:
    before = sample_db.read_bytes()
    db = await OpencodeDb.open(sample_db)
    try:
        await ChangeDetector(db, only_shared=False).detect({})
        # A writer can take the write lock and checkpoint: syncd holds no reader open.
        writer = sqlite3.connect(sample_db, timeout=0.1)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("COMMIT")
        busy, log, checkpointed = writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        writer.close()
        assert busy == 0 and log == checkpointed
    finally:
        await db.close()
    assert sample_db.stat().st_size >= len(before)


async def test_an_event_it_cannot_read_recaptures_the_whole_session(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user"})
    async with detector_on(writer) as detector:
        cursors = cursors_after(await detector.detect({}))
        # A message event without the message in it: syncd cannot tell what changed.
        writer._event(sid, "message.updated.1", {"sessionID": sid, "info": None})
        changes = await detector.detect(cursors)
        assert changes.changed[0].keys == {("session", sid), ("message", mid)}


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "tables"])
async def test_a_wakeup_reads_only_the_sessions_that_moved(
    tmp_path: Path, fixtures_dir: Path, journal: bool
) -> None:
    """The cheap test runs on the session list; only sessions that moved get a read of their
    own (each a snapshot: a thousand idle sessions must not cost a thousand)."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=journal)
    # Idle sessions (without a journal, recently active ones are re-checked on every wake-up).
    idle = 1_000_000_000_000
    sids = [writer.session(time_created=idle, time_updated=idle) for _ in range(5)]
    mid = writer.message(sids[2], {"role": "user"})
    async with detector_on(writer) as detector:
        cursors = cursors_after(await detector.detect({}))
        assert (await detector.scan(cursors)).candidates == []
        writer.message(sids[2], {"role": "user", "text": "edited"}, message_id=mid)
        writer.session(session_id=sids[2], title="moved")  # table mode sees the session move
        assert [c[0] for c in (await detector.scan(cursors)).candidates] == [sids[2]]


async def test_table_mode_keeps_a_session_change_made_after_the_session_list_was_read(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """Without a journal, each session is read in its own snapshot after the list: a rename
    that lands in between, followed by a newer part, must still be captured."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=False)
    sid = writer.session(time_created=1000, time_updated=1000)
    mid = writer.message(sid, {"role": "user"})
    writer.conn.execute("UPDATE message SET time_updated = 1000")
    async with detector_on(writer) as detector:
        cursors = cursors_after(await detector.detect({}))
        scan = await detector.scan(cursors, deep=True)
        writer.conn.execute("UPDATE session SET title = 'renamed', time_updated = 2000")
        writer.conn.execute(
            "INSERT INTO part (id, message_id, session_id, time_created, time_updated, data) "
            "VALUES ('prt_new', ?, ?, 3000, 3000, '{}')",
            (mid, sid),
        )
        [change] = [c async for c in detector.changes(scan, cursors)]
        assert change.keys == {("session", sid), ("part", "prt_new")}
