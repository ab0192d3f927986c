"""Scale: syncd's startup and wake-up cost on a large opencode database.

    python -m bench.scale [--parts 1000000] [--sessions 1000] [--no-doc]

Generates (and caches) a database of `parts` parts with the real schema and journal
(bench/dbgen.py), then, in a fresh child process so that its peak RSS is syncd's alone:
the first capture of the whole database into a fresh state (startup on a new machine), a
restart's capture with every cursor current, and wake-ups after a single part changed.
Figures go to docs/reliability.md (section "scale"). tests/test_scale.py checks, at CI size,
that the rows a wake-up reads do not grow with the database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from syncd.config import load_config
from syncd.pipeline.deliver import RetryPolicy
from syncd.pipeline.pipeline import Pipeline
from syncd.source.changes import ChangeSet
from tests.support.fake_opencode import FakeOpencode

WAKEUPS = 20


async def measure(db: Path, workdir: Path, fixtures_dir: Path) -> dict[str, Any]:
    """Startup and wake-up costs of syncd's change capture on `db` (changed in place)."""
    env = {"HOME": str(workdir / "home")}
    config = load_config({"db": str(db), "state": str(workdir / "state.db"),
                          "archive": str(workdir / "archive.db")}, env)  # fmt: skip
    began = time.perf_counter()
    pipeline = await Pipeline.open(config, RetryPolicy())
    try:
        first = await capture(pipeline, deep=True, keep_keys=False)
        first_seconds = time.perf_counter() - began
        began = time.perf_counter()
        restart = await capture(pipeline, deep=True, keep_keys=False)
        restart_seconds = time.perf_counter() - began

        writer = FakeOpencode(db, fixtures_dir)
        parts = writer.conn.execute("SELECT COUNT(*) FROM part").fetchone()[0]
        session_id, message_id, part_id = writer.conn.execute(
            "SELECT session_id, message_id, id FROM part ORDER BY id LIMIT 1"
        ).fetchone()
        seconds: list[float] = []
        rows_read: list[int] = []
        for number in range(WAKEUPS):
            writer.part(session_id, message_id, {"type": "text", "text": f"v{number}"}, part_id)
            began = time.perf_counter()
            changes = await capture(pipeline)
            seconds.append(time.perf_counter() - began)
            rows_read.append(changes.rows_read)
            assert [c.keys for c in changes.changed] == [{("part", part_id)}], changes.changed
        writer.close()
    finally:
        await pipeline.close()
    return {
        "sessions": len(first.changed),
        "parts": parts,
        "startup_first_capture_seconds": round(first_seconds, 2),
        "startup_first_capture_rows_read": first.rows_read,
        "restart_capture_seconds": round(restart_seconds, 3),
        "restart_capture_rows_read": restart.rows_read,
        "wakeup_median_ms": round(statistics.median(seconds) * 1000, 2),
        "wakeup_rows_read": max(rows_read),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


async def capture(pipeline: Pipeline, *, deep: bool = False, keep_keys: bool = True) -> ChangeSet:
    """What `Pipeline.capture` does on a wake-up (scan, record each session's change as it is
    read), without delivering. Without `keep_keys` each change's keys are dropped once
    recorded, as the daemon drops them, so peak memory is the daemon's."""
    cursors = await pipeline.state.cursors()
    scan = await pipeline.detector.scan(cursors, deep=deep)
    changed = []
    async for change in pipeline.detector.changes(scan, cursors):
        await pipeline.state.capture(change.session_id, change.keys,
                                     journal_seq=change.journal_seq,
                                     time_updated=change.time_updated,
                                     read=change.read)  # fmt: skip
        if not keep_keys:
            change.keys = set()
        changed.append(change)
    return ChangeSet(changed, scan.deleted, scan.rows_read)


def main(argv: list[str] | None = None) -> int:
    from bench import dbgen
    from scripts.reliability_doc import update_section
    from tests.support import FIXTURES

    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--parts", type=int, default=1_000_000)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/reliability.md")
    parser.add_argument("--measure", metavar="DB", help=argparse.SUPPRESS)  # the child's part
    args = parser.parse_args(argv)
    fixtures_dir = FIXTURES
    if args.measure:
        workdir = Path(args.measure).parent
        print(json.dumps(asyncio.run(measure(Path(args.measure), workdir, fixtures_dir))))
        return 0
    print(f"scale: database of {args.parts:,} parts ...", file=sys.stderr)
    cached = dbgen.cached_database(fixtures_dir, args.sessions, args.parts // args.sessions)
    with tempfile.TemporaryDirectory(prefix="syncd-scale-") as tmp:
        db = Path(tmp) / "opencode.db"
        shutil.copy(cached, db)
        print("scale: measuring in a fresh process ...", file=sys.stderr)
        child = subprocess.run(
            [sys.executable, "-m", "bench.scale", "--measure", str(db)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        figures = json.loads(child.stdout)
        figures["database_mb"] = round(db.stat().st_size / 2**20)
    print(json.dumps(figures, indent=2))
    if not args.no_doc:
        update_section("scale", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
