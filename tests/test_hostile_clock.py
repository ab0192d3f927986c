"""Stamps that do not grow with commits. Without a journal (opencode up to 1.15) syncd sees
changes by `time_updated`, which is the writer's wall clock when it built the row: a clock
stepped back (NTP, a VM restored) stamps new rows below what syncd already read, and a second
opencode process can commit a row stamped before the newest one syncd has seen."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from syncd.archive.sqlite import SqliteArchive
from syncd.commands.sync import sync_once
from syncd.config import Config
from syncd.errors import UserError
from syncd.pipeline.deliver import RetryPolicy
from syncd.pipeline.pipeline import DELIVERING_META, Pipeline, capture_and_drain, delivering
from syncd.source import changes
from syncd.state.lock import StateLock
from syncd.state.store import StateStore
from tests.support.archive_check import archived, make_config
from tests.support.fake_opencode import FakeOpencode
from tests.support.opencode_releases import install_home

HOUR_MS = 3600 * 1000


def insert_part(writer: FakeOpencode, sid: str, mid: str, part_id: str, stamp: int) -> None:
    writer.conn.execute(
        "INSERT INTO part (id, message_id, session_id, time_created, time_updated, data) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (part_id, mid, sid, stamp, stamp, '{"type": "text", "text": "' + part_id + '"}'),
    )


async def delivered_part(
    tmp_path: Path, fixtures_dir: Path, part_id: str
) -> tuple[FakeOpencode, str, str, int, Config]:
    """A database without a journal, one session with a part stamped now (returned), delivered
    by a first `sync`."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=False)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user"})
    now = int(time.time() * 1000)
    insert_part(writer, sid, mid, part_id, now)
    config = make_config(tmp_path, writer.path)
    assert await sync_once(config) == 0
    return writer, sid, mid, now, config


async def test_a_row_committed_after_a_newer_one_is_delivered(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """Two opencode processes: one stamps its part, waits for the write lock, and commits after
    the other's newer part was synced."""
    writer, sid, mid, newer, config = await delivered_part(tmp_path, fixtures_dir, "prt_newer")
    insert_part(writer, sid, mid, "prt_stamped_first", newer - 2000)
    assert await sync_once(config) == 0
    assert set((await archived(config))[sid]["parts"]) == {"prt_newer", "prt_stamped_first"}
    writer.close()


REAL_TIME, REAL_BOOT_CLOCK = time.time, changes.boot_clock


def set_clocks(monkeypatch: pytest.MonkeyPatch, *, wall_ahead: int, boot_elapsed: int) -> None:
    """The machine's wall clock `wall_ahead` ms ahead of the real time, and its boot clock (the
    one no correction moves) `boot_elapsed` ms on from the real one."""

    def boot_clock() -> tuple[str, int]:
        boot, clock = REAL_BOOT_CLOCK()
        return boot, clock + boot_elapsed

    monkeypatch.setattr(time, "time", lambda: REAL_TIME() + wall_ahead / 1000)
    monkeypatch.setattr(changes, "boot_clock", boot_clock)


@pytest.mark.parametrize("minutes_later", [0, 5], ids=["at-once", "while-stopped"])
async def test_rows_written_after_the_clock_was_set_back_are_delivered(
    tmp_path: Path, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch, minutes_later: int
) -> None:
    """The clock ran an hour fast while the first rows were written, then was corrected: the
    rows written since are stamped below them; and when syncd was stopped meanwhile and starts
    again `minutes_later`, more than the margin below the clock when it reads again."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=False)
    ahead = int(time.time() * 1000) + HOUR_MS
    sid = writer.session(time_created=ahead, time_updated=ahead)
    mid = writer.message(sid, {"role": "user"})
    insert_part(writer, sid, mid, "prt_fast_clock", ahead)
    config = make_config(tmp_path, writer.path)
    assert await sync_once(config) == 0
    insert_part(writer, sid, mid, "prt_corrected_clock", int(time.time() * 1000))
    later = minutes_later * 60 * 1000
    set_clocks(monkeypatch, wall_ahead=later, boot_elapsed=later)
    assert await sync_once(config) == 0
    assert set((await archived(config))[sid]["parts"]) == {"prt_fast_clock", "prt_corrected_clock"}
    writer.close()


@pytest.mark.parametrize(
    ("wall_later", "boot_later"),
    [(HOUR_MS + 5 * 60 * 1000, HOUR_MS + 5 * 60 * 1000), (5 * 60 * 1000, -HOUR_MS)],
    ids=["caught-up", "boot-clock-behind"],
)
async def test_rows_written_while_stopped_across_a_correction_are_delivered(
    tmp_path: Path,
    fixtures_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    wall_later: int,
    boot_later: int,
) -> None:
    """syncd stops while the clock runs an hour fast; the clock is corrected, a part is written,
    and syncd starts again only once the clock caught up past its watermark: the part is
    stamped nearly an hour below it, and the clock alone no longer tells it went back. Or
    syncd starts five minutes later by the corrected clock, but the boot's clock, under the
    same boot name, is behind the one its last read recorded (a virtual machine's snapshot
    restored, a container in a time namespace of its own): that clock cannot say when the
    read was, and the clock behind the watermark says it went back at some time unknown."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=False)
    real = int(time.time() * 1000)
    sid = writer.session(time_created=real + HOUR_MS, time_updated=real + HOUR_MS)
    mid = writer.message(sid, {"role": "user"})
    insert_part(writer, sid, mid, "prt_fast_clock", real + HOUR_MS)
    config = make_config(tmp_path, writer.path)
    set_clocks(monkeypatch, wall_ahead=HOUR_MS, boot_elapsed=0)
    assert await sync_once(config) == 0
    insert_part(writer, sid, mid, "prt_corrected_clock", real + 1000)
    set_clocks(monkeypatch, wall_ahead=wall_later, boot_elapsed=boot_later)
    assert await sync_once(config) == 0
    assert set((await archived(config))[sid]["parts"]) == {"prt_fast_clock", "prt_corrected_clock"}
    writer.close()


def count_received(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The items the embedded archive (the receiver of these runs) is handed, per batch."""
    received: list[int] = []
    create, sync = SqliteArchive.create_share_with, SqliteArchive.sync

    async def counted_create(self: SqliteArchive, session_id: str, base_url: str,
                             data: list, *args: Any, **kwargs: Any) -> Any:  # fmt: skip
        received.append(len(data))
        return await create(self, session_id, base_url, data, *args, **kwargs)

    async def counted_sync(self: SqliteArchive, share_id: str, secret: str, data: list,
                           *args: Any, **kwargs: Any) -> int:  # fmt: skip
        received.append(len(data))
        return await sync(self, share_id, secret, data, *args, **kwargs)

    monkeypatch.setattr(SqliteArchive, "create_share_with", counted_create)
    monkeypatch.setattr(SqliteArchive, "sync", counted_sync)
    return received


@pytest.mark.parametrize("boot_id", ["readable", "unreadable"])
async def test_a_restart_sends_nothing_already_delivered(
    tmp_path: Path, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch, boot_id: str
) -> None:
    """Rows stamped within the margin below the watermark are read again after a restart; the
    stamps syncd read before are kept in its state, so none of them travels twice. Without a
    boot id to read, each run is a boot of its own: its last read is placed by the wall
    clock, and neither re-sends nor loses."""
    if boot_id == "unreadable":
        monkeypatch.setattr(changes, "_BOOT_ID", tmp_path / "no boot_id")
    # Its own cache of the boot id, which the runs below empty (the module's stays as it was).
    monkeypatch.setattr(changes, "_boot_id", functools.cache(changes._boot_id.__wrapped__))

    async def run() -> None:  # each in a process of its own
        changes._boot_id.cache_clear()
        assert await sync_once(config) == 0

    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=False)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user"})
    now = int(time.time() * 1000)
    for n in range(5):
        insert_part(writer, sid, mid, f"prt_{n}", now - n * 1000)
    config = make_config(tmp_path, writer.path)
    received = count_received(monkeypatch)
    await run()
    first = sum(received)
    assert first >= 7  # the session, its message, five parts
    for _ in range(2):
        await run()
    assert sum(received) == first
    insert_part(writer, sid, mid, "prt_late", now - 3000)  # committed late, stamped low
    await run()
    assert sum(received) == first + 1
    writer.close()


@pytest.mark.parametrize("late_by", [2000, HOUR_MS], ids=["within-margin", "far-below"])
async def test_sync_beside_a_daemon_waits_for_a_late_row_it_has_not_captured(
    tmp_path: Path, fixtures_dir: Path, late_by: int
) -> None:
    """A part committed late with a stamp below the cursor (within the margin table mode reads
    from, or far below it: a writer whose clock is an hour behind): the daemon has not read it
    yet, so a `sync` beside it must not say everything was delivered until the daemon
    captured it."""
    writer, sid, mid, now, config = await delivered_part(tmp_path, fixtures_dir, "prt_first")
    insert_part(writer, sid, mid, "prt_late", now - late_by)
    await sync_beside_daemon_waits_until_captured(config, deep=False)
    assert set((await archived(config))[sid]["parts"]) == {"prt_first", "prt_late"}
    writer.close()


async def test_sync_beside_a_daemon_waits_for_an_idle_session_rewritten_far_below(
    tmp_path: Path, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session idle for an hour (its rows are read again only on the daemon's deep poll)
    gets a part added a day below: a `sync` beside the daemon reads every session once,
    as a `sync` alone does, and waits until the daemon captured it."""
    writer, sid, mid, config, _ = await old_rows_delivered(tmp_path, fixtures_dir, monkeypatch)
    insert_part(writer, sid, mid, "prt_added", int(time.time() * 1000) - 24 * HOUR_MS)
    await sync_beside_daemon_waits_until_captured(config, deep=True)  # the daemon's deep poll
    assert "prt_added" in (await archived(config))[sid]["parts"]
    writer.close()


async def test_a_json_store_copied_afresh_is_sent_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """opencode 1.1's JSON sessions copied with `cp -r`: every file's time, which is its row's
    stamp, is the moment of the copy, so every row is within the margin below the watermark;
    a restart must still send none of them again."""
    db = install_home("1.1.65", tmp_path / "home")
    for path in (db.parent / "storage").rglob("*"):
        os.utime(path)  # as cp -r leaves them: copied now
    config = make_config(tmp_path, db)
    received = count_received(monkeypatch)
    assert await sync_once(config) == 0
    first = sum(received)
    assert first > 0
    for _ in range(2):
        assert await sync_once(config) == 0
    assert sum(received) == first


async def test_a_state_from_before_table_reads_loses_no_late_row_and_resends_once(
    tmp_path: Path, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state written before syncd kept its table reads (the migration leaves them empty):
    its first run reads from the margin below the watermark, as syncd did then, so a row
    committed late while it was stopped is delivered; what it sends again, it sends once."""
    writer, sid, mid, now, config = await delivered_part(tmp_path, fixtures_dir, "prt_first")
    with contextlib.closing(sqlite3.connect(config.state)) as state, state:
        state.execute(
            "UPDATE session_cursor SET read_wall = NULL, read_boot = NULL, read_clock = NULL, "
            "read_seen = NULL"
        )
    insert_part(writer, sid, mid, "prt_late", now - 2000)
    received = count_received(monkeypatch)
    assert await sync_once(config) == 0
    assert set((await archived(config))[sid]["parts"]) == {"prt_first", "prt_late"}
    again = sum(received)
    assert again >= 1
    assert await sync_once(config) == 0
    assert sum(received) == again
    writer.close()


def read_prints(config: Config) -> list[Any]:
    with contextlib.closing(sqlite3.connect(config.state)) as state:
        return [row[0] for row in state.execute("SELECT read_print FROM session_cursor")]


async def old_rows_delivered(
    tmp_path: Path, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[FakeOpencode, str, str, Config, list[int]]:
    """A database without a journal, one session idle for an hour: it, its message and two
    parts were written an hour ago (far below the margin table mode reads from), delivered by
    a first `sync`; and the items the receiver is handed from then on."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=False)
    hour_ago = int(time.time() * 1000) - HOUR_MS
    sid = writer.session(time_created=hour_ago, time_updated=hour_ago)
    mid = writer.message(sid, {"role": "user"})
    writer.conn.execute("UPDATE message SET time_updated = ?", (hour_ago,))
    for part_id in ("prt_old", "prt_rewritten"):
        insert_part(writer, sid, mid, part_id, hour_ago)
    config = make_config(tmp_path, writer.path)
    assert await sync_once(config) == 0
    return writer, sid, mid, config, count_received(monkeypatch)


async def test_a_row_written_far_below_the_margin_is_delivered_once(
    tmp_path: Path, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer whose clock is a day behind rewrites a part and adds one: both are stamped far
    below the margin table mode reads from. The rows below it are counted, so the session is
    read whole (and sent again, once); an old row rewritten with a stamp above the margin is
    only that row."""
    writer, sid, mid, config, received = await old_rows_delivered(
        tmp_path, fixtures_dir, monkeypatch
    )
    day_ago = int(time.time() * 1000) - 24 * HOUR_MS
    writer.conn.execute(
        'UPDATE part SET data = \'{"type": "text", "text": "after"}\', '
        "time_updated = ? WHERE id = 'prt_rewritten'",
        (day_ago,),
    )
    insert_part(writer, sid, mid, "prt_added", day_ago)
    assert await sync_once(config) == 0
    got = (await archived(config))[sid]["parts"]
    assert set(got) == {"prt_old", "prt_rewritten", "prt_added"}
    assert got["prt_rewritten"]["text"] == "after"
    sent = sum(received)
    assert await sync_once(config) == 0
    assert sum(received) == sent  # once
    writer.conn.execute(
        "UPDATE part SET time_updated = ? WHERE id = 'prt_old'", (int(time.time() * 1000),)
    )
    assert await sync_once(config) == 0
    assert sum(received) == sent + 1
    writer.close()


@pytest.mark.parametrize(
    "kept",
    [None, "[1, 2", '["a", 1, 2, 3]', "[1, null, 2]", b"\xff"],
    ids=["before-prints", "cut", "not-a-stamp", "short", "blob"],
)
async def test_a_read_kept_without_a_print_resends_nothing_and_keeps_one(
    tmp_path: Path, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch, kept: Any
) -> None:
    """A state written before syncd kept prints (the migration leaves them empty), or one whose
    print is damaged: nothing is sent again, a print is kept from that run on, and a row
    rewritten far below the margin after it is delivered."""
    writer, sid, mid, config, received = await old_rows_delivered(
        tmp_path, fixtures_dir, monkeypatch
    )
    with contextlib.closing(sqlite3.connect(config.state)) as state, state:
        state.execute("UPDATE session_cursor SET read_print = ?", (kept,))
    assert await sync_once(config) == 0
    assert sum(received) == 0
    [printed] = read_prints(config)
    assert isinstance(printed, str) and printed != kept
    insert_part(writer, sid, mid, "prt_added", int(time.time() * 1000) - 24 * HOUR_MS)
    assert await sync_once(config) == 0
    assert "prt_added" in (await archived(config))[sid]["parts"]
    writer.close()


@pytest.mark.parametrize(
    ("session_offset", "part_offset", "rewritten_to"),
    [
        (0, 0.5, None),
        (0.5, 0, None),
        (0, 0, -5000),
        (0, 0, -1e19),
        (0, 0, float("-inf")),
    ],
    ids=["real-stamp", "real-watermark", "before-1970", "before-int64", "minus-infinity"],
)
async def test_a_row_with_an_odd_stamp_rewritten_far_below_is_delivered_once(
    tmp_path: Path,
    fixtures_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    session_offset: float,
    part_offset: float,
    rewritten_to: float | None,
) -> None:
    """Stamps opencode does not write but its columns hold: a fraction of a millisecond (REAL),
    on a part or on the session (its watermark then), and stamps before 1970, down to REALs
    below SQLite's integers. A part rewritten far below the margin with one (None: a day below,
    with the part's fraction halved) is delivered, once, by `sync` runs that each reload the
    state."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=False)
    hour_ago = int(time.time() * 1000) - HOUR_MS
    sid = writer.session(time_created=hour_ago, time_updated=hour_ago + session_offset)
    mid = writer.message(sid, {"role": "user"})
    writer.conn.execute("UPDATE message SET time_updated = ?", (hour_ago,))
    insert_part(writer, sid, mid, "prt_old", hour_ago)
    insert_part(writer, sid, mid, "prt_rewritten", hour_ago)
    writer.conn.execute(
        "UPDATE part SET time_updated = ? WHERE id = 'prt_rewritten'", (hour_ago + part_offset,)
    )
    config = make_config(tmp_path, writer.path)
    received = count_received(monkeypatch)
    assert await sync_once(config) == 0
    assert await sync_once(config) == 0
    sent = sum(received)
    below = hour_ago - 23 * HOUR_MS + part_offset / 2 if rewritten_to is None else rewritten_to
    writer.conn.execute(
        'UPDATE part SET data = \'{"type": "text", "text": "after"}\', time_updated = ? '
        "WHERE id = 'prt_rewritten'",
        (below,),
    )
    assert await sync_once(config) == 0
    assert (await archived(config))[sid]["parts"]["prt_rewritten"]["text"] == "after"
    sent_again = sum(received)
    assert sent_again > sent
    assert await sync_once(config) == 0
    assert sum(received) == sent_again  # once
    writer.close()


async def test_a_row_rewritten_far_below_after_a_deletion_is_delivered_by_a_later_run(
    tmp_path: Path, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """opencode deletes a part (a revert, a compaction) and nothing else moves: a `sync` sends
    nothing. A writer whose clock is a day behind then rewrites another part: the next `sync`,
    a new process, compares with what the last one found, not with the read before the
    deletion (fewer rows below than that one left, so not comparable), and delivers it."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=False)
    hour_ago = int(time.time() * 1000) - HOUR_MS
    sid = writer.session(time_created=hour_ago, time_updated=hour_ago)
    mid = writer.message(sid, {"role": "user"})
    writer.conn.execute("UPDATE message SET time_updated = ?", (hour_ago,))
    for part_id in ("prt_old", "prt_rewritten"):  # ten minutes below the session: counted
        insert_part(writer, sid, mid, part_id, hour_ago - 10 * 60 * 1000)
    config = make_config(tmp_path, writer.path)
    assert await sync_once(config) == 0
    received = count_received(monkeypatch)
    writer.conn.execute("DELETE FROM part WHERE id = 'prt_old'")
    assert await sync_once(config) == 0
    assert sum(received) == 0
    writer.conn.execute(
        'UPDATE part SET data = \'{"type": "text", "text": "after"}\', time_updated = ? '
        "WHERE id = 'prt_rewritten'",
        (int(time.time() * 1000) - 24 * HOUR_MS,),
    )
    assert await sync_once(config) == 0
    assert (await archived(config))[sid]["parts"]["prt_rewritten"]["text"] == "after"
    sent = sum(received)
    assert await sync_once(config) == 0
    assert sum(received) == sent
    writer.close()


async def test_sessions_back_from_a_held_deletion_are_read_on_from_their_last_read(
    tmp_path: Path, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every session vanishes from a running daemon's database (emptied in place: the
    deletion is held, the cursors kept) and comes back as a backup had it: one part with older
    content, stamped a day below. The daemon compares with the read it kept, as a restarted one
    does: the part is delivered, and only it is sent."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=False)
    hour_ago = int(time.time() * 1000) - HOUR_MS
    sids = []
    for n in range(4):
        sid = writer.session(time_created=hour_ago, time_updated=hour_ago)
        mid = writer.message(sid, {"role": "user"})
        insert_part(writer, sid, mid, f"prt_{n}", hour_ago - 10 * 60 * 1000)
        sids.append(sid)
    writer.conn.execute("UPDATE message SET time_updated = ?", (hour_ago,))
    config = make_config(tmp_path, writer.path, on_delete="delete")
    received = count_received(monkeypatch)
    pipeline = await Pipeline.open(config, RetryPolicy())
    try:
        await capture_and_drain(pipeline, deep=True)
        sessions = writer.conn.execute("SELECT * FROM session").fetchall()
        writer.conn.execute("DELETE FROM session")
        await capture_and_drain(pipeline, deep=True)
        assert set(await pipeline.state.held_deletions()) == set(sids)
        marks = ", ".join("?" * len(sessions[0]))
        writer.conn.executemany(f"INSERT INTO session VALUES ({marks})", sessions)
        writer.conn.execute(
            'UPDATE part SET data = \'{"type": "text", "text": "from the backup"}\', '
            "time_updated = ? WHERE id = 'prt_0'",
            (hour_ago - 24 * HOUR_MS,),
        )
        sent = sum(received)
        await capture_and_drain(pipeline, deep=True)
    finally:
        await pipeline.close()
    assert (await archived(config))[sids[0]]["parts"]["prt_0"]["text"] == "from the backup"
    assert sum(received) == sent + 1
    writer.close()


async def sync_beside_daemon_waits_until_captured(config: Config, *, deep: bool) -> None:
    """With a daemon owning the state that has not looked since one session changed, a `sync`
    beside it says that session is not delivered; once the daemon has captured and delivered
    it (`deep`: on its deep poll), the sync says everything is."""
    daemon = StateLock(config.state)
    daemon.acquire()
    try:
        state = await StateStore.open(config.state)
        try:
            await state.set_meta(DELIVERING_META, json.dumps(delivering(config)))
        finally:
            await state.close()
        with pytest.raises(UserError, match="has not delivered 1 session"):
            await sync_once(config, give_up_after=1.0)
        pipeline = await Pipeline.open(config, RetryPolicy())
        try:
            await capture_and_drain(pipeline, deep=deep)
        finally:
            await pipeline.close()
        assert await sync_once(config, give_up_after=5.0) == 0
    finally:
        daemon.release()
