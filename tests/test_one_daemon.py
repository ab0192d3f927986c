"""One daemon per state database: a second `syncd run` refuses, naming the running one; a
`syncd sync` while the daemon runs waits for it to catch up instead of racing it."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from tests.support.env import wait_until
from tests.support.expected import assert_receiver_matches, database_snapshot
from tests.support.fake_opencode import FakeOpencode
from tests.support.receiver import running_receiver
from tests.support.syncd_process import run_syncd, state_shares, syncd_process


async def wait_for_lock_owner(lock: Path, pid: int) -> None:
    for _ in range(200):
        if lock.exists() and lock.read_text().strip() == str(pid):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"syncd {pid} never took {lock}")


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "tables"])
async def test_second_run_refuses_and_sync_waits_for_the_daemon(
    tmp_path: Path, fixtures_dir: Path, journal: bool
) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=journal)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user"})
    state = tmp_path / "state.db"
    async with running_receiver(tmp_path) as receiver:
        common = ["--db", str(writer.path), "--state", str(state), "--url", receiver.url,
                  "--transport", "http", "--sessions", "all"]  # fmt: skip
        config = tmp_path / "syncd.toml"
        config.write_text("window = 2.0\n")  # sync must wait out the daemon's window
        args = ["run", *common, "--config", str(config)]
        async with syncd_process(args, os.environ, tmp_path / "syncd.log") as daemon:
            assert daemon.process is not None
            await wait_for_lock_owner(state.with_name("state.db.lock"), daemon.process.pid)

            code, output = await run_syncd("run", *common)
            assert code != 0
            assert f"another syncd (pid {daemon.process.pid}) is already running" in output
            assert "Traceback" not in output

            # A sync naming what the daemon would ignore is refused, never answered for it.
            elsewhere = common[common.index("--url") + 1].replace("127.0.0.1", "localhost")
            for flag, value, named in (
                ("--url", elsewhere, f"url {elsewhere}"),
                ("--transport", "capnweb-batch", "transport capnweb"),
                ("--sessions", "shared", "sessions shared (the daemon's: all)"),
            ):
                asked = [*common]
                asked[asked.index(flag) + 1] = value
                code, output = await run_syncd("sync", *asked)
                assert code == 2, output
                assert named in output and "would ignore" in output
                assert "everything delivered" not in output
            part = writer.part(sid, mid, {"type": "text", "text": "written while running"})
            code, output = await run_syncd("sync", *common)
            assert code == 0, output
            # sync returned only once the daemon had delivered what was in the database.
            shares = state_shares(state)
            expected = database_snapshot(writer.path)[sid]
            assert part in expected["parts"]
            assert_receiver_matches(expected, await receiver.store.read_share(shares[sid]))
            assert daemon.process.returncode is None  # the daemon was left alone
            assert await daemon.terminate() == 0
        assert receiver.create_count == 1
    writer.close()


async def test_sync_beside_a_daemon_reloaded_to_other_sessions_is_judged_by_the_reload(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """A SIGHUP that changes only `sessions` changes what the daemon delivers: a sync asking
    for what the daemon delivered before the reload is refused, not left waiting its whole
    time for sessions the daemon now ignores."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    writer.message(writer.session(), {"role": "user"})  # not shared
    state = tmp_path / "state.db"
    async with running_receiver(tmp_path) as receiver:
        common = ["--db", str(writer.path), "--state", str(state), "--url", receiver.url,
                  "--transport", "http"]  # fmt: skip
        config = tmp_path / "syncd.toml"
        config.write_text('sessions = "all"\n')
        args = ["run", *common, "--config", str(config)]
        async with syncd_process(args, os.environ, tmp_path / "syncd.log") as daemon:
            assert daemon.process is not None
            await wait_for_lock_owner(state.with_name("state.db.lock"), daemon.process.pid)
            config.write_text('sessions = "shared"\n')
            daemon.process.send_signal(signal.SIGHUP)
            await wait_until(lambda: '"config reloaded"' in daemon.log(), "the reload")
            code, output = await run_syncd(
                "sync", *common, "--sessions", "all", "--give-up-after", "5"
            )
            assert code == 2, output
            assert "sessions all (the daemon's: shared)" in output
            assert await daemon.terminate() == 0
    writer.close()
