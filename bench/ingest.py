"""`python -m bench.ingest`: how fast a receiver takes batches from many daemons at once, by
archive store: SQLite (one `syncd serve`), PostgreSQL with one replica and with two.

Each receiver is a real `syncd serve --store ...` process on loopback; PostgreSQL is a
throwaway cluster (`tests/support/postgres.py`, durable settings: fsync and synchronous commit
on, as a team would run it). Each "daemon" is syncd's own HTTP transport in this process with
its own connection, sending its sessions as backfill sends them: create the share, then
batches of BATCH_ITEMS parts one after another, each with its batch key. With two replicas
daemon i talks to replica i % 2, as a balancer would spread them.

Figures per (store, replicas, daemons): items acknowledged per second of wall time, and the
p50/p99 of one batch's round trip (request sent to acknowledgement). On 2 cores the load
generator, the receivers and PostgreSQL share the CPU; the figures compare stores on one
machine, they are not a capacity plan.

With `--cpu`, the receiver's CPU per item instead, as the benchmark's backfill phase measures
it (`bench.receiver`: `syncd serve`'s app with the benchmark's instruments, in this process
over SQLite): a sender process (syncd's HTTP transport, CONCURRENCY sessions at a time, as
`syncd sync` sends) posts the sessions of a generated opencode database (`bench.dbgen`), one
batch per session as a backfill sends them, and this process's CPU time (every thread) is
divided by the items acknowledged. `--profile FILE` writes a cProfile (CPU time) of the event
loop's thread; that thread's share of the CPU is reported apart from the others (SQLite's).

    python -m bench.ingest            # full scale, prints a Markdown table
    python -m bench.ingest --quick    # CI scale (bench smoke test)
    python -m bench.ingest --json     # the results on stdout
    python -m bench.ingest --cpu [--sessions 200] [--profile /tmp/ingest.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import resource
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from syncd import jsontext
from syncd.model import Batch, SyncItem
from syncd.source import syncdata
from syncd.source.models import ModelCatalogue
from syncd.transports.http import HttpTransport
from tests.support import FIXTURES
from tests.support.env import free_port, isolated_env
from tests.support.postgres import PostgresCluster, running_postgres

from . import dbgen
from .daemon import REPO
from .receiver import running_receiver
from .stats import percentile

DAEMONS = (1, 4, 16)
SETUPS = (("sqlite", 1), ("postgres", 1), ("postgres", 2))
BATCH_ITEMS = 50
PART_TEXT = "x" * 400  # a typical text part: a few hundred bytes
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class Scale:
    items: int  # per run, shared among the daemons
    sessions_per_daemon: int


FULL = Scale(items=24_000, sessions_per_daemon=4)
QUICK = Scale(items=1_200, sessions_per_daemon=1)


@dataclass
class Figures:
    store: str
    replicas: int
    daemons: int
    items: int
    batches: int
    seconds: float
    items_per_s: float
    p50_ms: float
    p99_ms: float


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def receiver(workdir: Path, name: str, store: str) -> AsyncIterator[str]:
    """A `syncd serve` process over `store`; its base url while the block runs."""
    port = free_port()
    log = (workdir / f"{name}.log").open("w")
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "syncd", "serve", "--port", str(port), "--store", store],
        env=isolated_env(workdir / name),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{url}/api/share")).status_code == 200:
                        break
                if process.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"syncd serve did not start: see {log.name}")
                await asyncio.sleep(0.05)
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 30)
        log.close()


def batches(daemon: int, scale: Scale, daemons: int) -> Iterator[Batch]:
    """One daemon's share of the run: its sessions' parts in batches, session by session."""
    items = scale.items // daemons
    per_session = max(1, items // scale.sessions_per_daemon)
    for session in range(scale.sessions_per_daemon):
        session_id = f"ses_bench{daemon:04}x{session:04}{'0' * 12}"
        parts = [
            {"type": "part", "data": {"id": f"prt_{n:08}", "sessionID": session_id,
                                      "messageID": "msg_1", "type": "text", "text": PART_TEXT}}
            for n in range(per_session)
        ]  # fmt: skip
        for start in range(0, len(parts), BATCH_ITEMS):
            yield Batch(session_id, parts[start : start + BATCH_ITEMS])


async def daemon(url: str, work: list[Batch], latencies: list[float]) -> int:
    transport = HttpTransport(url, timeout=60, verify=True)
    shares = {}
    sent = 0
    try:
        for batch in work:
            if batch.session_id not in shares:
                shares[batch.session_id] = (await transport.create(batch.session_id, None)).share
            started = time.perf_counter()
            await transport.sync(shares[batch.session_id], batch)
            latencies.append(time.perf_counter() - started)
            sent += len(batch.items)
    finally:
        await transport.aclose()
    return sent


async def measure_one(urls: list[str], store: str, daemons: int, scale: Scale) -> Figures:
    latencies: list[float] = []
    work = [list(batches(n, scale, daemons)) for n in range(daemons)]
    started = time.perf_counter()
    sent = await asyncio.gather(
        *(daemon(urls[n % len(urls)], work[n], latencies) for n in range(daemons))
    )
    seconds = time.perf_counter() - started
    return Figures(
        store=store,
        replicas=len(urls),
        daemons=daemons,
        items=sum(sent),
        batches=len(latencies),
        seconds=round(seconds, 3),
        items_per_s=round(sum(sent) / seconds, 1),
        p50_ms=round(percentile(latencies, 0.5) * 1000, 2),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 2),
    )


@contextlib.contextmanager
def durable(cluster: PostgresCluster) -> Iterator[None]:
    """The cluster with a team's durability (the test settings turn it off)."""
    with cluster.admin() as conn:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            conn.execute(f"ALTER SYSTEM SET {setting} = on")
        conn.execute("SELECT pg_reload_conf()")
    yield


async def measure(scale: Scale, workdir: Path) -> list[Figures]:
    results: list[Figures] = []
    with running_postgres() as cluster, durable(cluster):
        for store, replicas in SETUPS:
            for daemons in DAEMONS:
                if store == "sqlite":
                    url = str(workdir / f"sqlite-{daemons}.db")
                else:
                    url = cluster.url(cluster.create_database())
                note(f"ingest: {store} x{replicas}, {daemons} daemon(s)")
                async with contextlib.AsyncExitStack() as stack:
                    urls = [
                        await stack.enter_async_context(
                            receiver(workdir, f"{store}-{daemons}-{n}", url)
                        )
                        for n in range(replicas)
                    ]
                    results.append(await measure_one(urls, store, daemons, scale))
    return results


def markdown(results: list[Figures]) -> str:
    lines = [
        "| store | replicas | daemons | items/s | batch p50 ms | batch p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.store} | {r.replicas} | {r.daemons} | {r.items_per_s:,.0f} | "
            f"{r.p50_ms:g} | {r.p99_ms:g} |"
        )
    return "\n".join(lines)


# -- --cpu: the receiver's CPU per item --------------------------------------------------------

CONCURRENCY = 8  # syncd's default: sessions in flight at once
CPU_FULL = (1000, 200)  # (sessions, parts per session): the benchmark's backfill database
CPU_QUICK = (20, 20)


@dataclass
class CpuFigures:
    sessions: int
    items: int
    seconds: float
    items_per_s: float
    cpu_us_per_item: float  # every thread of the receiver's process
    loop_cpu_us_per_item: float  # the event loop's thread alone (HTTP, routing, checks)


def session_batch(conn: sqlite3.Connection, session_id: str, models: ModelCatalogue) -> Batch:
    """One session whole, as a backfill sends it: its items and their data as JSON text (the
    planner encodes each item once and the HTTP transport builds the body from that)."""
    row = conn.execute("SELECT * FROM session WHERE id = ?", (session_id,)).fetchone()
    items: list[SyncItem] = [
        syncdata.session_item(row),
        syncdata.diff_item(syncdata.session_diffs(row)),
    ]
    refs = set()
    for message in conn.execute("SELECT * FROM message WHERE session_id = ?", (session_id,)):
        items.append(syncdata.message_item(message))
        if ref := syncdata.user_model_ref(items[-1]):
            refs.add(ref)
    items.append(syncdata.model_item([models.describe(*ref) for ref in sorted(refs)]))
    for part in conn.execute("SELECT * FROM part WHERE session_id = ?", (session_id,)):
        items.append(syncdata.part_item(part))
    return Batch(session_id, items, texts=[jsontext.dumps(item["data"]) for item in items])


async def send_sessions(url: str, db: Path, sessions: int) -> int:
    """The sender (`--send`): once told to go on stdin, every session to `url`, CONCURRENCY
    at a time; the items acknowledged."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    ids = [id for (id,) in conn.execute("SELECT id FROM session ORDER BY id LIMIT ?", (sessions,))]
    models = ModelCatalogue(None, None)
    transport = HttpTransport(url, timeout=60, verify=True)
    todo = iter(ids)
    sent = 0

    async def sender() -> None:
        nonlocal sent
        for session_id in todo:
            batch = session_batch(conn, session_id, models)
            share = (await transport.create(session_id, None)).share
            await transport.sync(share, batch)
            sent += len(batch.items)

    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    try:
        await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))
    finally:
        await transport.aclose()
        conn.close()
    return sent


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure_cpu(db: Path, sessions: int, workdir: Path, profile: Path | None) -> CpuFigures:
    async with running_receiver(workdir / "receiver") as receiver:
        receiver.arrivals.reset(track_versions=False)
        sender = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.ingest", "--send", receiver.url, "--db", str(db),
            "--sessions", str(sessions), cwd=REPO,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert sender.stdin is not None and sender.stdout is not None
        try:
            if await asyncio.wait_for(sender.stdout.readline(), START_TIMEOUT) != b"ready\n":
                raise RuntimeError(f"the sender did not start (exit {await sender.wait()})")
            # CPU time, not wall time: waiting for the sender or SQLite's thread is not cost.
            profiler = cProfile.Profile(time.thread_time) if profile is not None else None
            cpu, loop_cpu, started = _cpu_seconds(), time.thread_time(), time.perf_counter()
            if profiler is not None:
                profiler.enable()
            sender.stdin.write(b"go\n")
            answer = await sender.stdout.readline()
            if profiler is not None:
                profiler.disable()
            seconds = time.perf_counter() - started
            cpu, loop_cpu = _cpu_seconds() - cpu, time.thread_time() - loop_cpu
            if await sender.wait() != 0 or not answer:
                raise RuntimeError(f"the sender failed (exit {sender.returncode})")
        finally:
            if sender.returncode is None:
                sender.kill()
                await sender.wait()
        items = receiver.arrivals.items
        if items != json.loads(answer)["items"]:
            raise RuntimeError(f"{json.loads(answer)['items']} items sent, {items} stored")
        if profiler is not None and profile is not None:
            profiler.dump_stats(profile)
        return CpuFigures(
            sessions=sessions,
            items=items,
            seconds=round(seconds, 3),
            items_per_s=round(items / seconds, 1),
            cpu_us_per_item=round(cpu / items * 1e6, 2),
            loop_cpu_us_per_item=round(loop_cpu / items * 1e6, 2),
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI scale (seconds per setup)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--cpu", action="store_true", help="the receiver's CPU per item")
    parser.add_argument("--sessions", type=int, help="with --cpu: send only this many sessions")
    parser.add_argument("--profile", type=Path, help="with --cpu: write a cProfile here")
    parser.add_argument("--send", metavar="URL", help=argparse.SUPPRESS)  # --cpu's sender
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.send:
        print(json.dumps({"items": asyncio.run(send_sessions(args.send, args.db, args.sessions))}))
        return 0
    if args.cpu:
        sessions, parts = CPU_QUICK if args.quick else CPU_FULL
        db = dbgen.cached_database(FIXTURES, sessions, parts)
        with tempfile.TemporaryDirectory(prefix="syncd-ingest-") as tmp:
            figures = asyncio.run(
                measure_cpu(db, args.sessions or sessions, Path(tmp), args.profile)
            )
        print(json.dumps(asdict(figures)) if args.json else figures)
        return 0
    with tempfile.TemporaryDirectory(prefix="syncd-ingest-") as tmp:
        results = asyncio.run(measure(QUICK if args.quick else FULL, Path(tmp)))
    if args.json:
        print(json.dumps({"batch_items": BATCH_ITEMS, "runs": [asdict(r) for r in results]}))
    else:
        print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
