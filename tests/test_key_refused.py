"""A receiver that refuses the key (401, on every transport) is a condition of the receiver, not
of the items: they stay pending, nothing is dead-lettered, logs, `syncd status` and /health say
"the receiver refuses the key", and everything is delivered once the key is fixed (a reload of
the running daemon, or the next `syncd sync`)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from syncd.commands.status import collect
from syncd.commands.sync import sync_once
from syncd.errors import UserError
from syncd.state.store import StateStore
from tests.support.archive_check import make_config
from tests.support.env import eventually, free_port, isolated_env
from tests.support.fake_opencode import FakeOpencode
from tests.support.receiver import Receiver, running_receiver
from tests.support.syncd_process import syncd_process

RIGHT = "the-right-share-key-1"
WRONG = "a-wrong-share-key-22"


def write_session(path: Path, fixtures_dir: Path) -> tuple[str, list[str]]:
    writer = FakeOpencode(path, fixtures_dir)
    try:
        sid = writer.session()
        mid = writer.message(sid, {"role": "user", "time": {"created": 1}})
        parts = [writer.part(sid, mid, {"type": "text", "text": f"part {n}"}) for n in range(3)]
        return sid, parts
    finally:
        writer.close()


async def received_parts(receiver: Receiver, sid: str) -> set[str]:
    shares = [s for s in await receiver.store.list_shares() if s["session_id"] == sid]
    if not shares:
        return set()
    return {part["id"] for part in (await receiver.store.read_share(shares[0]["id"]))["parts"]}


async def dead_letters(state_path: Path) -> list:
    state = await StateStore.open_readonly(state_path)
    try:
        return await state.dead_letters()
    finally:
        await state.close()


@pytest.mark.parametrize("transport", ["http", "capnweb-batch", "capnweb-ws", "a2a"])
async def test_sync_with_a_refused_key_fails_honestly_then_delivers_everything(
    tmp_path: Path, fixtures_dir: Path, transport: str
) -> None:
    sid, parts = write_session(tmp_path / "opencode.db", fixtures_dir)
    async with running_receiver(tmp_path, key=RIGHT) as receiver:

        def config(key: str):  # type: ignore[no-untyped-def]
            return make_config(tmp_path, tmp_path / "opencode.db", url=receiver.url,
                               transport=transport, sessions="all", key=key)  # fmt: skip

        with pytest.raises(UserError, match="refuses the key") as refused:
            await sync_once(config(WRONG), give_up_after=1.5)
        assert refused.value.exit_code == 1 and WRONG not in str(refused.value)
        assert await dead_letters(tmp_path / "state.db") == []
        report = await collect(config(WRONG))
        assert any("the receiver refuses the key" in p for p in report["problems"])

        assert await sync_once(config(RIGHT), give_up_after=20) == 0
        assert await received_parts(receiver, sid) == set(parts)
        assert await dead_letters(tmp_path / "state.db") == []
        assert not any("key" in p for p in (await collect(config(RIGHT)))["problems"])


async def test_a_running_daemon_pauses_on_a_refused_key_and_delivers_after_a_reload(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    db = tmp_path / "opencode.db"
    sid, parts = write_session(db, fixtures_dir)
    port = free_port()
    config_file = tmp_path / "syncd.toml"
    async with running_receiver(tmp_path, key=RIGHT) as receiver:
        settings = (f'url = "{receiver.url}"\ntransport = "http"\nsessions = "all"\n'
                    f'metrics_address = "127.0.0.1:{port}"\nwindow = 0.1\npoll_interval = 1.0\n'
                    "backoff_max = 0.5\n")  # fmt: skip
        config_file.write_text(settings + f'key = "{WRONG}"\n')
        config_file.chmod(0o600)
        args = ["run", "--config", str(config_file), "--db", str(db),
                "--state", str(tmp_path / "state.db")]  # fmt: skip
        async with syncd_process(args, isolated_env(tmp_path), tmp_path / "syncd.log") as syncd:
            config = make_config(tmp_path, db, url=receiver.url, transport="http", sessions="all")

            async def paused() -> bool:
                try:
                    problems = (await collect(config))["problems"]
                except UserError:
                    return False  # the daemon has not made its state yet
                return any("the receiver refuses the key" in p for p in problems)

            await eventually(paused, "status saying the key is refused", syncd.log)
            assert await dead_letters(tmp_path / "state.db") == []
            [session] = (await collect(config))["sessions"]
            assert session["state"] == "retrying" and session["pending"] == 5

            config_file.write_text(settings + f'key = "{RIGHT}"\n')
            assert syncd.process is not None
            syncd.process.send_signal(signal.SIGHUP)

            async def delivered() -> bool:
                return await received_parts(receiver, sid) == set(parts)

            await eventually(delivered, "every part delivered after the reload", syncd.log)
            await eventually(lambda: healthy(config), "status healthy again", syncd.log)
            assert await dead_letters(tmp_path / "state.db") == []
            assert await syncd.terminate() == 0
    log = syncd.log()
    assert "the receiver refuses the key" in log and WRONG not in log and RIGHT not in log


async def healthy(config) -> bool:  # type: ignore[no-untyped-def]
    report = await collect(config)
    return bool(report["healthy"])
