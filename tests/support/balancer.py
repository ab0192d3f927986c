"""A TCP load balancer on loopback, as a team puts one (or its TLS proxy) in front of several
`syncd serve` replicas: each new connection goes to the next replica in turn, and to the one
after it when that one refuses. A connection lives and dies with its replica.

    async with balancing(["127.0.0.1:4001", "127.0.0.1:4002"]) as url: ...
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

CONNECT_TIMEOUT = 5.0


class Balancer:
    def __init__(self, upstreams: list[tuple[str, int]]) -> None:
        self.upstreams = upstreams
        self.connections: dict[tuple[str, int], int] = dict.fromkeys(upstreams, 0)
        self._turn = itertools.cycle(range(len(upstreams)))
        self._tasks: set[asyncio.Task[None]] = set()

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        first = next(self._turn)
        for offset in range(len(self.upstreams)):
            upstream = self.upstreams[(first + offset) % len(self.upstreams)]
            try:
                opened = await asyncio.wait_for(asyncio.open_connection(*upstream), CONNECT_TIMEOUT)
            except (OSError, TimeoutError):
                continue
            self.connections[upstream] += 1
            return opened
        return None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            upstream = await self._open_upstream()
            if upstream is None:
                return  # no replica answers: the client sees the connection close
            up_reader, up_writer = upstream
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        finally:
            writer.close()
            self._tasks.discard(task)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until either side goes away, then close the sink (the other direction ends too)."""
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        sink.close()


@contextlib.asynccontextmanager
async def balancing(upstreams: list[str]) -> AsyncIterator[str]:
    """The balancer's url (http://127.0.0.1:port) while the block runs."""
    balancer = Balancer([(host, int(port)) for host, port in (u.split(":") for u in upstreams)])
    server = await asyncio.start_server(balancer.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await balancer.close()
        await server.wait_closed()
