"""The whole thing: real opencode runs headless while `syncd run` (a real subprocess) pushes to a
real receiver over each transport (share REST API, capnweb HTTP batch and WebSocket, A2A); at
the end the receiver holds exactly what opencode's database holds, field by field and with the
same JSON types, through SIGTERM, SIGKILL, receiver outages and restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.expected import assert_receiver_matches, database_snapshot, receiver_differences
from tests.support.fake_llm import FakeLlm, Turn
from tests.support.node_share_rpc import OpencodeShareServer, opencode_share_server
from tests.support.opencode_driver import Opencode
from tests.support.receiver import Receiver, running_receiver
from tests.support.syncd_process import (
    SyncdProcess,
    run_syncd,
    state_dead_letters,
    state_shares,
    syncd_process,
)

pytestmark = pytest.mark.e2e

CATCH_UP_TIMEOUT = 120.0
TRANSPORTS = ("http", "capnweb-batch", "capnweb-ws", "a2a")


def syncd_args(
    opencode: Opencode,
    receiver: Receiver,
    state_db: Path,
    *extra: str,
    transport: str = "http",
) -> list[str]:
    return [
        "run",
        "--db",
        str(opencode.db_path),
        "--state",
        str(state_db),
        "--url",
        receiver.url,
        "--transport",
        transport,
        "--sessions",
        "all",
        *extra,
    ]


async def run_opencode(
    opencode: Opencode, fake_llm: FakeLlm, n: int, session: str | None = None
) -> None:
    """One headless run writing f{n}.txt (in a new session, or continuing `session`), off the
    event loop (the receiver runs on it)."""
    fake_llm.turn = Turn(
        file_name=f"f{n}.txt",
        file_text="".join(f"run {n} line {i}\n" for i in range(20)),
        reply=" ".join(f"run{n}-word{i}" for i in range(80)),
    )
    prompt = f"please write the file f{n}.txt"
    if session is None:
        await asyncio.to_thread(opencode.run, prompt)
        return
    result = await asyncio.to_thread(
        opencode.command, "run", "--auto", "--session", session, prompt
    )
    assert result.returncode == 0, result.stderr


async def receiver_shares(receiver: Receiver) -> dict[str, str]:
    """session id -> its newest share on the receiver (A2A contexts are shares there too)."""
    latest: dict[str, str] = {}
    for share in await receiver.store.list_shares():  # newest first
        latest.setdefault(share["session_id"], share["id"])
    return latest


async def assert_receiver_holds_database(
    receiver: Receiver, opencode: Opencode, state_db: Path, syncd: SyncdProcess
) -> None:
    snapshot = database_snapshot(opencode.db_path)
    assert set(state_shares(state_db)) == set(snapshot), syncd.log()[-5000:]
    shares = await receiver_shares(receiver)
    assert set(shares) == set(snapshot), syncd.log()[-5000:]
    for session_id, expected in snapshot.items():
        assert_receiver_matches(expected, await receiver.store.read_share(shares[session_id]))
    assert state_dead_letters(state_db) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_sigterm_after_headless_runs_leaves_the_receiver_complete(
    tmp_path: Path, opencode: Opencode, fake_llm: FakeLlm, transport: str
) -> None:
    state_db = tmp_path / "syncd-state.db"
    async with running_receiver(tmp_path) as receiver:
        args = syncd_args(opencode, receiver, state_db, transport=transport)
        async with syncd_process(args, opencode.env, tmp_path / "syncd.log") as syncd:
            for n in range(3):
                await run_opencode(opencode, fake_llm, n)
            # No waiting for delivery: stopping must flush what the last run just wrote.
            assert await syncd.terminate() == 0, syncd.log()[-5000:]

        snapshot = database_snapshot(opencode.db_path)
        assert len(snapshot) == 3
        await assert_receiver_holds_database(receiver, opencode, state_db, syncd)
        assert receiver.create_count == 3


async def test_crashes_and_receiver_outages_lose_nothing(
    tmp_path: Path, opencode: Opencode, fake_llm: FakeLlm
) -> None:
    state_db = tmp_path / "syncd-state.db"
    config = tmp_path / "syncd.toml"
    # Short backoff so recovery after the outage is quick; a short window so kills land
    # mid-delivery rather than always inside a window.
    config.write_text("backoff_max = 2.0\nwindow = 0.3\n")
    async with running_receiver(tmp_path) as receiver:
        args = syncd_args(opencode, receiver, state_db, "--config", str(config))
        async with syncd_process(args, opencode.env, tmp_path / "syncd.log") as syncd:
            await run_opencode(opencode, fake_llm, 0)

            await receiver.faults.stop()  # connections refused
            await run_opencode(opencode, fake_llm, 1)

            await receiver.faults.status(503)
            await run_and_kill_mid_run(syncd, opencode, fake_llm, 2)

            await receiver.faults.status(429, retry_after=1)
            await run_opencode(opencode, fake_llm, 3)
            await asyncio.sleep(3)

            await receiver.faults.ok()
            # A crash while deliveries succeed: the one that can fall between a share's
            # creation and syncd recording its answer.
            await run_and_kill_mid_run(syncd, opencode, fake_llm, 4)

            await wait_until_receiver_holds_database(receiver, opencode, syncd)
            assert await syncd.terminate() == 0, syncd.log()[-5000:]

        assert syncd.starts == 3
        statuses = {status for _method, _path, status in receiver.answers}
        assert {503, 429, 200} <= statuses  # the outage phases were really met
        snapshot = database_snapshot(opencode.db_path)
        assert len(snapshot) == 5
        await assert_receiver_holds_database(receiver, opencode, state_db, syncd)
        sessions_of_shares = [share["session_id"] for share in await receiver.store.list_shares()]
        assert set(sessions_of_shares) == set(snapshot)
        # Each share created once; one extra only if the second kill fell between a create
        # and syncd recording its answer (the first kill came while every create failed).
        duplicated = len(sessions_of_shares) - len(set(sessions_of_shares))
        assert duplicated <= 1, sessions_of_shares
        assert receiver.create_count == len(snapshot) + duplicated


async def run_and_kill_mid_run(
    syncd: SyncdProcess, opencode: Opencode, fake_llm: FakeLlm, n: int
) -> None:
    """Run opencode; while its reply is streaming (its text part stored empty, its final
    version still to come), SIGKILL syncd and start it again."""
    replies_before = fake_llm.requests["reply"]
    run = asyncio.create_task(run_opencode(opencode, fake_llm, n))
    while fake_llm.requests["reply"] == replies_before and not run.done():
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # the reply's empty text part is committed by now
    await syncd.kill()
    await syncd.start()
    await run


async def wait_until_receiver_holds_database(
    receiver: Receiver, opencode: Opencode, syncd: SyncdProcess
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CATCH_UP_TIMEOUT
    while True:
        snapshot = database_snapshot(opencode.db_path)
        latest_share = await receiver_shares(receiver)
        differences: list[str] = []
        for session_id, expected in snapshot.items():
            if session_id not in latest_share:
                differences.append(f"session {session_id}: no share on the receiver")
                continue
            share = await receiver.store.read_share(latest_share[session_id])
            differences += receiver_differences(expected, share)
        if not differences:
            return
        if loop.time() > deadline:
            shown = "\n".join(differences[:20])
            raise AssertionError(
                f"receiver still behind after {CATCH_UP_TIMEOUT:g}s:\n{shown}\n"
                f"syncd log (end):\n{syncd.log()[-5000:]}"
            )
        await asyncio.sleep(0.5)


async def test_websocket_broken_mid_run_loses_nothing(
    tmp_path: Path, opencode: Opencode, fake_llm: FakeLlm
) -> None:
    """The receiver restarts while opencode streams: the daemon's one WebSocket breaks with
    batches in flight; they are re-sent on a fresh session."""
    state_db = tmp_path / "syncd-state.db"
    config = tmp_path / "syncd.toml"
    config.write_text("backoff_max = 1.0\nwindow = 0.3\n")
    async with running_receiver(tmp_path) as receiver:
        args = syncd_args(
            opencode, receiver, state_db, "--config", str(config), transport="capnweb-ws"
        )
        async with syncd_process(args, opencode.env, tmp_path / "syncd.log") as syncd:
            await run_opencode(opencode, fake_llm, 0)
            replies_before = fake_llm.requests["reply"]
            run = asyncio.create_task(run_opencode(opencode, fake_llm, 1))
            while fake_llm.requests["reply"] == replies_before and not run.done():
                await asyncio.sleep(0.05)
            await receiver.faults.stop()  # the socket drops with the server
            await asyncio.sleep(1.0)
            await receiver.faults.ok()
            await run
            await run_opencode(opencode, fake_llm, 2)
            await wait_until_receiver_holds_database(receiver, opencode, syncd)
            assert await syncd.terminate() == 0, syncd.log()[-5000:]
        # The break was real: the daemon had to open a fresh WebSocket session.
        assert receiver.websockets >= 2
        await assert_receiver_holds_database(receiver, opencode, state_db, syncd)
        assert receiver.create_count == 3


@pytest.mark.parametrize("transport", ["http", "capnweb-batch", "capnweb-ws"])
async def test_opencodes_real_share_server_ends_complete_and_acknowledged(
    tmp_path: Path, opencode: Opencode, fake_llm: FakeLlm, transport: str
) -> None:
    """The receiver users run: opencode's own share server (answers `{}`, bare 500s, share id
    from the session id). Headless runs, a share lost on the server and its session continued,
    SIGTERM, then `syncd sync` as a headless host runs it: the server holds the database field
    by field, nothing pending or dead-lettered. (Over REST a lost share is recognised only after
    bare 500s for a while, RetryPolicy.ambiguous_after: the daemon may stop before, sync ends.)"""
    state_db = tmp_path / "syncd-state.db"
    with opencode_share_server() as server:
        args = [
            "--db", str(opencode.db_path), "--state", str(state_db), "--url", server.url,
            "--transport", transport, "--sessions", "all",
        ]  # fmt: skip
        async with syncd_process(["run", *args], opencode.env, tmp_path / "syncd.log") as syncd:
            await run_opencode(opencode, fake_llm, 0)
            first = set(database_snapshot(opencode.db_path))
            await wait_until_async(lambda: held_sessions(server) >= first, syncd)
            [lost] = first
            server.remove(lost[-8:])  # lost on the server
            await run_opencode(opencode, fake_llm, 1, session=lost)  # new parts in it
            await run_opencode(opencode, fake_llm, 2)
            assert await syncd.terminate() == 0, syncd.log()[-5000:]
        code, output = await run_syncd("sync", "--give-up-after", "90", *args, env=opencode.env)
        assert code == 0, output[-5000:]

        snapshot = database_snapshot(opencode.db_path)
        assert len(snapshot) == 2
        documents = server_documents(server)
        assert set(documents) == set(snapshot), syncd.log()[-5000:]
        for session_id, expected in snapshot.items():
            assert_receiver_matches(expected, documents[session_id])
        assert state_dead_letters(state_db) == []
        assert server.state()["creates"] == 3  # two sessions, the lost one once more


def held_sessions(server: OpencodeShareServer) -> set[str]:
    return {share["sessionID"] for share in server.state()["shares"].values()}


def server_documents(server: OpencodeShareServer) -> dict[str, dict]:
    """session id -> its share as `ArchiveStore.read_share` shapes it."""
    documents = {}
    for share in server.state()["shares"].values():
        document: dict = {"session": None, "messages": [], "parts": [], "diffs": [], "models": []}
        for item in share["items"]:
            kind, data = item["type"], item["data"]
            if kind == "session":
                document["session"] = data
            elif kind in ("message", "part"):
                document[kind + "s"].append(data)
            else:
                document["diffs" if kind == "session_diff" else "models"] = data
        documents[share["sessionID"]] = document
    return documents


async def wait_until_async(check: Callable[[], bool], syncd: SyncdProcess) -> None:
    deadline = asyncio.get_running_loop().time() + CATCH_UP_TIMEOUT
    while not await asyncio.to_thread(check):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"syncd did not catch up\n{syncd.log()[-5000:]}")
        await asyncio.sleep(0.2)
