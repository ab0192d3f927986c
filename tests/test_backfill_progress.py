"""`syncd backfill`'s last progress line agrees with what it did, run again included."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.fake_opencode import FakeOpencode
from tests.support.syncd_process import run_syncd

LINE = re.compile(r"backfill: ([\d,]+)/([\d,]+) sessions, ([\d,]+)/([\d,]+) items")


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "tables"])
async def test_a_backfill_run_again_ends_done(
    tmp_path: Path, fixtures_dir: Path, journal: bool
) -> None:
    """Without a journal a new run reads each session again from a margin below its cursor
    and sends the rows it finds there (it cannot know which of them the last run sent), so
    its cursors do not move: its last line must still count them done, not 0 of all."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=journal)
    for _ in range(3):
        sid = writer.session()
        writer.part(sid, writer.message(sid, {"role": "user"}), {"type": "text", "text": "hi"})
    writer.close()
    args = ["backfill", "--db", str(writer.path), "--state", str(tmp_path / "state.db"),
            "--archive", str(tmp_path / "archive.db"), "--transport", "local",
            "--sessions", "all"]  # fmt: skip
    for run in ("first", "again"):
        code, output = await run_syncd(*args)
        assert code == 0, output
        last = [LINE.search(line) for line in output.splitlines() if LINE.search(line)][-1]
        assert last is not None
        done_sessions, sessions, done_items, items = (
            int(g.replace(",", "")) for g in last.groups()
        )
        assert (done_sessions, done_items) == (sessions, items), (run, output)
        if run == "first":
            assert (sessions, items) == (3, 9)
