"""A delaying TCP proxy on loopback: a network with a round-trip time, for the transport
comparison (what a round trip costs each transport cannot be seen on bare loopback).

Every byte is held for half the round-trip time in each direction, order kept. A new
connection also pays the TCP handshake: a client's first bytes reach the server no earlier than
one and a half round trips after it connected, as on a real network where the client may send
only once the SYN-ACK is back. Bandwidth is not limited and TLS is not modelled (a TLS 1.3
handshake would add one more round trip per new connection, which the connection counts let
the reader add).

Bounded: at most `MAX_CONNECTIONS` connections, `BUFFER_CHUNKS` reads of at most `CHUNK`
bytes held per direction (a full delay line stops reading, and TCP's own flow control pushes
back on the sender), and a lifetime after which it stops by itself.

    python -m bench.proxy --upstream 127.0.0.1:PORT --rtt-ms 20 [--lifetime S]

runs it as its own process (so the receiver's CPU figures and the delays do not share an event
loop): it prints `{"port": N}` once listening, answers each `counts` line on stdin with the
counts as one JSON line, and exits at the end of its lifetime or when stdin closes (its parent
is gone). `running_link` starts one for a receiver and stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

from .daemon import REPO

CHUNK = 64 * 1024
BUFFER_CHUNKS = 64  # per direction: at most 4 MiB in flight each way
MAX_CONNECTIONS = 256
LIFETIME_SECONDS = 3600.0
START_SECONDS = 10.0


@dataclass
class ProxyCounts:
    connections: int = 0  # accepted (= opened to the receiver)
    refused: int = 0  # beyond MAX_CONNECTIONS
    bytes_up: int = 0  # TCP payload, client -> server
    bytes_down: int = 0


class DelayProxy:
    def __init__(self, upstream: tuple[str, int], rtt: float) -> None:
        self.upstream = upstream
        self.rtt = rtt
        self.counts = ProxyCounts()
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen on an ephemeral 127.0.0.1 port; returns it."""
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._links):
            task.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._links) >= MAX_CONNECTIONS:
            self.counts.refused += 1
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        try:
            await self._link(reader, writer)
        finally:
            self._links.discard(task)

    async def _link(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        connected = loop.time()
        self.counts.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        try:
            # A client's bytes leave no earlier than when its handshake would have completed.
            await asyncio.gather(
                self._direction(client_r, server_w, sent_from=connected + self.rtt, up=True),
                self._direction(server_r, client_w, sent_from=connected, up=False),
            )
        finally:
            for writer in (client_w, server_w):
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def _direction(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        *,
        sent_from: float,
        up: bool,
    ) -> None:
        """Copy source to sink, each chunk delivered half a round trip after it was read."""
        loop = asyncio.get_running_loop()
        line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(BUFFER_CHUNKS)

        async def read() -> None:
            try:
                while chunk := await source.read(CHUNK):
                    await line.put((max(loop.time(), sent_from) + self.rtt / 2, chunk))
            except OSError:
                pass  # reset by the peer: deliver what was read, then close
            await line.put((max(loop.time(), sent_from) + self.rtt / 2, b""))

        async def deliver() -> None:
            while True:
                due, chunk = await line.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not chunk:
                    if sink.can_write_eof():
                        with contextlib.suppress(OSError):
                            sink.write_eof()  # half-close, as the sender did
                    return
                if up:
                    self.counts.bytes_up += len(chunk)
                else:
                    self.counts.bytes_down += len(chunk)
                sink.write(chunk)
                try:
                    await sink.drain()
                except OSError:
                    return

        reading = asyncio.create_task(read())
        try:
            await deliver()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading


# -- as a process ------------------------------------------------------------------------------


async def serve(upstream: tuple[str, int], rtt: float, lifetime: float) -> None:
    proxy = DelayProxy(upstream, rtt)
    port = await proxy.start()
    print(json.dumps({"port": port}), flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    async def answer() -> None:
        while line := await stdin.readline():  # EOF: the parent is gone
            if line.strip() == b"counts":
                print(json.dumps(asdict(proxy.counts)), flush=True)

    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(answer(), lifetime)
    finally:
        await proxy.stop()


@dataclass
class Link:
    """The address syncd is given for a receiver, and what crossed it."""

    url: str
    rtt_ms: float
    _process: asyncio.subprocess.Process | None = None

    async def counts(self) -> dict[str, Any] | None:
        """The proxy's counts so far (None on bare loopback)."""
        if self._process is None:
            return None
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(b"counts\n")
        await self._process.stdin.drain()
        line = await asyncio.wait_for(self._process.stdout.readline(), START_SECONDS)
        return dict(json.loads(line))


@contextlib.asynccontextmanager
async def running_link(receiver_url: str, rtt_ms: float) -> AsyncIterator[Link]:
    """`receiver_url` itself at 0 ms; otherwise a delaying proxy in front of it."""
    if rtt_ms <= 0:
        yield Link(receiver_url, 0.0)
        return
    host, port = receiver_url.removeprefix("http://").split(":")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.proxy", "--upstream", f"{host}:{port}",
        "--rtt-ms", str(rtt_ms), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), START_SECONDS)
        if not line:
            raise RuntimeError(f"the delaying proxy did not start (exit {await process.wait()})")
        listening = json.loads(line)["port"]
        yield Link(f"http://127.0.0.1:{listening}", rtt_ms, process)
    finally:
        if process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()  # it stops by itself on EOF
            try:
                await asyncio.wait_for(process.wait(), START_SECONDS)
            except TimeoutError:
                process.kill()
                await process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__)
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT")
    parser.add_argument("--rtt-ms", type=float, required=True)
    parser.add_argument("--lifetime", type=float, default=LIFETIME_SECONDS, metavar="S")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--upstream {args.upstream}: expected HOST:PORT")
    asyncio.run(serve((host, int(port)), args.rtt_ms / 1000, args.lifetime))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
