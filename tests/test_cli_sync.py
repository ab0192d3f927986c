"""`syncd sync` against a receiver that cannot be reached: a bounded wait, then one line that
names the receiver and the error, exit 1, and the items kept for the next run."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from syncd.commands.sync import LOOK_INTERVAL, next_look_after
from syncd.state.store import StateStore


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: connections refused


async def test_unreachable_receiver_is_one_line_and_exit_1(tmp_path: Path, sample_db: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    state = tmp_path / "state.db"
    args = ["sync", "--db", str(sample_db), "--state", str(state), "--url", url,
            "--sessions", "all", "--give-up-after", "1.5"]  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "syncd", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 1, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("syncd: 5 session(s) not delivered to " + url), last
    assert "ConnectError" in last and "Traceback" not in run.stderr
    store = await StateStore.open(state)
    try:
        assert len(await store.pending_sessions()) == 5  # nothing lost: all kept for next time
    finally:
        await store.close()


def test_waiting_on_the_daemon_looks_no_more_than_a_tenth_of_the_time() -> None:
    """`syncd sync` beside a daemon looks every half second while a look is cheap; a costly
    look (470 ms on 5,000 table-mode sessions) is spaced so that looking stays under a tenth
    of the time, not a whole core."""
    assert next_look_after(0.002) == LOOK_INTERVAL
    for look in (0.06, 0.47, 3.0):
        assert look / (look + next_look_after(look)) <= 0.1 + 1e-9
