"""Receivers that try to hang or bloat syncd: a huge Content-Length, an endless answer, an
answer trickled a byte a second, a connection closed under every large body. `syncd sync` (a
real subprocess) stays bounded in memory and in time, both measured here: its peak RSS, from
the kernel (wait4), against a run that meets no receiver at all; its wall time against
`--give-up-after`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from syncd.commands.sync import sync_once
from syncd.errors import UserError
from syncd.state.store import StateStore
from tests.support.archive_check import make_config
from tests.support.env import free_port, isolated_env
from tests.support.fake_opencode import FakeOpencode, one_session_db
from tests.support.receiver import running_receiver

GIVE_UP_AFTER = 3.0
MEMORY_GROWTH_LIMIT = 100 * 1024 * 1024
SHARE_ANSWER = (
    b'{"id":"shr_hostile","secret":"s-hostile-secret","url":"http://x/share/shr_hostile"}'
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@dataclass
class Hostile:
    """A raw HTTP/1.1 server on loopback whose answers `handle` writes (given the request's
    Content-Length); a handler keeps the bodies it read whole in `bodies`."""

    handle: Handler
    url: str = ""
    bodies: list[bytes] = field(default_factory=list)


async def read_request(reader: asyncio.StreamReader) -> int:
    """Reads a request's head; its Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return next((int(line.split(":")[1]) for line in lines
                 if line.lower().startswith("content-length:")), 0)  # fmt: skip


@contextlib.contextmanager
def hostile_server(handle: Handler) -> Iterator[Hostile]:
    hostile = Hostile(handle)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()
    handlers: set[asyncio.Task[None]] = set()
    port = free_port()

    async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        with contextlib.suppress(Exception):
            while not writer.is_closing():
                await hostile.handle(reader, writer, await read_request(reader))
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve_one, "127.0.0.1", port)
        started.set()
        await stop.wait()
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    started.wait(10)
    hostile.url = f"http://127.0.0.1:{port}"
    try:
        yield hostile
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


async def answer(writer: asyncio.StreamWriter, body: bytes, status: str = "200 OK") -> None:
    writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()


def endless(head: bytes, chunk: bytes) -> Handler:
    """An answer that never ends: `head`, then `chunk` after `chunk` as fast as it goes."""

    async def handle(reader, writer, length) -> None:  # type: ignore[no-untyped-def]
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\n" + head + b"\r\n\r\n")
        while True:
            writer.write(chunk)
            await writer.drain()

    return handle


ZEROS = b"0" * 65536
huge_content_length = endless(b"Content-Length: 3000000000", ZEROS)
endless_chunks = endless(b"Transfer-Encoding: chunked", b"10000\r\n" + ZEROS + b"\r\n")


async def trickle(reader, writer, length) -> None:  # type: ignore[no-untyped-def]
    await reader.readexactly(length)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    while True:
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(1.0)


def sync_process(tmp: Path, url: str, *settings: str) -> tuple[float, int, str, int]:
    """`syncd sync` against `url`: wall seconds, peak RSS in bytes, stderr, exit code."""
    config = tmp / "syncd.toml"
    config.write_text("\n".join(["backoff_max = 0.5", *settings]) + "\n")
    args = [sys.executable, "-m", "syncd", "sync", "--config", str(config),
            "--db", str(tmp / "opencode.db"), "--state", str(tmp / "state.db"), "--url", url,
            "--transport", "http", "--sessions", "all",
            "--give-up-after", str(GIVE_UP_AFTER)]  # fmt: skip
    started = time.monotonic()
    with (tmp / "sync.log").open("w+") as log:
        process = subprocess.Popen(args, env=isolated_env(tmp), stdout=log, stderr=log)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.monotonic() - started
        log.seek(0)
        output = log.read()
    return elapsed, usage.ru_maxrss * 1024, output, process.returncode


@pytest.fixture
def opencode_db(tmp_path: Path, fixtures_dir: Path) -> Path:
    return one_session_db(tmp_path / "opencode.db", fixtures_dir)


@pytest.fixture(scope="module")
def baseline_rss(tmp_path_factory: pytest.TempPathFactory, fixtures_dir: Path) -> int:
    """Peak RSS of the same sync against a port where nothing listens."""
    tmp = tmp_path_factory.mktemp("baseline")
    FakeOpencode(tmp / "opencode.db", fixtures_dir).close()
    _, rss, _, _ = sync_process(tmp, f"http://127.0.0.1:{free_port()}")
    return rss


@pytest.mark.parametrize(
    ("name", "handle", "settings"),
    [
        ("3 GB Content-Length", huge_content_length, ()),
        ("endless chunked answer", endless_chunks, ()),
        ("answer trickled a byte a second", trickle, ("request_timeout = 1.0",)),
    ],
)
def test_a_hostile_answer_bounds_memory_and_time(
    tmp_path: Path, opencode_db: Path, baseline_rss: int, name: str, handle: Handler,
    settings: tuple[str, ...],
) -> None:  # fmt: skip
    with hostile_server(handle) as hostile:
        elapsed, rss, output, code = sync_process(tmp_path, hostile.url, *settings)
    assert code == 1, output
    assert "not delivered" in output and "Traceback" not in output
    print(f"{name}: {elapsed:.2f}s, peak RSS {rss >> 20} MiB (baseline {baseline_rss >> 20} MiB)")
    assert rss - baseline_rss < MEMORY_GROWTH_LIMIT, f"{name}: {rss - baseline_rss} bytes more"
    assert elapsed < 3 * GIVE_UP_AFTER, f"{name}: {elapsed:.1f}s"


def test_a_connection_closed_under_large_bodies_dead_letters_only_the_large_item(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """A receiver that drops the connection rather than read a body over 1 MB: the batch is
    sent in halves until the small items pass; the large part alone is dead-lettered."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user"})
    small = [writer.part(sid, mid, {"type": "text", "text": f"small {n}"}) for n in range(4)]
    large = writer.part(sid, mid, {"type": "text", "text": "x" * (3 * 1024 * 1024)})
    writer.close()

    async def drop_large(reader, writer, length) -> None:  # type: ignore[no-untyped-def]
        if length > 1024 * 1024:
            writer.transport.abort()  # unread, as a server refusing the size does
            return
        body = await reader.readexactly(length)
        hostile.bodies.append(body)
        await answer(writer, SHARE_ANSWER if b'"sessionID"' in body else b"{}")

    with hostile_server(drop_large) as hostile:
        elapsed, _, output, code = sync_process(tmp_path, hostile.url)
    assert code == 1 and "1 item(s) dead-lettered" in output, output
    assert elapsed < 3 * GIVE_UP_AFTER
    letters = asyncio.run(_letters(tmp_path / "state.db"))
    assert [letter["item_id"] for letter in letters] == [large]
    assert "larger than the receiver accepts" in letters[0]["reason"]
    sent = [item for body in hostile.bodies for item in json.loads(body).get("data", [])]
    assert {item["data"]["id"] for item in sent if item["type"] == "part"} == set(small)


async def _letters(state_path: Path) -> list:
    state = await StateStore.open_readonly(state_path)
    try:
        return await state.dead_letters()
    finally:
        await state.close()


@pytest.mark.parametrize("transport", ["http", "capnweb-batch", "capnweb-ws"])
async def test_a_batch_over_the_receivers_limit_is_halved_and_the_big_item_dead_lettered(
    tmp_path: Path, fixtures_dir: Path, transport: str
) -> None:
    """`syncd serve` refuses bodies (and WebSocket messages) over its limit with 413 (1009):
    the batch goes again in halves; the one item over the limit alone is dead-lettered,
    naming the limit, and everything else of the session is delivered."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user"})
    small = [writer.part(sid, mid, {"type": "text", "text": "s" * 300_000}) for _ in range(6)]
    large = writer.part(sid, mid, {"type": "text", "text": "x" * (2 * 1024 * 1024)})
    after = writer.part(sid, mid, {"type": "text", "text": "written after the large one"})
    writer.close()
    async with running_receiver(tmp_path, max_body=1024 * 1024) as receiver:
        config = make_config(tmp_path, writer.path, url=receiver.url, transport=transport,
                             sessions="all")  # fmt: skip
        with pytest.raises(UserError, match=r"1 item\(s\) dead-lettered"):
            await sync_once(config, give_up_after=30)
        [share] = await receiver.store.list_shares()
        parts = {p["id"] for p in (await receiver.store.read_share(share["id"]))["parts"]}
    assert parts == {*small, after}
    [letter] = await _letters(tmp_path / "state.db")
    assert letter["item_id"] == large
    assert "larger than" in letter["reason"] and "1048576" in letter["reason"], letter
