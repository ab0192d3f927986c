"""`syncd run` as a service manager and a monitoring system see it (a real subprocess):
sd_notify on a real datagram socket, /metrics parsed by Prometheus' own parser while a real
receiver accepts, fails and refuses, and /health."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from syncd.archive.sqlite import SqliteArchive as ShareStore
from tests.support.env import WAIT_SECONDS, eventually, free_port, isolated_env
from tests.support.fake_opencode import FakeOpencode
from tests.support.receiver import running_receiver
from tests.support.syncd_process import syncd_process

# -- sd_notify --------------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.setblocking(False)
    yield sock, path
    sock.close()


async def receive(sock: socket.socket, timeout: float = WAIT_SECONDS) -> str:
    loop = asyncio.get_running_loop()
    return (await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout)).decode()


async def test_sd_notify_ready_after_open_watchdog_reload_and_stopping(
    tmp_path: Path, fixtures_dir: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    writer.session()
    state = tmp_path / "state.db"
    env = isolated_env(tmp_path, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
    args = ["run", "--db", str(writer.path), "--state", str(state),
            "--archive", str(tmp_path / "archive.db")]  # fmt: skip
    async with syncd_process(args, env, tmp_path / "syncd.log") as syncd:
        first = await receive(sock)
        assert first == "READY=1", syncd.log()
        # Ready means open: the state database exists and is migrated.
        assert state.is_file()
        # Pings keep coming from the event loop, each with a STATUS line.
        pings = [await receive(sock) for _ in range(4)]
        for ping in pings:
            lines = ping.split("\n")
            assert "WATCHDOG=1" in lines, ping
            assert lines[0].startswith("STATUS=") and "pending" in lines[0], ping

        assert syncd.process is not None
        syncd.process.send_signal(signal.SIGHUP)
        after_hangup = [await receive(sock) for _ in range(6)]
        reloading = next(i for i, m in enumerate(after_hangup) if m.startswith("RELOADING=1"))
        assert "MONOTONIC_USEC=" in after_hangup[reloading]
        assert "READY=1" in after_hangup[reloading + 1 :], after_hangup

        syncd.process.send_signal(signal.SIGTERM)
        rest: list[str] = []
        while "STOPPING=1" not in rest:
            rest.append(await receive(sock))
        assert await asyncio.wait_for(syncd.process.wait(), WAIT_SECONDS) == 0, syncd.log()
    assert "READY=1" not in rest  # nothing claims readiness again while stopping
    writer.close()


# -- /metrics and /health ---------------------------------------------------------------------


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, through Prometheus' own text parser."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_waiting_for_the_database_is_ready_and_pings_the_watchdog(
    tmp_path: Path, fixtures_dir: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    """Installed before opencode's first run: started (no restart loop under systemd), the
    watchdog fed while it waits, and the sessions delivered once opencode creates its db."""
    sock, path = notify_socket
    db = tmp_path / "opencode.db"
    archive = tmp_path / "archive.db"
    env = isolated_env(tmp_path, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
    args = ["run", "--db", str(db), "--state", str(tmp_path / "state.db"),
            "--archive", str(archive)]  # fmt: skip
    async with syncd_process(args, env, tmp_path / "syncd.log") as syncd:
        first = await receive(sock)
        assert first.startswith("READY=1") and "waiting for the opencode database" in first
        pings = [await receive(sock) for _ in range(3)]
        assert all("WATCHDOG=1" in ping and "waiting" in ping for ping in pings), pings
        writer = FakeOpencode(db, fixtures_dir)
        sid = writer.session()

        async def archived() -> bool:
            if not archive.is_file():
                return False
            store = await ShareStore.open(archive)
            try:
                return [s["session_id"] for s in await store.list_shares()] == [sid]
            finally:
                await store.close()

        await eventually(archived, "the session in the archive", syncd.log)
        assert await syncd.terminate() == 0
        writer.close()


async def test_metrics_and_health_follow_a_run(tmp_path: Path, fixtures_dir: Path) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    port = free_port()
    config = tmp_path / "syncd.toml"
    config.write_text(
        f'metrics_address = "127.0.0.1:{port}"\nwindow = 0.1\nbackoff_max = 0.2\n'
        # The safety poll backs up file events (metrics are what this test is about).
        "health_max_failures = 3\nhealth_period = 60.0\npoll_interval = 2.0\n"
    )
    endpoint = f"http://127.0.0.1:{port}"
    async with running_receiver(tmp_path) as receiver, httpx.AsyncClient() as http:
        args = ["run", "--config", str(config), "--db", str(writer.path),
                "--state", str(tmp_path / "state.db"), "--url", receiver.url,
                "--transport", "http", "--sessions", "all"]  # fmt: skip
        async with syncd_process(args, isolated_env(tmp_path), tmp_path / "syncd.log") as syncd:

            async def scrape() -> dict:
                answer = await http.get(f"{endpoint}/metrics")
                assert answer.status_code == 200
                assert answer.headers["content-type"].startswith("text/plain")
                return parse_metrics(answer.text)

            async def up() -> bool:
                try:
                    return (await http.get(f"{endpoint}/health")).status_code == 200
                except httpx.TransportError:
                    return False

            async def first_read_done() -> bool:
                return value(await scrape(), "syncd_source_reads_total") >= 1

            await eventually(up, "the metrics endpoint", syncd.log)
            # Ready comes before the first look at the database; that look is counted.
            await eventually(first_read_done, "the first read of the database", syncd.log)
            before = await scrape()
            assert value(before, "syncd_items_sent_total", transport="http") == 0
            assert value(before, "syncd_pending_items") == 0

            # Delivered: a session, a message, two parts.
            sid = writer.session()
            mid = writer.message(sid, {"role": "assistant", "time": {"created": 1}})
            writer.part(sid, mid, {"type": "text", "text": "one"})
            part = writer.part(sid, mid, {"type": "text", "text": "two"})

            def sent(n: int) -> Callable[[], Awaitable[bool]]:
                async def check() -> bool:
                    samples = await scrape()
                    return value(samples, "syncd_items_sent_total", transport="http") >= n

                return check

            await eventually(sent(4), "4 items sent", syncd.log)
            delivered = await scrape()
            assert value(delivered, "syncd_items_sent_total", transport="http") == 4
            assert value(delivered, "syncd_batches_sent_total", transport="http") >= 1
            assert value(delivered, "syncd_bytes_sent_total", transport="http") > 100
            latency = "syncd_request_duration_seconds_count"
            assert value(delivered, latency, transport="http", operation="create") == 1
            assert value(delivered, "syncd_source_wakeups_total", cause="file") >= 1
            assert value(delivered, "syncd_source_rows_read_total") > 0
            assert value(delivered, "syncd_pending_items") == 0
            assert value(delivered, "syncd_oldest_pending_age_seconds") == 0

            # `syncd status` reads the state safely while the daemon runs.
            status = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "syncd", "status", "--json", *args[1:],
                env=isolated_env(tmp_path), stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(status.communicate(), WAIT_SECONDS)
            assert status.returncode == 0
            report = json.loads(out)
            assert [s["state"] for s in report["sessions"]] == ["delivered"]

            # The receiver fails: retries count, the item stays pending and ages, and /health
            # turns unhealthy after 3 consecutive failures.
            await receiver.faults.status(503)
            writer.part(sid, mid, {"type": "text", "text": "two, longer"}, part_id=part)

            async def unhealthy() -> bool:
                return (await http.get(f"{endpoint}/health")).status_code == 503

            await eventually(unhealthy, "/health to turn unhealthy", syncd.log)
            health = (await http.get(f"{endpoint}/health")).json()
            assert health["status"] == "unhealthy" and health["consecutive_failures"] >= 3
            assert "503" in health["last_error"]
            failing = await scrape()
            assert value(failing, "syncd_batches_retried_total", transport="http") >= 3
            assert value(failing, "syncd_pending_items") == 1
            assert value(failing, "syncd_oldest_pending_age_seconds") > 0

            # Back: delivered, healthy, nothing pending.
            await receiver.faults.ok()
            await eventually(sent(5), "the pending part sent", syncd.log)
            await eventually(up, "/health to be healthy again", syncd.log)
            assert value(await scrape(), "syncd_pending_items") == 0

            # Refused: dead-lettered.
            await receiver.faults.status(400)
            writer.part(sid, mid, {"type": "text", "text": "refused"})

            async def dead_lettered() -> bool:
                return value(await scrape(), "syncd_items_dead_lettered_total") >= 1

            await eventually(dead_lettered, "a dead letter", syncd.log)
            assert await syncd.terminate() == 0, syncd.log()
    writer.close()


async def test_metrics_address_in_use_is_a_user_error(tmp_path: Path, fixtures_dir: Path) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "syncd.toml"
        config.write_text(f'metrics_address = "127.0.0.1:{port}"\n')
        state, archive = str(tmp_path / "state.db"), str(tmp_path / "a.db")
        args = ["run", "--config", str(config), "--db", str(writer.path),
                "--state", state, "--archive", archive]  # fmt: skip
        async with syncd_process(args, isolated_env(tmp_path), tmp_path / "syncd.log") as syncd:
            assert syncd.process is not None
            assert await asyncio.wait_for(syncd.process.wait(), WAIT_SECONDS) == 2
    assert f"cannot listen on metrics_address 127.0.0.1:{port}" in syncd.log()
    assert "Traceback" not in syncd.log()
    writer.close()
