"""A team's receiver: two `syncd serve` replicas on one PostgreSQL database behind a load
balancer, several daemons (one per transport) pushing through both, and one replica killed
(SIGKILL) mid-run. Every session must be complete when read back through the other replica,
no batch applied twice, nothing dead-lettered."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.support.balancer import balancing
from tests.support.env import free_port, isolated_env
from tests.support.expected import assert_receiver_matches, database_snapshot
from tests.support.fake_opencode import FakeOpencode
from tests.support.postgres import PostgresCluster
from tests.support.syncd_process import (
    SyncdProcess,
    state_dead_letters,
    state_shares,
    syncd_process,
)

TRANSPORTS = ("http", "capnweb-batch", "capnweb-ws", "a2a")
SESSIONS_PER_DAEMON = 4
PARTS_PER_SESSION = 40
# Small batches: many requests, so the kill lands in the middle of the run.
BATCH_MAX_ITEMS = 3
RUN_TIMEOUT = 180.0


def opencode_database(path: Path, fixtures_dir: Path) -> Path:
    writer = FakeOpencode(path, fixtures_dir)
    try:
        for n in range(SESSIONS_PER_DAEMON):
            session = writer.session(title=f"session {n} of {path.stem}")
            message = writer.message(session, {"role": "assistant", "time": {"created": n}})
            for p in range(PARTS_PER_SESSION):
                writer.part(session, message, {"type": "text", "text": f"part {p} " * 20})
    finally:
        writer.close()
    return path


@contextlib.asynccontextmanager
async def replica(tmp_path: Path, name: str, store: str) -> AsyncIterator[tuple[SyncdProcess, str]]:
    """`syncd serve` on its own port over `store`, answering before the block starts."""
    port = free_port()
    args = ["serve", "--port", str(port), "--store", store]
    env = isolated_env(tmp_path / name)
    async with syncd_process(args, env, tmp_path / f"{name}.log") as process:
        address = f"127.0.0.1:{port}"
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if (await client.get(f"http://{address}/api/share")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.process is not None and process.process.returncode is None, (
                    process.log()
                )
                assert time.monotonic() < deadline, f"{name} did not start\n{process.log()}"
                await asyncio.sleep(0.05)
        yield process, address


def applied_batches(store: str) -> int:
    with psycopg.connect(store) as conn:
        row = conn.execute("SELECT count(*) FROM share_sync").fetchone()
    return int(row[0]) if row else 0


async def read_through(address: str, share_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=30) as client:
        answer = await client.get(f"/api/share/{share_id}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())


async def test_two_replicas_one_killed_mid_run_lose_nothing(
    tmp_path: Path, fixtures_dir: Path, postgres: PostgresCluster, postgres_url: str
) -> None:
    sources = {
        transport: opencode_database(tmp_path / f"opencode-{transport}.db", fixtures_dir)
        for transport in TRANSPORTS
    }
    config = tmp_path / "syncd.toml"
    config.write_text(f"batch_max_items = {BATCH_MAX_ITEMS}\nbackoff_max = 2.0\n")
    async with (
        replica(tmp_path, "replica-a", postgres_url) as (doomed, doomed_address),
        replica(tmp_path, "replica-b", postgres_url) as (survivor, survivor_address),
        balancing([doomed_address, survivor_address]) as url,
    ):
        daemons = [
            await asyncio.create_subprocess_exec(
                *[sys.executable, "-m", "syncd", "sync", "--config", str(config)],
                *["--db", str(db), "--state", str(tmp_path / f"state-{transport}.db")],
                *["--url", url, "--transport", transport, "--sessions", "all"],
                env=isolated_env(tmp_path / transport),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            for transport, db in sources.items()
        ]
        try:
            # Kill one replica once a fair share of the batches has landed: requests are in
            # flight through it, some applied without their answer reaching the daemon.
            deadline = time.monotonic() + RUN_TIMEOUT
            while applied_batches(postgres_url) < 60:
                assert time.monotonic() < deadline, "the daemons never got going"
                assert all(d.returncode is None for d in daemons), "finished before the kill"
                await asyncio.sleep(0.02)
            await doomed.kill()
            at_kill = applied_batches(postgres_url)
            outputs = await asyncio.wait_for(
                asyncio.gather(*(d.communicate() for d in daemons)), RUN_TIMEOUT
            )
        finally:
            for daemon in daemons:
                if daemon.returncode is None:
                    daemon.kill()
                    await daemon.wait()
        for transport, daemon, (output, _) in zip(TRANSPORTS, daemons, outputs, strict=True):
            assert daemon.returncode == 0, f"{transport}: {output.decode()[-3000:]}"

        for transport, db in sources.items():
            state = tmp_path / f"state-{transport}.db"
            assert state_dead_letters(state) == [], transport
            expected = database_snapshot(db)
            shares = state_shares(state)
            assert set(shares) == set(expected), transport
            for session_id, share_id in shares.items():
                if transport == "a2a":  # A2A names the session; the receiver keeps its share
                    share_id = await newest_share(survivor_address, session_id)
                share = await read_through(survivor_address, share_id)
                assert_receiver_matches(expected[session_id], share)
        assert survivor.process is not None and survivor.process.returncode is None
        for process in (doomed, survivor):
            # (the harness's own first line repeats the command line, password included)
            said = [line for line in process.log().splitlines() if not line.startswith("---")]
            assert any("serving" in line for line in said)
            assert not [line for line in said if postgres.password in line]
        # The kill landed mid-run: the survivor took the rest.
        assert applied_batches(postgres_url) > at_kill

    # Nothing applied twice: each share took as many syncs as it holds distinct batch keys
    # (plus, over capnweb, the keyless initial data of createShare).
    with psycopg.connect(postgres_url) as conn:
        counts = conn.execute(
            "SELECT s.id, s.sync_count, count(k.dedup_key) FROM share s "
            "LEFT JOIN share_sync k ON k.share_id = s.id GROUP BY s.id, s.sync_count"
        ).fetchall()
    assert counts and all(0 <= synced - keys <= 1 for _, synced, keys in counts), counts


async def newest_share(address: str, session_id: str) -> str:
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        listing = (await client.get("/api/share")).json()["shares"]
    matching = [row for row in listing if row["session_id"] == session_id]
    assert matching, f"no share of {session_id}: {json.dumps(listing)[:500]}"
    return str(matching[0]["id"])
