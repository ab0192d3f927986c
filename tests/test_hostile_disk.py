"""The machine under syncd's files: its state database taken away under a running daemon (a
real `syncd run`), and the receiver's archive out of disk space. Nothing may be lost, and
nothing delivered twice."""

from __future__ import annotations

import asyncio
import gc
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from syncd.archive.sqlite import SqliteArchive, _machine_trouble_passes
from syncd.model import Batch
from syncd.state.store import StateError, StateStore
from syncd.transports.base import RetryableError, ThrownError
from tests.support.env import WAIT_SECONDS, eventually, isolated_env
from tests.support.fake_opencode import FakeOpencode
from tests.support.receiver import CLIENTS, running_receiver
from tests.support.syncd_process import run_syncd, syncd_process

SESSION_ID = "ses_fulldisk00000000000000001"


async def shares_by_session(archive: Path) -> dict[str, int]:
    """session id -> how many shares the archive holds for it."""
    if not archive.is_file():
        return {}
    store = await SqliteArchive.open(archive)
    try:
        counts: dict[str, int] = {}
        for share in await store.list_shares():
            counts[share["session_id"]] = counts.get(share["session_id"], 0) + 1
        return counts
    finally:
        await store.close()


async def test_a_state_deleted_under_the_daemon_is_written_back_and_it_stops(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """`rm -r ~/.local/state/syncd` while syncd runs: it went on recording into the deleted
    file, `status` said syncd had never run, and the next start created a second share of
    every session."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    first = writer.session("before")
    state_dir, archive = tmp_path / "state", tmp_path / "archive.db"
    args = ["--db", str(writer.path), "--state", str(state_dir / "state.db"),
            "--archive", str(archive)]  # fmt: skip
    env = isolated_env(tmp_path)
    async with syncd_process(["run", *args], env, tmp_path / "syncd.log") as syncd:

        async def delivered(*sessions: str) -> bool:
            return set(sessions) <= set(await shares_by_session(archive))

        await eventually(lambda: delivered(first), "the first session delivered", syncd.log)
        shutil.rmtree(state_dir)
        second = writer.session("after")  # a change wakes the daemon up
        assert syncd.process is not None
        code = await asyncio.wait_for(syncd.process.wait(), WAIT_SECONDS)
    assert code == 1, syncd.log()
    assert "was deleted while syncd ran" in syncd.log()
    assert "written back from the open copy" in syncd.log()
    assert (state_dir / "state.db").stat().st_mode & 0o777 == 0o600  # it holds share secrets

    code, output = await run_syncd("sync", *args, env=env)
    assert code == 0, output
    assert await shares_by_session(archive) == {first: 1, second: 1}
    writer.close()


async def test_a_state_replaced_under_the_daemon_stops_it_and_is_left_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    state = await StateStore.open(path)
    try:
        await state.check_on_disk()  # the file it opened: nothing to say
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        replacement = await StateStore.open(path)  # a restored backup, say
        await replacement.set_meta("restored", "yes")
        await replacement.close()
        with pytest.raises(StateError, match="replaced by another file while syncd ran"):
            await state.check_on_disk()
    finally:
        await state.close()
    reopened = await StateStore.open(path)
    assert await reopened.meta("restored") == "yes"
    await reopened.close()


# SQLite's own answers to a full file system (SQLITE_FULL) and to one remounted read-only after
# an error (SQLITE_READONLY), made without a file system of their own.
MACHINE_TROUBLE = {
    "disk full": "PRAGMA max_page_count = 1",
    "read-only": "PRAGMA query_only = 1",
}
TROUBLE_GONE = ["PRAGMA max_page_count = 1073741823", "PRAGMA query_only = 0"]


def message_item() -> dict[str, Any]:
    """A message larger than the archive's free pages."""
    message = {"id": "msg_1", "sessionID": SESSION_ID, "role": "user", "note": "x" * 20_000}
    return {"type": "message", "data": message}


@pytest.mark.parametrize("trouble", sorted(MACHINE_TROUBLE))
@pytest.mark.parametrize("transport_name", sorted(CLIENTS))
async def test_a_receiver_that_cannot_write_says_retry_later(
    tmp_path: Path, transport_name: str, trouble: str
) -> None:
    """The receiver's disk full (or its file system read-only) is the machine's trouble, not
    the batch's: over capnweb `syncd serve` threw it back as "internal error", which senders
    cannot tell from a refusal, and after five in a row `syncd sync` dead-lettered the batch,
    left behind until someone retried it by hand."""
    async with running_receiver(tmp_path) as receiver:
        archive = receiver.store._conn  # type: ignore[attr-defined]
        await archive.execute(MACHINE_TROUBLE[trouble])
        transport = CLIENTS[transport_name](receiver.url)
        batch = Batch(SESSION_ID, [message_item()])
        try:
            with pytest.raises(RetryableError) as raised:
                created = await transport.create(SESSION_ID, batch)
                await transport.sync(created.share, batch)  # the share alone had room
            assert not isinstance(raised.value, ThrownError), raised.value
            if transport_name in ("http", "capnweb-batch"):
                assert raised.value.retry_after == 5
            for pragma in TROUBLE_GONE:
                await archive.execute(pragma)
            created = await transport.create(SESSION_ID + "2", None)
            assert created.share.id
        finally:
            await transport.aclose()


async def test_a_broken_websocket_session_leaves_no_error_unretrieved(tmp_path: Path) -> None:
    """A new share travels with its first batch: two calls. When the session broke under them,
    the second call's error was never retrieved, and asyncio printed it to stderr (three
    lines per call, in no log's form) for every retry."""
    unretrieved: list[str] = []
    asyncio.get_running_loop().set_exception_handler(
        lambda _, context: unretrieved.append(context["message"])
    )

    async def create_while_read_only(url: str) -> str:
        transport = CLIENTS["capnweb-ws"](url)
        try:
            await transport.create(SESSION_ID, Batch(SESSION_ID, [message_item()]))
        except RetryableError as error:
            return str(error)
        finally:
            await transport.aclose()
        raise AssertionError("the archive took a write while read-only")

    async with running_receiver(tmp_path) as receiver:
        await receiver.store._conn.execute(MACHINE_TROUBLE["read-only"])  # type: ignore[attr-defined]
        assert "archive unavailable" in await create_while_read_only(receiver.url)
    gc.collect()  # a future's unretrieved error is reported when it is collected
    assert unretrieved == []


async def test_a_share_made_while_a_deleted_state_is_written_back_is_in_the_copy(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """The state deleted while a share is being made: the copy was written at the look that
    noticed, the share's answer came after it and was recorded into the deleted file on the
    way out, and the next start made a second share of the session."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    first = writer.session("before")
    state_dir = tmp_path / "state"
    env = isolated_env(tmp_path)
    async with running_receiver(tmp_path) as receiver:
        args = ["--db", str(writer.path), "--state", str(state_dir / "state.db"),
                "--url", receiver.url, "--transport", "http", "--sessions", "all"]  # fmt: skip
        await receiver.faults.late(3.0)  # the share made at once, its answer 3 s later
        async with syncd_process(["run", *args], env, tmp_path / "syncd.log") as syncd:

            async def share_made() -> bool:
                return receiver.create_count == 1

            await eventually(share_made, "the share being made", syncd.log)
            shutil.rmtree(state_dir)
            second = writer.session("after")  # a change wakes the daemon up
            assert syncd.process is not None
            code = await asyncio.wait_for(syncd.process.wait(), WAIT_SECONDS)
        assert code == 1, syncd.log()
        await receiver.faults.ok()
        code, output = await run_syncd("sync", *args, env=env)
        assert code == 0, output
        made = sorted(share["session_id"] for share in await receiver.store.list_shares())
    assert made == sorted([first, second]), syncd.log()
    writer.close()


def test_an_error_sqlite3_raises_itself_is_not_taken_for_machine_trouble() -> None:
    """The sqlite3 module's own errors (a ProgrammingError: a bug, not the machine) carry no
    SQLite result code: they pass through as they are, not as an AttributeError, and are no
    'retry later'."""
    closed = sqlite3.connect(":memory:")
    closed.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"), _machine_trouble_passes():
        closed.execute("SELECT 1")
