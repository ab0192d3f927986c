"""Backfill interrupted half way and resumed ends exactly like an uninterrupted one; SIGHUP
reloads (transport swapped both ways, window, concurrency, batch size) during delivery lose
nothing. `syncd` runs as a real subprocess against a real receiver."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sqlite3
from pathlib import Path

import pytest

from syncd.model import PendingItem
from syncd.pipeline.planner import plan_batches
from syncd.source.loader import Loaded
from tests.support.env import WAIT_SECONDS, eventually, isolated_env
from tests.support.expected import database_snapshot, receiver_differences
from tests.support.fake_opencode import FakeOpencode
from tests.support.receiver import Receiver, running_receiver
from tests.support.syncd_process import (
    SyncdProcess,
    state_dead_letters,
    state_shares,
    syncd_process,
)


def populate(writer: FakeOpencode, sessions: int, parts: int) -> None:
    diffs = [{"file": "a.txt", "patch": "+a", "additions": 1, "deletions": 0, "status": "added"}]
    for n in range(sessions):
        columns = {}
        if n % 3 == 0:  # the receiver appends diffs: a duplicate would show
            columns = {"summary_additions": 1, "summary_deletions": 0, "summary_files": 1,
                       "summary_diffs": json.dumps(diffs)}  # fmt: skip
        sid = writer.session(title=f"session {n}", **columns)
        mid = writer.message(sid, {"role": "assistant", "time": {"created": n}})
        for p in range(parts):
            writer.part(sid, mid, {"type": "text", "text": f"session {n} part {p}"})


def remote_args(command: str, db: Path, state: Path, receiver: Receiver, *extra: str) -> list:
    return [command, "--db", str(db), "--state", str(state), "--url", receiver.url,
            "--transport", "http", "--sessions", "all", *extra]  # fmt: skip


async def shares_by_session(receiver: Receiver, state: Path) -> dict[str, dict]:
    out = {}
    for session_id, share_id in state_shares(state).items():
        share = await receiver.store.read_share(share_id)
        out[session_id] = {key: share[key] for key in ("session", "messages", "parts", "diffs")}
    return out


def state_exists(state: Path) -> bool:
    """The state file is there with its schema (the backfill has started)."""
    if not state.exists():
        return False
    connection = sqlite3.connect(f"{state.resolve().as_uri()}?mode=ro", uri=True)
    try:
        tables = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return "pending_item" in {row[0] for row in tables}
    finally:
        connection.close()


def count(state: Path, sql: str) -> int:
    connection = sqlite3.connect(f"{state.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return connection.execute(sql).fetchone()[0]
    finally:
        connection.close()


def pending_items(state: Path) -> int:
    return count(state, "SELECT COUNT(*) FROM pending_item")


def captured_sessions(state: Path) -> int:
    return count(state, "SELECT COUNT(*) FROM session_cursor")


async def finished(syncd: SyncdProcess) -> int:
    assert syncd.process is not None
    return await asyncio.wait_for(syncd.process.wait(), WAIT_SECONDS)


async def test_backfill_interrupted_and_resumed_equals_an_uninterrupted_one(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    populate(writer, sessions=12, parts=8)
    writer.close()
    config = tmp_path / "syncd.toml"
    config.write_text("concurrency = 1\nbatch_max_items = 4\n")
    env = isolated_env(tmp_path)
    whole_state, resumed_state = tmp_path / "whole.db", tmp_path / "resumed.db"
    (tmp_path / "whole").mkdir()
    (tmp_path / "resumed").mkdir()
    async with (
        running_receiver(tmp_path / "whole") as whole,
        running_receiver(tmp_path / "resumed") as resumed,
    ):
        args = remote_args("backfill", writer.path, whole_state, whole, "--config", str(config))
        async with syncd_process(args, env, tmp_path / "whole.log") as syncd:
            assert await finished(syncd) == 0, syncd.log()
        whole_log = syncd.log()

        # Interrupted (Ctrl-C) about half way through the items, then run again.
        await resumed.faults.slow(0.03)
        args = remote_args("backfill", writer.path, resumed_state, resumed, "--config", str(config))
        async with syncd_process(args, env, tmp_path / "resumed.log") as syncd:

            async def half_delivered() -> bool:
                # Every session captured (so the resumed run captures nothing new), about
                # half of the items acknowledged.
                return (
                    state_exists(resumed_state)
                    and captured_sessions(resumed_state) == 12
                    and 0 < pending_items(resumed_state) <= 60
                )

            await eventually(half_delivered, "half of the items delivered", syncd.log)
            assert syncd.process is not None
            syncd.process.send_signal(signal.SIGINT)
            assert await finished(syncd) == 130, syncd.log()
            left = pending_items(resumed_state)
            assert 0 < left < 120, "not interrupted half way"
            await resumed.faults.ok()
            await syncd.start()
            assert await finished(syncd) == 0, syncd.log()

        expected = database_snapshot(writer.path)
        got_whole = await shares_by_session(whole, whole_state)
        got_resumed = await shares_by_session(resumed, resumed_state)
    assert set(got_whole) == set(got_resumed) == set(expected)
    for session_id, want in expected.items():
        assert receiver_differences(want, got_whole[session_id]) == []
        assert got_resumed[session_id] == got_whole[session_id], session_id
    assert state_dead_letters(resumed_state) == [] and pending_items(resumed_state) == 0
    # Progress lines (not a TTY): sessions and items, rate, time left. The totals are known
    # from the first line on (counted before the start); the resumed run counts only what was
    # left. Items are opencode's entities: sessions, messages, parts.
    items = sum(1 + len(s["messages"]) + len(s["parts"]) for s in expected.values())
    totals = re.findall(r"backfill: (\d+)/(\d+) sessions, (\d+)/(\d+) items", whole_log)
    assert totals[0][1::2] == ("12", str(items))
    assert totals[-1] == ("12", "12", str(items), str(items))
    lines = [line for line in whole_log.splitlines() if line.startswith("backfill: ")]
    assert lines[0].endswith(" 0 items/s, estimating") and lines[-1].endswith(" items/s, done")
    second_run = syncd.log().rsplit("--- start", 1)[1]
    resumed = re.findall(r"backfill: (\d+)/(\d+) sessions, (\d+)/(\d+) items", second_run)
    assert resumed[0][3] == resumed[-1][2] == resumed[-1][3] == str(left)


async def test_sighup_reloads_during_delivery_lose_nothing(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    state = tmp_path / "state.db"
    config = tmp_path / "syncd.toml"
    config.write_text('transport = "http"\nwindow = 0.1\nconcurrency = 2\n')
    async with running_receiver(tmp_path) as receiver:
        await receiver.faults.slow(0.05)  # deliveries are in flight when the signals land
        args = ["run", "--config", str(config), "--db", str(writer.path), "--state", str(state),
                "--url", receiver.url, "--sessions", "all"]  # fmt: skip
        async with syncd_process(args, isolated_env(tmp_path), tmp_path / "syncd.log") as syncd:
            assert syncd.process is not None
            populate(writer, sessions=4, parts=6)

            async def some_delivered() -> bool:
                return receiver.create_count >= 1

            await eventually(some_delivered, "a first share", syncd.log)
            config.write_text(
                'transport = "capnweb-batch"\nwindow = 0.3\nconcurrency = 4\nbatch_max_items = 3\n'
            )
            syncd.process.send_signal(signal.SIGHUP)
            populate(writer, sessions=3, parts=6)
            await asyncio.sleep(0.5)
            config.write_text('transport = "http"\nwindow = 0.05\n')
            syncd.process.send_signal(signal.SIGHUP)
            populate(writer, sessions=2, parts=4)
            await receiver.faults.ok()

            expected = database_snapshot(writer.path)
            assert len(expected) == 9

            async def complete() -> bool:
                shares = state_shares(state)
                if set(shares) != set(expected):
                    return False
                for session_id, want in expected.items():
                    share = await receiver.store.read_share(shares[session_id])
                    if receiver_differences(want, share):
                        return False
                return True

            await eventually(complete, "every session on the receiver", syncd.log)
            assert await syncd.terminate() == 0, syncd.log()
    log = syncd.log()
    reloads = [json.loads(line) for line in log.splitlines() if '"config reloaded"' in line]
    assert [sorted(r["changed"]) for r in reloads] == [
        ["batch_max_items", "concurrency", "transport", "window"],
        ["batch_max_items", "concurrency", "transport", "window"],
    ]
    paths = [(path, status) for _, path, status in receiver.answers]
    assert ("/rpc/share", 200) in paths  # the capnweb transport really carried batches
    assert state_dead_letters(state) == [] and pending_items(state) == 0
    writer.close()


def test_sources_of_derived_items_are_acknowledged_with_them() -> None:
    """The unit behind the exact resume: the session row is acknowledged with the batch that
    carries its diffs, the user message with the batch that carries its model."""
    loaded = Loaded()
    session = {"type": "session", "data": {"id": "s"}}
    user = {"type": "message", "data": {"id": "m1", "role": "user",
                                        "model": {"providerID": "p", "modelID": "x"}}}  # fmt: skip
    reply = {"type": "message", "data": {"id": "m2", "role": "assistant"}}
    for kind, item in (("session", session), ("message", user), ("message", reply)):
        loaded.items.append((PendingItem("s", kind, item["data"]["id"], 1), item))
    loaded.diffs = [{"file": "a", "additions": 1}]
    loaded.models = [{"id": "x", "providerID": "p", "name": "X"}]
    planned = plan_batches("s", loaded, None, max_items=2, max_bytes=10**6)
    assert [[i["type"] for i in p.batch.items] for p in planned] == [
        ["session", "message"],
        ["message", "session_diff"],
        ["model"],
    ]
    assert [[p.item_id for p in b.acknowledges] for b in planned] == [[], ["m2"], ["s", "m1"]]
    assert planned[1].diff_hash is not None


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_backfill_interrupted_while_shares_are_made_makes_each_once(
    tmp_path: Path, fixtures_dir: Path, signum: signal.Signals, code: int
) -> None:
    """Ctrl-C while creates were in flight cancelled them in syncd while the receiver made the
    shares: the state never learnt of them, and the next run made a second share of each
    session (27 of 600 sessions after three Ctrl-C, against `syncd serve`). SIGTERM (a
    service manager's stop) killed the process outright, with the same result."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    populate(writer, sessions=4, parts=1)
    writer.close()
    state = tmp_path / "state.db"
    async with running_receiver(tmp_path) as receiver:
        await receiver.faults.late(1.0)  # each share made at once, its answer a second later
        args = remote_args("backfill", writer.path, state, receiver)
        async with syncd_process(args, isolated_env(tmp_path), tmp_path / "syncd.log") as syncd:

            async def all_made() -> bool:
                return receiver.create_count == 4

            await eventually(all_made, "4 shares made", syncd.log)
            assert syncd.process is not None
            syncd.process.send_signal(signum)
            assert await finished(syncd) == code, syncd.log()
            await receiver.faults.ok()
            await syncd.start()
            assert await finished(syncd) == 0, syncd.log()
        made = [share["session_id"] for share in await receiver.store.list_shares()]
    assert sorted(made) == sorted(state_shares(state)), "a session shared twice"


@pytest.mark.parametrize("receiver_fault", ["down", "never answers"])
async def test_backfill_stopped_while_creates_fail_stops_within_a_call(
    tmp_path: Path, fixtures_dir: Path, receiver_fault: str
) -> None:
    """SIGTERM (or Ctrl-C) while every create failed against a receiver that was down went on
    retrying for one call's time limit (request_timeout) before it stopped, though no create
    was out and so no share could be in the making. A create that is out (a receiver that
    makes the share and never answers) is waited for up to that limit, no longer."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    populate(writer, sessions=2, parts=1)
    writer.close()
    config = tmp_path / "syncd.toml"
    # Down: a limit past the wait for the end below; never answering: one well inside it.
    config.write_text(f"request_timeout = {300 if receiver_fault == 'down' else 3}\n")
    async with running_receiver(tmp_path) as receiver:
        if receiver_fault == "down":
            await receiver.faults.stop()
        else:
            await receiver.faults.late(WAIT_SECONDS * 2)
        args = remote_args(
            "backfill", writer.path, tmp_path / "state.db", receiver, "--config", str(config)
        )
        async with syncd_process(args, isolated_env(tmp_path), tmp_path / "syncd.log") as syncd:

            async def create_out() -> bool:
                if receiver_fault == "down":
                    return "delivery failed; retrying" in syncd.log()
                return receiver.create_count > 0

            await eventually(create_out, "a create sent", syncd.log)
            assert syncd.process is not None
            syncd.process.send_signal(signal.SIGTERM)
            assert await finished(syncd) == 143, syncd.log()
