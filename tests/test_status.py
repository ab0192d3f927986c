"""`syncd status` and `syncd dead-letters` through the real CLI, against a real receiver that
accepts, refuses (400) or is down, and a state written by real deliveries."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from syncd.cli import main
from syncd.commands.sync import sync_once
from syncd.config import Config, load_config
from syncd.errors import UserError
from syncd.state.lock import StateLock
from syncd.state.store import StateStore
from tests.support.env import WAIT_SECONDS
from tests.support.fake_opencode import FakeOpencode
from tests.support.receiver import Receiver, running_receiver


def remote_config(tmp_path: Path, db: Path, url: str) -> Config:
    env = {"HOME": str(tmp_path / "home")}
    flags = {"db": str(db), "state": str(tmp_path / "state.db"), "url": url,
             "transport": "http", "sessions": "all"}  # fmt: skip
    return load_config(flags, env)


def flags(config: Config) -> list[str]:
    return ["--db", str(config.db), "--state", str(config.state), "--url", str(config.url),
            "--transport", "http", "--sessions", "all"]  # fmt: skip


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The `syncd` command in-process (its own event loop, in a thread): code, stdout, stderr."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def status(capsys: pytest.CaptureFixture[str], config: Config, *extra: str) -> tuple:
    code, out, _ = await cli(capsys, "status", *flags(config), *extra)
    json_code, json_out, _ = await cli(capsys, "status", "--json", *flags(config), *extra)
    assert json_code == code
    return code, out, json.loads(json_out)


@pytest.fixture(autouse=True)
def default_logging():
    """The CLI configures logging onto this test's captured stderr, closed after the test."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def writer(tmp_path: Path, fixtures_dir: Path):
    fake = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    yield fake
    fake.close()


async def refused(tmp_path: Path, writer: FakeOpencode, receiver: Receiver) -> Config:
    """Everything in the database synced to a receiver that refuses it (400): dead letters."""
    config = remote_config(tmp_path, writer.path, receiver.url)
    await receiver.faults.status(400)
    with pytest.raises(UserError, match="dead-lettered"):
        await sync_once(config)
    return config


def one_session(writer: FakeOpencode) -> tuple[str, str]:
    sid = writer.session()
    mid = writer.message(sid, {"role": "assistant", "time": {"created": 1}})
    return sid, writer.part(sid, mid, {"type": "text", "text": "hello"})


async def test_delivered_is_healthy(
    tmp_path: Path, writer: FakeOpencode, capsys: pytest.CaptureFixture[str]
) -> None:
    sid, _ = one_session(writer)
    async with running_receiver(tmp_path) as receiver:
        config = remote_config(tmp_path, writer.path, receiver.url)
        assert await sync_once(config) == 0
        code, out, report = await status(capsys, config)
    assert code == 0
    [row] = [line for line in out.splitlines() if line.startswith(sid)]
    assert row.split()[1] == "delivered" and f"{receiver.url}/share/" in row
    assert "healthy" in out.splitlines()[-1] and "UNHEALTHY" not in out
    assert report["healthy"] is True and report["problems"] == []
    assert report["totals"]["delivered"] == 1 and report["totals"]["pending_items"] == 0
    [session] = report["sessions"]
    assert session["state"] == "delivered" and session["lag_seconds"] == 0


async def test_receiver_down_is_retrying_then_lagging(
    tmp_path: Path, writer: FakeOpencode, capsys: pytest.CaptureFixture[str]
) -> None:
    sid, _ = one_session(writer)
    async with running_receiver(tmp_path) as receiver:
        config = remote_config(tmp_path, writer.path, receiver.url)
        await receiver.faults.stop()
        with pytest.raises(UserError, match="not delivered"):
            await sync_once(config, give_up_after=0.5)
        # Nothing runs to retry: pending, with the error, and the daemon said not running.
        code, out, report = await status(capsys, config)
        assert code == 0, out
        [session] = report["sessions"]
        assert session["state"] == "pending" and session["pending"] == 3
        assert session["attempts"] >= 1 and session["last_error"]
        assert report["daemon"] == {"running": False, "pid": None}
        assert "daemon: not running" in out
        # A daemon holds the state (its lock): the same session is being retried.
        daemon = StateLock(config.state)
        daemon.acquire()
        try:
            code, out, report = await status(capsys, config)
        finally:
            daemon.release()
        assert code == 0, out
        assert report["sessions"][0]["state"] == "retrying"
        assert report["daemon"]["running"] and f"running (pid {os.getpid()})" in out
        assert "retrying" in next(line for line in out.splitlines() if line.startswith(sid))
        # Beyond it: unhealthy, with the reason.
        await asyncio.sleep(0.1)
        code, out, report = await status(capsys, config, "--max-lag", "0.05")
        assert code == 1
        assert "UNHEALTHY" in out and "oldest pending item" in out
        assert report["healthy"] is False
        assert any("oldest pending item" in problem for problem in report["problems"])
        # The receiver is back: delivered, healthy again.
        await receiver.faults.ok()
        assert await sync_once(config) == 0
        code, _, report = await status(capsys, config, "--max-lag", "0.05")
        assert code == 0 and report["sessions"][0]["state"] == "delivered"


async def test_refused_items_are_dead_lettered_then_retried_after_a_fix(
    tmp_path: Path, writer: FakeOpencode, capsys: pytest.CaptureFixture[str]
) -> None:
    sid, part = one_session(writer)
    async with running_receiver(tmp_path) as receiver:
        config = await refused(tmp_path, writer, receiver)
        code, out, report = await status(capsys, config)
        assert code == 1
        assert "dead-lettered" in next(line for line in out.splitlines() if line.startswith(sid))
        assert report["sessions"][0]["state"] == "dead-lettered"
        assert "injected 400" in report["sessions"][0]["last_error"]
        assert report["totals"]["dead_letters"] == 3  # session, message, part
        assert any("dead letter" in problem for problem in report["problems"])

        code, out, _ = await cli(capsys, "dead-letters", "list", *flags(config))
        assert code == 0 and part in out and "injected 400" in out
        code, out, _ = await cli(capsys, "dead-letters", "list", "--json", *flags(config))
        letters = json.loads(out)
        [part_letter] = [letter for letter in letters if letter["item_id"] == part]
        code, out, _ = await cli(capsys, "dead-letters", "show", str(part_letter["id"]),
                              *flags(config))  # fmt: skip
        shown = json.loads(out)
        assert shown["payload"]["type"] == "part" and shown["payload"]["data"]["text"] == "hello"

        # Fixed on the server; the part grew meanwhile: the retry sends its newest state.
        await receiver.faults.ok()
        writer.part(sid, shown["payload"]["data"]["messageID"],
                    {"type": "text", "text": "hello, world"}, part_id=part)  # fmt: skip
        code, out, _ = await cli(capsys, "dead-letters", "retry", "--all", *flags(config))
        assert code == 0 and "3 dead letter(s) retried" in out
        assert await sync_once(config) == 0
        code, _, report = await status(capsys, config)
        assert code == 0 and report["totals"]["dead_letters"] == 0
        share = await only_share(receiver)
        assert share["parts"][0]["text"] == "hello, world"
        assert share["session"]["id"] == sid and len(share["messages"]) == 1


async def only_share(receiver: Receiver) -> dict:
    [listed] = await receiver.store.list_shares()
    return await receiver.store.read_share(listed["id"])


async def test_derived_dead_letter_retry_recaptures_the_session(
    tmp_path: Path, writer: FakeOpencode, capsys: pytest.CaptureFixture[str]
) -> None:
    diffs = [{"file": "a.txt", "patch": "+a", "additions": 1, "deletions": 0, "status": "added"}]
    sid = writer.session(summary_additions=1, summary_deletions=0, summary_files=1,
                         summary_diffs=json.dumps(diffs))  # fmt: skip
    async with running_receiver(tmp_path) as receiver:
        config = await refused(tmp_path, writer, receiver)
        code, out, _ = await cli(capsys, "dead-letters", "list", "--json", *flags(config))
        kinds = {letter["kind"]: letter for letter in json.loads(out)}
        assert set(kinds) == {"session", "session_diff"}
        assert kinds["session_diff"]["item_id"] == sid
        # Retry only the derived letter: the whole session is captured again.
        await receiver.faults.ok()
        code, out, _ = await cli(capsys, "dead-letters", "retry",
                              str(kinds["session_diff"]["id"]), *flags(config))  # fmt: skip
        assert code == 0 and "1 dead letter(s) retried" in out
        # Delivered, but the session's own letter is still there: not "everything delivered".
        with pytest.raises(UserError, match=r"1 item\(s\) dead-lettered, 0 of them in this run"):
            await sync_once(config)
        share = await only_share(receiver)
        assert share["session"]["id"] == sid and share["diffs"] == diffs
        code, out, _ = await cli(capsys, "dead-letters", "discard", "--all", *flags(config))
        assert code == 0 and "1 dead letter(s) discarded" in out
        code, _, report = await status(capsys, config)
        assert code == 0 and report["dead_letters"] == []


async def test_one_session_by_part_of_its_id_and_letters_by_range(
    tmp_path: Path, writer: FakeOpencode, capsys: pytest.CaptureFixture[str]
) -> None:
    sid, _ = one_session(writer)
    other, _ = one_session(writer)
    async with running_receiver(tmp_path) as receiver:
        config = await refused(tmp_path, writer, receiver)
    code, out, _ = await cli(capsys, "status", sid[-8:], *flags(config))
    details = dict(line.split(None, 1) for line in out.splitlines() if not line.startswith(" "))
    assert code == 1 and details["session"] == sid and details["state"] == "dead-lettered"
    assert "injected 400" in out and other not in out
    code, out, _ = await cli(capsys, "status", sid[-8:], "--json", *flags(config))
    assert [s["session_id"] for s in json.loads(out)["sessions"]] == [sid]
    code, _, err = await cli(capsys, "status", "ses_", *flags(config))
    assert code == 2 and "2 sessions start with 'ses_'" in err
    code, _, err = await cli(capsys, "status", "nothing-like-it", *flags(config))
    assert code == 2 and "no session 'nothing-like-it' in the state" in err
    code, out, _ = await cli(capsys, "dead-letters", "discard", "1-3", *flags(config))
    assert code == 0 and "3 dead letter(s) discarded" in out
    with pytest.raises(SystemExit, match="2"):  # a usage mistake, as argparse ends them
        await cli(capsys, "dead-letters", "discard", "3-1", *flags(config))
    assert "'3-1' is an empty range" in capsys.readouterr().err


async def test_dead_letter_commands_name_what_is_wrong(
    tmp_path: Path, writer: FakeOpencode, capsys: pytest.CaptureFixture[str]
) -> None:
    one_session(writer)
    config = remote_config(tmp_path, writer.path, "http://127.0.0.1:9")
    code, _, err = await cli(capsys, "status", *flags(config))
    assert code == 2 and "no state database" in err
    await (await StateStore.open(config.state)).close()
    for argv, message in (
        (["retry"], "by id, or pass --all"),
        (["retry", "7", "--all"], "by id, or pass --all"),
        (["discard", "42"], "no dead letter 42"),
        (["show", "42"], "no dead letter 42"),
    ):
        code, _, err = await cli(capsys, "dead-letters", *argv, *flags(config))
        assert code == 2 and message in err, argv


def test_status_into_a_closed_pipe_exits_quietly(tmp_path: Path, fixtures_dir: Path) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    for _ in range(3):
        one_session(writer)
    writer.close()
    state = str(tmp_path / "state.db")
    env = {"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    args = [sys.executable, "-m", "syncd"]
    common = ["--db", str(writer.path), "--state", state, "--archive", str(tmp_path / "a.db")]
    subprocess.run([*args, "sync", *common], env=env, check=True, capture_output=True)
    # The reader is gone before syncd writes a byte (`syncd status | head -0`).
    process = subprocess.Popen(
        [*args, "status", *common], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=30) == 141
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


async def with_dead_letters(tmp_path: Path, writer: FakeOpencode, count: int) -> Config:
    """A state holding `count` dead letters (ids 1 to `count`) of one session."""
    config = remote_config(tmp_path, writer.path, "http://127.0.0.1:9")
    await (await StateStore.open(config.state)).close()
    with sqlite3.connect(config.state) as db:
        db.executemany(
            "INSERT INTO dead_letter (session_id, kind, item_id, reason, time_created) "
            "VALUES ('ses_x', 'part', ?, 'refused:  400', 1764600000000)",
            ((f"prt_{n}",) for n in range(count)),
        )
    return config


def test_many_dead_letters_list_into_a_pipe_at_once(tmp_path: Path, writer: FakeOpencode) -> None:
    """In a pipe (`| less`, `| grep`) every letter is a line. rich laid each out in about a
    millisecond: the letters of one large refusal (260,000) took four minutes and 1.3 GB."""
    config = asyncio.run(with_dead_letters(tmp_path, writer, count := 30_000))
    env = {"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    listed = subprocess.run(
        [sys.executable, "-m", "syncd", "dead-letters", "list", *flags(config)],
        env=env, capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    lines = listed.stdout.splitlines()
    assert listed.returncode == 0, listed.stderr
    assert lines[0].split() == ["ID", "SESSION", "KIND", "ITEM", "WHEN", "REASON"]
    assert lines[1].split()[:4] == ["1", "ses_x", "part", "prt_0"]
    assert lines[1].startswith("1      ses_x    part  prt_0  ") and lines[1].endswith(
        " refused: 400"
    )
    assert lines[count].split()[:4] == [str(count), "ses_x", "part", f"prt_{count - 1}"]
    assert lines[count + 2].startswith(f"{count} dead letter(s).")


async def test_dead_letters_by_a_range_of_any_size(
    tmp_path: Path, writer: FakeOpencode, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused key during a large backfill leaves a letter per item. `retry 1-260000` once
    failed on SQLite's limit of bound variables (250,000 on Debian's build, 32,766 on
    others) with the state's "free disk space" error, and a slip of the keyboard
    (`discard 1-2000000000`) built a list of two billion ids and hung."""
    config = await with_dead_letters(tmp_path, writer, count := 260_000)
    code, out, err = await cli(capsys, "dead-letters", "retry", f"1-{count}", *flags(config))
    assert code == 0 and f"{count} dead letter(s) retried" in out, err
    with sqlite3.connect(config.state) as db:
        assert db.execute("SELECT count(*) FROM pending_item").fetchone() == (count,)
        assert db.execute("SELECT count(*) FROM dead_letter").fetchone() == (0,)
    code, _, err = await cli(capsys, "dead-letters", "discard", "9-2000000000", *flags(config))
    assert code == 2 and err.count("\n") == 1, err
    assert "no dead letter 9, 10, 11," in err and "1999999992 in all" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["show", str(2**63)],  # past SQLite's largest integer
        ["retry", f"1-{2**70}"],
        ["discard", f"0-{2**63 - 1}"],  # more ids than a Python range has a length for
    ],
)
async def test_dead_letter_ids_past_sqlites_integers_are_one_line(
    tmp_path: Path, writer: FakeOpencode, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """An id is a SQLite integer (below 2**63): a larger one reached the state as a Python
    OverflowError, a traceback."""
    config = await with_dead_letters(tmp_path, writer, 3)
    try:
        code, _, err = await cli(capsys, "dead-letters", *argv, *flags(config))
    except SystemExit as refused:  # argparse's refusal, in-process
        code, err = refused.code, capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    with sqlite3.connect(config.state) as db:
        assert db.execute("SELECT count(*) FROM dead_letter").fetchone() == (3,)


def test_dead_letters_named_one_by_one_are_found_at_once(
    tmp_path: Path, writer: FakeOpencode
) -> None:
    """`syncd dead-letters list --json | jq '.[].id' | xargs syncd dead-letters discard`: every
    id its own range. Each letter was compared with every range (the ids' index unused): 1,000
    ids over 100,000 letters took two minutes, where a list of ids had taken milliseconds."""
    config = asyncio.run(with_dead_letters(tmp_path, writer, 30_000))
    ids = [str(n) for n in range(1, 4_000, 2)]
    env = {"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    discarded = subprocess.run(
        [sys.executable, "-m", "syncd", "dead-letters", "discard", *ids, *flags(config)],
        env=env, capture_output=True, text=True, timeout=WAIT_SECONDS,
    )  # fmt: skip
    assert discarded.returncode == 0, discarded.stderr
    with sqlite3.connect(config.state) as db:
        assert db.execute("SELECT count(*) FROM dead_letter").fetchone() == (30_000 - len(ids),)
        odd = "SELECT count(*) FROM dead_letter WHERE id % 2 = 1 AND id < 4000"
        assert db.execute(odd).fetchone() == (0,)
