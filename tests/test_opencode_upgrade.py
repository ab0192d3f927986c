"""`syncd run` while opencode changes under it: an older release upgraded in place to 1.18.33
(the real releases, driven headless), a schema syncd cannot read (the daemon stays up and
unhealthy, then delivers once it can read it), a diff file written after its row, the JSON
era followed live."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.archive_check import archived_copies
from tests.support.env import eventually, free_port, isolated_env
from tests.support.expected import database_snapshot, receiver_differences
from tests.support.fake_llm import FakeLlm, Turn
from tests.support.fake_opencode import FakeOpencode
from tests.support.opencode_driver import (
    OLD_RELEASE,
    Opencode,
    old_opencode_binary,
    opencode_binary,
)
from tests.support.opencode_releases import (
    FIXTURES,
    install_home,
    mismatches,
    own_share,
)
from tests.support.syncd_process import syncd_process


async def run_opencode(opencode: Opencode, fake_llm: FakeLlm, n: int, *args: str) -> None:
    """One headless run writing f{n}.txt, off the event loop."""
    fake_llm.turn = Turn(
        file_name=f"f{n}.txt", reply=" ".join(f"run{n}-word{i}" for i in range(40))
    )
    await asyncio.to_thread(opencode.run, f"please write the file f{n}.txt", *args)


def differences(opencode: Opencode, copies: dict[str, dict[str, Any]]) -> list[str]:
    """How the archive differs from opencode's database (sessions, messages, parts field by
    field) and from its diff files (a session's diffs kept in storage/ by releases <= 1.15)."""
    expected = database_snapshot(opencode.db_path)
    found = (
        [f"sessions {sorted(set(expected) ^ set(copies))}"] if set(expected) != set(copies) else []
    )
    for session_id, want in expected.items():
        copy = copies.get(session_id)
        if copy is None:
            continue
        share = {**copy, "messages": list(copy["messages"].values()),
                 "parts": list(copy["parts"].values())}  # fmt: skip
        found += receiver_differences(want, share)
        diff_file = (
            opencode.data_dir / "opencode" / "storage" / "session_diff" / f"{session_id}.json"
        )
        if diff_file.exists() and copy["diffs"] != json.loads(diff_file.read_text()):
            found.append(f"{session_id}: diffs differ from {diff_file.name}")
    return found


@pytest.mark.e2e
async def test_an_older_release_upgraded_in_place_under_a_running_daemon(
    tmp_path: Path, fake_llm: FakeLlm, opencode_cache: Path
) -> None:
    fake_llm.tool_call_delay = 1.0  # the write lands after opencode's step snapshot: a diff
    opencode = Opencode(
        tmp_path / "opencode", fake_llm.url, cache_dir=opencode_cache, binary=old_opencode_binary()
    )
    opencode.init_git_project()
    opencode.init_db()
    archive = tmp_path / "archive.db"
    config_file = tmp_path / "syncd.toml"
    config_file.write_text("poll_interval = 1.0\nwindow = 0.2\n")
    args = ["run", "--config", str(config_file), "--db", str(opencode.db_path),
            "--state", str(tmp_path / "state.db"), "--archive", str(archive)]  # fmt: skip
    async with syncd_process(args, isolated_env(tmp_path), tmp_path / "syncd.log") as syncd:

        async def complete() -> bool:
            return not differences(opencode, await archived_copies(archive))

        # opencode 1.3.2: no journal, no path/agent/model/cost/tokens, diffs in files.
        await run_opencode(opencode, fake_llm, 0)
        await eventually(complete, f"opencode {OLD_RELEASE}'s sessions delivered", syncd.log)
        old = await archived_copies(archive)
        assert len(old) == 1 and all(copy["diffs"] for copy in old.values())
        assert all("tokens" not in copy["session"] for copy in old.values())

        # The same home, upgraded in place: 1.18.33 migrates the database (columns and journal
        # tables added) under the running daemon, continues the older session, starts one.
        opencode.binary = opencode_binary()
        await run_opencode(opencode, fake_llm, 2, "--continue")
        await run_opencode(opencode, fake_llm, 3)
        await eventually(complete, "every session delivered after the upgrade", syncd.log)
        assert await syncd.terminate() == 0
    copies = await archived_copies(archive)
    assert differences(opencode, copies) == []
    versions = sorted(copy["session"]["version"] for copy in copies.values())
    assert versions == sorted([OLD_RELEASE, "1.18.33"])
    newest = next(c for c in copies.values() if c["session"]["version"] == "1.18.33")
    assert "tokens" in newest["session"] and newest["session"]["agent"] == "build"
    continued = [c for c in copies.values() if len(c["messages"]) > 3]
    assert len(continued) == 1 and continued[0]["session"]["version"] == OLD_RELEASE


async def test_an_unreadable_schema_holds_delivery_not_the_daemon(tmp_path: Path) -> None:
    release = "1.15.13"  # table watermarks and diffs in files: the most the source must do
    db = install_home(release, tmp_path / "home")
    archive = tmp_path / "archive.db"
    future = sqlite3.connect(db)  # a newer opencode that keeps its parts elsewhere
    future.execute("ALTER TABLE part RENAME TO part_v2")
    future.commit()
    port = free_port()
    config_file = tmp_path / "syncd.toml"
    config_file.write_text(f'metrics_address = "127.0.0.1:{port}"\npoll_interval = 1.0\n')
    args = ["run", "--config", str(config_file), "--db", str(db),
            "--state", str(tmp_path / "state.db"), "--archive", str(archive)]  # fmt: skip
    health = f"http://127.0.0.1:{port}/health"
    async with (
        syncd_process(args, isolated_env(tmp_path), tmp_path / "syncd.log") as syncd,
        httpx.AsyncClient() as http,
    ):

        async def unhealthy() -> bool:
            try:
                answer = await http.get(health)
            except httpx.TransportError:
                return False
            return answer.status_code == 503 and "missing table part " in str(answer.json())

        await eventually(unhealthy, "/health naming the missing table", syncd.log)
        assert syncd.process is not None and syncd.process.returncode is None
        assert "missing table part (a newer opencode? upgrade syncd)" in syncd.log()
        assert await archived_copies(archive) == {}

        future.execute("ALTER TABLE part_v2 RENAME TO part")  # opencode, or syncd, upgraded
        future.commit()

        async def healthy_and_complete() -> bool:
            if (await http.get(health)).status_code != 200:
                return False
            return not mismatches(release, await archived_copies(archive), db.parent / "storage")

        await eventually(healthy_and_complete, "every session delivered", syncd.log)
        assert await syncd.terminate() == 0
    future.close()


async def test_a_diff_file_written_after_its_row_is_delivered_on_its_file_event(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """opencode <= 1.15 writes a session's diff file after its row: the file's event alone
    gets it delivered, long before the safety poll."""
    data = tmp_path / "home" / ".local" / "share" / "opencode"
    data.mkdir(parents=True)
    writer = FakeOpencode(data / "opencode.db", fixtures_dir, journal=False)
    session_id = writer.session()
    archive = tmp_path / "archive.db"
    config_file = tmp_path / "syncd.toml"
    config_file.write_text("poll_interval = 600.0\nwindow = 0.1\n")  # no poll in this test
    args = ["run", "--config", str(config_file), "--db", str(writer.path),
            "--state", str(tmp_path / "state.db"), "--archive", str(archive)]  # fmt: skip
    diffs = [{"file": "f0.txt", "patch": "+x\n", "additions": 1, "deletions": 0,
              "status": "added"}]  # fmt: skip
    async with syncd_process(args, isolated_env(tmp_path), tmp_path / "syncd.log") as syncd:

        async def delivered(want: list[dict[str, Any]]) -> bool:
            copy = (await archived_copies(archive)).get(session_id)
            return copy is not None and copy["diffs"] == want

        await eventually(lambda: delivered([]), "the session delivered", syncd.log)
        # The storage folder appears only now, as in a fresh opencode home.
        (data / "storage" / "session_diff").mkdir(parents=True)
        (data / "storage" / "session_diff" / f"{session_id}.json").write_text(json.dumps(diffs))
        await eventually(lambda: delivered(diffs), "the diff delivered", syncd.log)
        assert await syncd.terminate() == 0
    writer.close()


async def test_the_json_era_is_followed_live_until_opencode_creates_its_database(
    tmp_path: Path,
) -> None:
    """opencode 1.1.65's JSON sessions under `syncd run` with no database: delivered without
    waiting for one, a session written later delivered on its file events; then a database
    appears (an upgrade importing them, as 1.2 to 1.15 do) and its sessions are delivered."""
    home = tmp_path / "home"
    db = install_home("1.1.65", home)
    storage = db.parent / "storage"
    later = sorted(own_share("1.1.65"))[-1]
    held = tmp_path / "held"
    for path in sorted(storage.rglob("*.json")):
        # The later session's files (each names the session) wait outside the home.
        if later in path.read_text() or later in path.name:
            target = held / path.relative_to(storage)
            target.parent.mkdir(parents=True, exist_ok=True)
            path.rename(target)
    archive = tmp_path / "archive.db"
    config_file = tmp_path / "syncd.toml"
    config_file.write_text("poll_interval = 600.0\nwindow = 0.1\n")  # file events only
    args = ["run", "--config", str(config_file), "--db", str(db),
            "--state", str(tmp_path / "state.db"), "--archive", str(archive)]  # fmt: skip
    async with syncd_process(args, isolated_env(tmp_path), tmp_path / "syncd.log") as syncd:

        async def sessions() -> set[str]:
            return set(await archived_copies(archive))

        async def first_delivered() -> bool:
            return await sessions() == set(own_share("1.1.65")) - {later}

        await eventually(first_delivered, "the JSON sessions delivered", syncd.log)
        for path in sorted(held.rglob("*.json")):
            target = storage / path.relative_to(held)
            target.parent.mkdir(parents=True, exist_ok=True)
            path.rename(target)

        async def complete() -> bool:
            return not mismatches("1.1.65", await archived_copies(archive), storage)

        await eventually(complete, "the later JSON session delivered", syncd.log)
        shutil.copy(FIXTURES / "1.3.2" / "opencode.db", db)

        async def with_database() -> bool:
            return await sessions() >= set(own_share("1.3.2")) | set(own_share("1.1.65"))

        await eventually(with_database, "the new database's sessions delivered", syncd.log)
        assert await syncd.terminate() == 0
