"""Stamps that do not grow with commits. Without a journal (opencode up to 1.15) syncd sees
changes by `time_updated`, which is the writer's wall clock when it built the row: a clock
stepped back (NTP, a VM restored) stamps new rows below what syncd already read, and a second
opencode process can commit a row stamped before the newest one syncd has seen."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from syncd.commands.sync import sync_once
from tests.support.archive_check import archived, make_config
from tests.support.fake_opencode import FakeOpencode

HOUR_MS = 3600 * 1000


def insert_part(writer: FakeOpencode, sid: str, mid: str, part_id: str, stamp: int) -> None:
    writer.conn.execute(
        "INSERT INTO part (id, message_id, session_id, time_created, time_updated, data) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (part_id, mid, sid, stamp, stamp, '{"type": "text", "text": "' + part_id + '"}'),
    )


async def test_a_row_committed_after_a_newer_one_is_delivered(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """Two opencode processes: one stamps its part, waits for the write lock, and commits after
    the other's newer part was synced."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=False)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user"})
    newer = int(time.time() * 1000)
    insert_part(writer, sid, mid, "prt_newer", newer)
    config = make_config(tmp_path, writer.path)
    assert await sync_once(config) == 0
    insert_part(writer, sid, mid, "prt_stamped_first", newer - 2000)
    assert await sync_once(config) == 0
    assert set((await archived(config))[sid]["parts"]) == {"prt_newer", "prt_stamped_first"}
    writer.close()


@pytest.mark.parametrize("minutes_ago", [0, 5], ids=["at-once", "while-stopped"])
async def test_rows_written_after_the_clock_was_set_back_are_delivered(
    tmp_path: Path, fixtures_dir: Path, minutes_ago: int
) -> None:
    """The clock ran an hour fast while the first rows were written, then was corrected: the
    rows written since are stamped below them; and when syncd was stopped meanwhile
    (`minutes_ago`), more than the margin below the clock when it reads again."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=False)
    ahead = int(time.time() * 1000) + HOUR_MS
    sid = writer.session(time_created=ahead, time_updated=ahead)
    mid = writer.message(sid, {"role": "user"})
    insert_part(writer, sid, mid, "prt_fast_clock", ahead)
    config = make_config(tmp_path, writer.path)
    assert await sync_once(config) == 0
    stamp = int(time.time() * 1000) - minutes_ago * 60 * 1000
    insert_part(writer, sid, mid, "prt_corrected_clock", stamp)
    assert await sync_once(config) == 0
    assert set((await archived(config))[sid]["parts"]) == {"prt_fast_clock", "prt_corrected_clock"}
    writer.close()
