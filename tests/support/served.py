"""`syncd serve` as a real subprocess on a free loopback port, and clients that send their
requests too slowly (tests/test_attacks.py, scripts/slow_clients.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from syncd.wire.keys import KEY_HEADER
from tests.support.env import free_port, isolated_env
from tests.support.syncd_process import SyncdProcess, syncd_process

STARTUP_SECONDS = 30.0


@dataclass
class Served:
    url: str
    archive: Path
    process: SyncdProcess
    key: str | None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def headers(self) -> dict[str, str]:
        return {KEY_HEADER: self.key} if self.key else {}


def toml_value(value: object) -> str:
    return json.dumps(value)  # strings, numbers and booleans are spelled alike in TOML


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, key: str | None = None, **settings: object
) -> AsyncIterator[Served]:
    """`syncd serve` as a subprocess on a free loopback port, answering."""
    home = tmp_path / "serve"
    home.mkdir(mode=0o700)
    config = home / "serve.toml"
    if key is not None:
        settings["key"] = key
    config.write_text("".join(f"{name} = {toml_value(v)}\n" for name, v in settings.items()))
    config.chmod(0o600)
    port = free_port()
    archive = home / "archive.db"
    args = ["serve", "--config", str(config), "--archive", str(archive), "--port", str(port)]
    async with syncd_process(args, isolated_env(tmp_path), home / "serve.log") as process:
        served = Served(f"http://127.0.0.1:{port}", archive, process, key)
        await until_answering(served)
        yield served


async def until_answering(served: Served) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    async with httpx.AsyncClient() as client:
        while True:
            with contextlib.suppress(httpx.TransportError):
                await client.get(f"{served.url}/.well-known/agent-card.json")
                return
            assert served.process.process and served.process.process.returncode is None, (
                served.process.log()
            )
            assert time.monotonic() < deadline, f"serve did not answer\n{served.process.log()}"
            await asyncio.sleep(0.05)


@dataclass
class SlowClient:
    """A connection that sends its request a few bytes at a time, for ever."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    opened: float
    trickle: asyncio.Task[None]
    closed_after: float | None = None

    @classmethod
    async def open(cls, port: int, start: bytes, drip: bytes) -> SlowClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(start)

        async def trickle() -> None:
            with contextlib.suppress(OSError):
                while True:
                    await asyncio.sleep(0.2)
                    writer.write(drip)
                    await writer.drain()

        return cls(reader, writer, time.monotonic(), asyncio.create_task(trickle()))

    async def until_closed(self, bound: float) -> float:
        """Seconds from opening until the server closed the connection (at most `bound`)."""
        with contextlib.suppress(ConnectionError):
            while await asyncio.wait_for(self.reader.read(4096), bound):
                pass
        self.closed_after = time.monotonic() - self.opened
        self.trickle.cancel()
        self.writer.close()
        return self.closed_after
