"""`syncd run` while opencode changes under it: a schema it cannot read (the daemon stays up
and unhealthy, then delivers once it can read it)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx

from tests.support.env import eventually, free_port, isolated_env
from tests.support.opencode_releases import archived_copies, install_home, mismatches
from tests.support.syncd_process import syncd_process


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
