"""While `syncd run` tails the database, the writer (busy timeout 0) never meets SQLITE_BUSY
and the -wal file stays the size it reaches without syncd: checkpoints keep working. A reader
that keeps a read transaction open, measured the same way, shows what a failure looks like."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from scripts.interference import side_by_side, write_workload
from tests.support.fake_opencode import FakeOpencode

pytestmark = pytest.mark.slow
SECONDS, RATE = 6.0, 400.0


async def test_syncd_never_blocks_the_writer_nor_checkpoints(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    runs = await side_by_side(tmp_path, fixtures_dir, SECONDS, RATE)
    alone, tailed = runs["without_syncd"], runs["with_syncd"]
    assert alone.writes == tailed.writes > 2000
    assert tailed.busy_errors == 0
    assert tailed.final_checkpoint_busy == 0
    assert tailed.wal_max_bytes <= 2 * alone.wal_max_bytes


async def test_a_reader_pinning_a_snapshot_would_be_caught(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    db = tmp_path / "opencode.db"
    FakeOpencode(db, fixtures_dir).close()
    stop = threading.Event()
    pinned = threading.Event()

    def bad_reader() -> None:
        conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, isolation_level=None)
        conn.execute("BEGIN")
        conn.execute("SELECT COUNT(*) FROM part").fetchone()  # the snapshot is now held
        pinned.set()
        stop.wait()
        conn.execute("COMMIT")
        conn.close()

    reader = threading.Thread(target=bad_reader)
    reader.start()
    pinned.wait()
    try:
        figures = await asyncio.to_thread(write_workload, db, fixtures_dir, SECONDS / 2, RATE)
    finally:
        stop.set()
        reader.join()
    baseline = await asyncio.to_thread(
        write_workload, tmp_path / "baseline.db", fixtures_dir, SECONDS / 2, RATE
    )
    assert figures.wal_max_bytes > 2 * baseline.wal_max_bytes
    assert figures.final_checkpoint_busy == 1
