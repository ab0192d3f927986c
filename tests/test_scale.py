"""A wake-up after one changed part costs the same on a database ten times larger: the rows
the change detector reads (`ChangeSet.rows_read`) depend on the sessions and on what changed,
never on the parts already synced. (`python -m bench.scale` measures 1,000,000 parts.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.dbgen import generate
from bench.scale import capture
from syncd.pipeline.deliver import RetryPolicy
from syncd.pipeline.pipeline import Pipeline
from tests.support.archive_check import make_config
from tests.support.fake_opencode import FakeOpencode

pytestmark = pytest.mark.slow
SESSIONS = 10


async def wakeup_rows_read(tmp_path: Path, fixtures_dir: Path, parts_per_session: int) -> int:
    tmp_path.mkdir()
    db = tmp_path / "opencode.db"
    generate(db, fixtures_dir, SESSIONS, parts_per_session)
    pipeline = await Pipeline.open(make_config(tmp_path, db), RetryPolicy())
    try:
        first = await capture(pipeline, deep=True)
        assert first.rows_read >= SESSIONS * parts_per_session
        assert (await capture(pipeline)).changed == []  # nothing new: nothing captured
        writer = FakeOpencode(db, fixtures_dir)
        sid, mid, part_id = writer.conn.execute(
            "SELECT session_id, message_id, id FROM part ORDER BY id LIMIT 1"
        ).fetchone()
        writer.part(sid, mid, {"type": "text", "text": "changed"}, part_id)
        writer.close()
        changes = await capture(pipeline)
        assert [c.keys for c in changes.changed] == [{("part", part_id)}]
        return changes.rows_read
    finally:
        await pipeline.close()


async def test_wakeup_cost_does_not_grow_with_the_database(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    small = await wakeup_rows_read(tmp_path / "small", fixtures_dir, 1_000)
    large = await wakeup_rows_read(tmp_path / "large", fixtures_dir, 10_000)
    assert small == large
    assert large <= 3 * SESSIONS + 1  # session rows, journal heads, the one changed part
