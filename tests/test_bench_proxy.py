"""The benchmark's delaying proxy (bench/proxy.py): bytes intact and in order both ways, half a
round trip each way plus a handshake on a new connection, half-closes passed on, bounded, and
gone by itself. The delays are lower bounds the proxy enforces, not speeds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench import proxy
from bench.proxy import DelayProxy, running_link

REPO = Path(__file__).resolve().parent.parent
RTT = 0.1


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echoes until the client half-closes, then closes."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def _proxied_echo(rtt: float) -> AsyncIterator[tuple[DelayProxy, int]]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    delay = DelayProxy(("127.0.0.1", server.sockets[0].getsockname()[1]), rtt)
    port = await delay.start()
    try:
        yield delay, port
    finally:
        await delay.stop()
        server.close()
        await server.wait_closed()


async def test_bytes_cross_intact_with_the_round_trip_and_handshake_added() -> None:
    async with _proxied_echo(RTT) as (delay, port):
        began = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
        # Handshake (one RTT) before the first bytes may leave, then one RTT there and back.
        assert time.monotonic() - began >= 2 * RTT

        began = time.monotonic()
        writer.write(b"pong")
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"pong"
        assert time.monotonic() - began >= RTT  # an open connection: one round trip

        # More than the delay line holds (BUFFER_CHUNKS x CHUNK): back-pressure, not loss.
        payload = os.urandom(proxy.BUFFER_CHUNKS * proxy.CHUNK + 12345)
        echoed = asyncio.create_task(reader.readexactly(len(payload)))
        writer.write(payload)
        await writer.drain()
        assert await asyncio.wait_for(echoed, 30) == payload

        writer.write_eof()  # passed on: the echo server closes, and so does the proxy
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        total = 8 + len(payload)
        assert (delay.counts.connections, delay.counts.bytes_up) == (1, total)
        assert delay.counts.bytes_down == total


async def test_connections_beyond_the_bound_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy, "MAX_CONNECTIONS", 1)
    async with _proxied_echo(0.0) as (delay, port):
        _, first = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.wait_for(_until(lambda: delay.counts.connections == 1), 10)
        second_reader, second = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(second_reader.read(), 10) == b""  # closed at once
        assert delay.counts.refused == 1
        for writer in (first, second):
            writer.close()


async def _until(check: object) -> None:
    while not check():  # type: ignore[operator]
        await asyncio.sleep(0.01)


async def test_as_a_process_it_counts_and_ends_with_its_parent() -> None:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with running_link(url, 20) as link:
            assert link.url != url
            port = int(link.url.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"hello")
            assert await asyncio.wait_for(reader.readexactly(5), 10) == b"hello"
            writer.close()
            counts = await link.counts()
            assert counts is not None and counts["bytes_up"] == counts["bytes_down"] == 5
            process = link._process
        assert process is not None and process.returncode == 0  # stdin closed: it stopped
        async with running_link(url, 0) as direct:  # no round trip: no proxy at all
            assert direct.url == url and await direct.counts() is None
    finally:
        server.close()
        await server.wait_closed()


def test_it_stops_by_itself_at_the_end_of_its_lifetime() -> None:
    began = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.proxy", "--upstream", "127.0.0.1:9", "--rtt-ms", "20",
         "--lifetime", "0.5"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None and b'"port"' in process.stdout.readline()
        assert process.wait(timeout=30) == 0  # stdin still open: the lifetime ended it
        assert time.monotonic() - began >= 0.5
    finally:
        process.kill()
        process.wait()
        assert process.stdin is not None
        process.stdin.close()
        assert process.stdout is not None
        process.stdout.close()


def test_a_malformed_upstream_is_one_line_of_error() -> None:
    ended = subprocess.run(
        [sys.executable, "-m", "bench.proxy", "--upstream", "nowhere", "--rtt-ms", "20"],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert ended.returncode == 2
    assert "expected HOST:PORT" in ended.stderr and "Traceback" not in ended.stderr
