"""opencode's database replaced under a running `syncd run` (a real subprocess): deleted and
recreated, renamed over, truncated, corrupted. The daemon follows the file, not the inode: it
reopens, captures the new database afresh and delivers; while the file cannot be read it keeps
running, unhealthy with the reason (/health, `syncd status`), and never crashes. With
`on_delete = "delete"`, a recreated database deletes no remote copy until
`syncd deletions confirm`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from syncd.commands.status import collect
from tests.support.archive_check import make_config
from tests.support.env import WAIT_SECONDS, eventually, free_port, isolated_env
from tests.support.fake_opencode import FakeOpencode
from tests.support.syncd_process import SyncdProcess, syncd_process


def new_database(path: Path, fixtures_dir: Path, sessions: int = 1) -> list[str]:
    """A complete opencode database at `path` holding `sessions` new sessions; their ids."""
    writer = FakeOpencode(path, fixtures_dir)
    try:
        ids = []
        for n in range(sessions):
            sid = writer.session(title=f"session {n}")
            writer.part(sid, writer.message(sid, {"role": "user"}), {"type": "text", "text": "x"})
            ids.append(sid)
        return ids
    finally:
        writer.close()


def remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def rename_over(source: Path, path: Path) -> None:
    """Another database moved into place (the way a restore or a sync tool does it)."""
    os.replace(source, path)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def archived_sessions(archive: Path) -> set[str]:
    """Read-only, as a monitoring reader would (opening the archive as a store writes)."""
    if not archive.is_file():
        return set()
    with contextlib.closing(sqlite3.connect(f"{archive.as_uri()}?mode=ro", uri=True)) as conn:
        try:
            return {row[0] for row in conn.execute("SELECT session_id FROM share")}
        except sqlite3.OperationalError:
            return set()  # still being created


class Daemon:
    def __init__(self, process: SyncdProcess, tmp: Path, db: Path, health: str) -> None:
        self.process, self.tmp, self.db, self.health = process, tmp, db, health
        self.archive = tmp / "archive.db"
        self.config = make_config(tmp, db)

    async def delivered(self, *sids: str) -> None:
        async def arrived() -> bool:
            return set(sids) <= await archived_sessions(self.archive)

        await eventually(arrived, f"sessions {sids} in the archive", self.process.log)

    async def health_is(self, status: int) -> dict[str, Any]:
        async def answers() -> bool:
            async with httpx.AsyncClient() as http:
                try:
                    return (await http.get(self.health)).status_code == status
                except httpx.TransportError:
                    return False  # not listening yet (a restart)

        await eventually(answers, f"/health answering {status}", self.process.log)
        async with httpx.AsyncClient() as http:
            return (await http.get(self.health)).json()

    def alive(self) -> None:
        assert self.process.process is not None
        assert self.process.process.returncode is None, self.process.log()


@asynccontextmanager
async def daemon(tmp: Path, db: Path, *settings: str) -> AsyncIterator[Daemon]:
    port = free_port()
    config = tmp / "syncd.toml"
    lines = [f'metrics_address = "127.0.0.1:{port}"', "window = 0.1", "poll_interval = 1.0"]
    config.write_text("\n".join([*lines, *settings]) + "\n")
    args = ["run", "--config", str(config), "--db", str(db), "--state", str(tmp / "state.db"),
            "--archive", str(tmp / "archive.db")]  # fmt: skip
    async with syncd_process(args, isolated_env(tmp), tmp / "syncd.log") as process:
        yield Daemon(process, tmp, db, f"http://127.0.0.1:{port}/health")
        assert await process.terminate() == 0, process.log()
    assert "Traceback" not in process.log()


async def test_every_replacement_is_followed_and_nothing_crashes(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    db = tmp_path / "opencode.db"
    [first] = new_database(db, fixtures_dir)
    async with daemon(tmp_path, db) as syncd:
        await syncd.delivered(first)

        # Deleted, then created again by opencode: the new sessions arrive.
        remove_database(db)
        [recreated] = new_database(db, fixtures_dir)
        await syncd.delivered(recreated)

        # Another database renamed over it.
        [renamed] = new_database(tmp_path / "restored.db", fixtures_dir)
        rename_over(tmp_path / "restored.db", db)
        await syncd.delivered(renamed)
        report = await collect(syncd.config)
        assert any("was replaced while syncd ran" in note for note in report["notices"])
        assert report["healthy"], report["problems"]

        # Truncated to nothing: unhealthy with the reason, running; a database put back heals.
        os.truncate(db, 0)
        health = await syncd.health_is(503)
        assert "opencode database" in health["conditions"]["source"]
        report = await collect(syncd.config)
        assert not report["healthy"] and "missing table session" in " ".join(report["problems"])
        syncd.alive()
        [after_truncation] = new_database(tmp_path / "back.db", fixtures_dir)
        rename_over(tmp_path / "back.db", db)
        await syncd.delivered(after_truncation)
        await syncd.health_is(200)

        # Corrupted in place, then the daemon restarted (by hand, or by a service manager):
        # it starts, waits unhealthy with the reason, and never exits (no restart loop).
        with db.open("r+b") as file:
            file.write(os.urandom(db.stat().st_size))
        assert await syncd.process.terminate() == 0, syncd.process.log()
        await syncd.process.start()
        health = await syncd.health_is(503)
        assert "not an SQLite database" in health["conditions"]["source"]
        syncd.alive()
        [after_corruption] = new_database(tmp_path / "fixed.db", fixtures_dir)
        rename_over(tmp_path / "fixed.db", db)
        await syncd.delivered(after_corruption)
        await syncd.health_is(200)
        assert (await collect(syncd.config))["healthy"]
    replaced = [line for line in syncd.process.log().splitlines() if "while syncd ran" in line]
    # One warning per replacement while running: recreated, renamed over, truncated, put
    # back (the database the restarted daemon first opens is simply its database).
    assert len(replaced) == 4, replaced


async def test_a_recreated_database_deletes_no_remote_copy_without_the_command(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    db = tmp_path / "opencode.db"
    sessions = new_database(db, fixtures_dir, sessions=5)
    async with daemon(tmp_path, db, 'on_delete = "delete"') as syncd:
        await syncd.delivered(*sessions)

        # One session deleted in opencode: its remote copy goes, as configured.
        writer = FakeOpencode(db, fixtures_dir)
        writer.delete_session(sessions[0])
        writer.close()

        async def one_gone() -> bool:
            return sessions[0] not in await archived_sessions(syncd.archive)

        await eventually(one_gone, "the deleted session's remote copy gone", syncd.process.log)

        # The database recreated empty (a new install, a lost disk): every other session
        # vanishes at once. Nothing is deleted remotely; status says why and what to do.
        remove_database(db)
        [fresh] = new_database(db, fixtures_dir)
        await syncd.delivered(fresh)

        async def held() -> bool:
            problems = " ".join((await collect(syncd.config))["problems"])
            return "syncd deletions confirm" in problems

        await eventually(held, "the deletions held back in status", syncd.process.log)
        assert set(sessions[1:]) <= await archived_sessions(syncd.archive)
        health = await syncd.health_is(503)
        assert "4 session(s) vanished" in health["conditions"]["deletions"]

        # The command lets them go ahead; the running daemon deletes the remote copies.
        confirm = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "syncd", "deletions", "confirm", "--db", str(db),
            "--state", str(tmp_path / "state.db"), "--archive", str(syncd.archive),
            env=isolated_env(tmp_path), stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(confirm.communicate(), WAIT_SECONDS)
        assert confirm.returncode == 0 and b"4 deletion(s) confirmed" in out

        async def deleted() -> bool:
            return await archived_sessions(syncd.archive) == {fresh}

        await eventually(deleted, "the confirmed remote copies deleted", syncd.process.log)
        await syncd.health_is(200)
        assert "syncd deletions" not in " ".join((await collect(syncd.config))["problems"])
