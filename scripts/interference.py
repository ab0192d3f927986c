"""No interference with opencode: the same write workload without and with `syncd run` tailing
the database. The writer's busy timeout is 0, so any lock syncd held would surface at once as
SQLITE_BUSY (only its closing checkpoint waits, briefly); the -wal file's size is sampled after
every commit (a reader that pinned old snapshots would stop checkpoints and let it grow with
everything written).

    python scripts/interference.py [--seconds 60] [--rate 400] [--no-doc]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.fake_opencode import FakeOpencode
from tests.support.syncd_process import syncd_process

SESSIONS = 10
PARTS_PER_SESSION = 20
PART_TEXT = "x" * 2000  # a couple of pages per commit, as a growing assistant reply
CHECKPOINT_WAIT_MS = 2000


@dataclass
class WriterFigures:
    writes: int
    busy_errors: int
    wal_max_bytes: int
    final_checkpoint_busy: int


def write_workload(db: Path, fixtures_dir: Path, seconds: float, rate: float) -> WriterFigures:
    """Rewrites parts round robin at `rate` commits/s for `seconds`, never waiting for a lock."""
    writer = FakeOpencode(db, fixtures_dir)
    writer.conn.execute("PRAGMA synchronous = NORMAL")
    parts = []
    for index in range(SESSIONS):
        sid = writer.session(f"interference {index}")
        mid = writer.message(sid, {"role": "assistant", "time": {"created": 1}})
        parts += [(sid, mid, writer.part(sid, mid, {"type": "text", "text": ""}))
                  for _ in range(PARTS_PER_SESSION)]  # fmt: skip
    writer.conn.execute("PRAGMA busy_timeout = 0")
    wal = db.with_name(db.name + "-wal")
    writes = busy = wal_max = 0
    began = time.monotonic()
    # A fixed number of commits (paced at `rate`), so runs compare like with like on a busy
    # machine too.
    while writes < round(seconds * rate):
        delay = writes / rate - (time.monotonic() - began)
        if delay > 0:
            time.sleep(delay)
        sid, mid, part_id = parts[writes % len(parts)]
        try:
            writer.part(sid, mid, {"type": "text", "text": f"{PART_TEXT}{writes}"}, part_id)
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) and "busy" not in str(error):
                raise
            busy += 1
            if writer.conn.in_transaction:
                writer.conn.execute("ROLLBACK")
        writes += 1
        wal_max = max(wal_max, wal.stat().st_size if wal.exists() else 0)
    # The closing checkpoint may wait a moment: a reader between two short reads lets it
    # through at once, a reader that pins a snapshot never does.
    writer.conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
    checkpoint_busy = writer.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    writer.close()
    return WriterFigures(writes, busy, wal_max, checkpoint_busy)


async def side_by_side(
    workdir: Path, fixtures_dir: Path, seconds: float, rate: float
) -> dict[str, WriterFigures]:
    alone_dir, tailed_dir = workdir / "alone", workdir / "tailed"
    alone_dir.mkdir()
    tailed_dir.mkdir()
    alone = await asyncio.to_thread(
        write_workload, alone_dir / "opencode.db", fixtures_dir, seconds, rate
    )
    db = tailed_dir / "opencode.db"
    FakeOpencode(db, fixtures_dir).close()  # the database exists before syncd starts
    config = tailed_dir / "syncd.toml"
    config.write_text('window = 0.1\nlog_level = "warning"\n')
    args = ["run", "--db", str(db), "--state", str(tailed_dir / "state.db"),
            "--archive", str(tailed_dir / "archive.db"), "--config", str(config)]  # fmt: skip
    async with syncd_process(args, os.environ, tailed_dir / "syncd.log") as syncd:
        await _wait_until_running(tailed_dir / "state.db.lock")
        tailed = await asyncio.to_thread(write_workload, db, fixtures_dir, seconds, rate)
        code = await syncd.terminate()
        if code != 0:
            raise AssertionError(f"syncd exited {code}: {syncd.log()[-3000:]}")
    return {"without_syncd": alone, "with_syncd": tailed}


async def _wait_until_running(lock: Path) -> None:
    for _ in range(400):
        if lock.exists() and lock.read_text().strip():
            await asyncio.sleep(0.5)  # past its first capture
            return
        await asyncio.sleep(0.05)
    raise AssertionError("syncd did not start")


def main(argv: list[str] | None = None) -> int:
    from scripts.reliability_doc import update_section
    from tests.support import FIXTURES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=400.0, help="commits per second")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/reliability.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="syncd-interference-") as tmp:
        runs = asyncio.run(side_by_side(Path(tmp), FIXTURES, args.seconds, args.rate))
    figures = {"seconds": args.seconds, "commits_per_second": args.rate}
    for name, run in runs.items():
        figures.update({f"{key}_{name}": value for key, value in asdict(run).items()})
    print(json.dumps(figures, indent=2))
    if not args.no_doc:
        update_section("interference", figures)
    with_syncd, without = runs["with_syncd"], runs["without_syncd"]
    ok = with_syncd.busy_errors == 0 and with_syncd.wal_max_bytes <= 2 * without.wal_max_bytes
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
