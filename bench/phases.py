"""The measurements, each on a fresh receiver and fresh syncd state."""

from __future__ import annotations

import asyncio
import json
import math
import resource
import shutil
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.support.fake_opencode import FakeOpencode

from . import dbgen
from .daemon import REPO, Daemon, Setup, running_daemon, sync_once
from .proxy import Link, running_link
from .receiver import Receiver, running_receiver
from .stats import Write, acknowledgement_delays, percentile

SETTLE_SECONDS = 60.0  # longest wait for a workload's last versions to be acknowledged


@dataclass(frozen=True)
class Scale:
    window: float
    lifecycle_sessions: int
    lifecycle_updates: int
    steady_sessions: int
    steady_rate: float
    steady_seconds: float
    backfill_sessions: int
    backfill_parts: int
    batch_sessions: int
    idle_seconds: float
    replay_max_gap: float
    quiet: float  # wait after the last expected arrival, for stragglers
    rtts_ms: tuple[float, ...]  # round-trip times measured besides bare loopback


FULL = Scale(
    window=1.0,
    lifecycle_sessions=10,
    lifecycle_updates=5,
    steady_sessions=8,
    steady_rate=40,
    steady_seconds=30,
    backfill_sessions=1000,
    backfill_parts=200,
    batch_sessions=2000,
    idle_seconds=60,
    replay_max_gap=2.0,
    quiet=3.0,
    rtts_ms=(20, 80),
)
QUICK = Scale(
    window=0.5,
    lifecycle_sessions=3,
    lifecycle_updates=3,
    steady_sessions=6,
    steady_rate=50,
    steady_seconds=4,
    backfill_sessions=20,
    backfill_parts=20,
    batch_sessions=50,
    idle_seconds=8,
    replay_max_gap=0.5,
    quiet=1.0,
    rtts_ms=(20,),
)


def note(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


class PhaseError(Exception):
    pass


# -- live: `syncd run` following a writer ------------------------------------------------------


async def live(
    workdir: Path,
    fixtures_dir: Path,
    transport: str,
    scale: Scale,
    replay: Path | None,
    rtt_ms: float = 0.0,
) -> dict[str, Any]:
    """Requests and bytes per session lifecycle, change-to-acknowledgement latency and the
    first data of new sessions, against one `syncd run` (`rtt_ms` away from its receiver).
    With `replay`, one replayed database supplies all of them."""
    workdir.mkdir(parents=True)
    db = workdir / "opencode.db"
    FakeOpencode(db, fixtures_dir).close()
    async with (
        running_receiver(workdir / "receiver") as receiver,
        running_link(receiver.url, rtt_ms) as link,
    ):
        setup = Setup(workdir / "syncd", db, link.url, transport, scale.window)
        async with running_daemon(setup) as daemon:
            await _probe(db, fixtures_dir, receiver, daemon)
            run = _WorkloadRunner(workdir, db, fixtures_dir, receiver, link, daemon, scale.quiet)
            if replay is not None:
                spec = {
                    "workload": "replay",
                    "source": str(replay),
                    "max_gap": scale.replay_max_gap,
                }
                replayed = await run(spec)
                return {
                    "lifecycle": replayed.traffic_per_session(),
                    "latency": replayed.latency(scale),
                    "new_session": new_session_figures([replayed], scale),
                }
            spec = {
                "workload": "lifecycle",
                "sessions": scale.lifecycle_sessions,
                "updates": scale.lifecycle_updates,
                "gap": scale.window * 1.5,
            }
            lifecycle = await run(spec)
            spec = {
                "workload": "steady",
                "sessions": scale.steady_sessions,
                "rate": scale.steady_rate,
                "seconds": scale.steady_seconds,
            }
            steady = await run(spec)
            return {
                "lifecycle": lifecycle.traffic_per_session(),
                "latency": steady.latency(scale),
                "new_session": new_session_figures([lifecycle, steady], scale),
            }


async def _probe(db: Path, fixtures_dir: Path, receiver: Receiver, daemon: Daemon) -> None:
    """One session through the whole path: the daemon is up and its connection is open."""
    opencode = FakeOpencode(db, fixtures_dir)
    try:
        opencode.session("probe")
    finally:
        opencode.close()
    await _until(lambda: receiver.arrivals.batches > 0, daemon, "the probe session to arrive")


@dataclass
class WorkloadRun:
    sessions: int
    writes: list[Write]
    births: dict[str, float]  # session id -> when the writer committed its row
    arrivals: list[Write]
    first_arrivals: dict[str, float]  # session id -> its first acknowledged batch
    traffic: dict[str, int]
    wire: dict[str, int] | None  # the delaying proxy's counts (None on bare loopback)
    batches: int

    def traffic_per_session(self) -> dict[str, float]:
        per = {name: value / self.sessions for name, value in self.traffic.items()}
        wire = {f"tcp_{name}": value / self.sessions for name, value in (self.wire or {}).items()
                if name.startswith("bytes")}  # fmt: skip
        return {
            "sessions": self.sessions,
            "batches_per_session": self.batches / self.sessions,
            **per,
            **wire,
        }

    def latency(self, scale: Scale) -> dict[str, float]:
        delays, missing = acknowledgement_delays(self.writes, self.arrivals)
        beyond = [delay - scale.window for delay in delays]
        return {
            "samples": len(delays),
            "missing": missing,
            "window_s": scale.window,
            "p50_beyond_window_ms": percentile(beyond, 0.50) * 1000,
            "p99_beyond_window_ms": percentile(beyond, 0.99) * 1000,
            "max_beyond_window_ms": max(beyond, default=float("nan")) * 1000,
            "p50_total_ms": percentile(delays, 0.50) * 1000,
            "p99_total_ms": percentile(delays, 0.99) * 1000,
        }


def new_session_figures(runs: list[WorkloadRun], scale: Scale) -> dict[str, float]:
    """A new session's first data: from the commit of its row to the acknowledgement of its
    first batch (share created and data stored), minus the window that batch waited."""
    beyond = [
        run.first_arrivals[session_id] - born - scale.window
        for run in runs
        for session_id, born in run.births.items()
        if session_id in run.first_arrivals
    ]
    return {
        "samples": len(beyond),
        "missing": sum(len(run.births) for run in runs) - len(beyond),
        "p50_beyond_window_ms": percentile(beyond, 0.50) * 1000,
        "max_beyond_window_ms": max(beyond, default=float("nan")) * 1000,
    }


@dataclass
class _WorkloadRunner:
    """Runs one writer workload against the live daemon and collects what arrived."""

    workdir: Path
    db: Path
    fixtures_dir: Path
    receiver: Receiver
    link: Link
    daemon: Daemon
    quiet: float

    async def __call__(self, spec: dict[str, Any]) -> WorkloadRun:
        name, receiver = spec["workload"], self.receiver
        spec_file = self.workdir / f"{name}.spec.json"
        out = self.workdir / f"{name}.writes.jsonl"
        spec_file.write_text(
            json.dumps({**spec, "db": str(self.db), "fixtures_dir": str(self.fixtures_dir)})
        )
        receiver.traffic.reset()
        receiver.arrivals.reset(track_versions=True)
        wire_before = await self.link.counts()
        sessions_before = _sessions_in(self.db)
        writer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.writer", str(spec_file), str(out), cwd=REPO
        )
        try:
            if await writer.wait() != 0:
                raise PhaseError(f"the {name} writer failed (exit {writer.returncode})")
        finally:
            if writer.returncode is None:
                writer.kill()
                await writer.wait()
        logged = [tuple(json.loads(line)) for line in out.read_text().splitlines()]
        births: dict[str, float] = {}
        for kind, item_id, _, at in logged:
            if kind == "session":
                births.setdefault(item_id, at)  # a replay rewrites the row; the first counts
        writes: list[Write] = [w for w in logged if w[0] != "session"]  # type: ignore[misc]
        final = {(kind, item_id): digest for kind, item_id, digest, _ in writes}

        def delivered() -> bool:
            seen = {
                (kind, item_id, digest) for kind, item_id, digest, _ in receiver.arrivals.versions
            }
            return all((kind, item_id, digest) in seen for (kind, item_id), digest in final.items())

        await _until(
            delivered, self.daemon, f"the {name} workload's last versions", quiet=self.quiet
        )
        arrivals = receiver.arrivals
        return WorkloadRun(
            sessions=max(1, _sessions_in(self.db) - sessions_before),
            writes=writes,
            births=births,
            arrivals=list(arrivals.versions),
            first_arrivals=dict(arrivals.sessions_first),
            traffic=asdict(receiver.traffic.reset()),
            wire=_difference(await self.link.counts(), wire_before),
            batches=arrivals.batches,
        )


def _difference(
    after: dict[str, int] | None, before: dict[str, int] | None
) -> dict[str, int] | None:
    if after is None or before is None:
        return None
    return {name: after[name] - before[name] for name in after}


def _sessions_in(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM session").fetchone()[0])
    finally:
        conn.close()


async def _until(check: Any, daemon: Daemon, what: str, *, quiet: float = 0.0) -> None:
    deadline = time.monotonic() + SETTLE_SECONDS
    while not check():
        daemon.check_alive()
        if time.monotonic() > deadline:
            raise PhaseError(f"timed out waiting for {what}; syncd log: {daemon.tail()}")
        await asyncio.sleep(0.05)
    await asyncio.sleep(quiet)  # stragglers (a trailing batch) count too


# -- backfill: `syncd sync` over a generated database ------------------------------------------


async def backfill(
    workdir: Path, db: Path, transport: str, scale: Scale, rtt_ms: float = 0.0
) -> dict[str, Any]:
    async with (
        running_receiver(workdir / "receiver") as receiver,
        running_link(receiver.url, rtt_ms) as link,
    ):
        receiver.arrivals.reset(track_versions=False)
        receiver.traffic.reset()
        setup = Setup(workdir / "syncd", db, link.url, transport, scale.window)
        own_before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.time()
        run = await sync_once(setup)
        own_after = resource.getrusage(resource.RUSAGE_SELF)
        if run.exit_code != 0:
            raise PhaseError(f"syncd sync exited with {run.exit_code}: {run.log}")
        arrivals, traffic = receiver.arrivals, receiver.traffic.counts
        receiver_cpu = (own_after.ru_utime - own_before.ru_utime) + (
            own_after.ru_stime - own_before.ru_stime
        )
        wire = await link.counts()
        figures = {
            "items": arrivals.items,
            "batches": arrivals.batches,
            "requests": traffic.requests + traffic.frames_up,
            "connections": traffic.connections,
            "seconds": run.seconds,
            "items_per_s": arrivals.items / run.seconds,
            # Before the first acknowledgement: start-up and capturing what is pending.
            "first_ack_after_s": (arrivals.first or math.nan) - started,
            "delivery_items_per_s": arrivals.items / _span(arrivals.first, arrivals.last),
            "batches_per_s": arrivals.batches / run.seconds,
            "syncd_cpu_s": run.cpu_seconds,
            "syncd_max_rss_mb": run.max_rss_mb,
            "receiver_cpu_s": receiver_cpu,
            # Includes the instruments around the receiver (cheap: counters, no hashing here).
            "receiver_cpu_us_per_item": receiver_cpu / max(arrivals.items, 1) * 1e6,
        }
        if wire is not None:  # what crossed the delaying proxy, framing included
            figures.update(tcp_bytes_up=wire["bytes_up"], tcp_bytes_down=wire["bytes_down"])
        return figures


async def archive_backfill(workdir: Path, db: Path, scale: Scale) -> dict[str, Any]:
    """`syncd sync` into the embedded archive (transport `local`): no receiver, no wire, so
    what remains is syncd's own work from opencode's rows to the archive's."""
    setup = Setup(workdir / "syncd", db, "", "local", scale.window)
    run = await sync_once(setup)
    if run.exit_code != 0:
        raise PhaseError(f"syncd sync exited with {run.exit_code}: {run.log}")
    conn = sqlite3.connect(f"file:{setup.archive}?mode=ro", uri=True)
    try:
        items = int(conn.execute("SELECT count(*) FROM share_item").fetchone()[0])
    finally:
        conn.close()
    return {
        "items": items,
        "seconds": run.seconds,
        "items_per_s": items / run.seconds,
        "syncd_cpu_s": run.cpu_seconds,
        "syncd_max_rss_mb": run.max_rss_mb,
    }


def _span(first: float | None, last: float | None) -> float:
    return last - first if first is not None and last is not None and last > first else math.nan


# -- idle: `syncd run` over a database nobody touches ------------------------------------------


async def idle(
    workdir: Path, fixtures_dir: Path, transports: list[str], scale: Scale
) -> dict[str, dict[str, Any]]:
    """One daemon per transport side by side, each on its own copy of the sample database,
    after its initial delivery has settled."""
    results: dict[str, dict[str, Any]] = {}

    async def one(transport: str) -> None:
        home = workdir / transport
        home.mkdir(parents=True)
        for source in (fixtures_dir / "opencode").glob("sample-1.18.33.db*"):
            shutil.copy(source, home / source.name)
        async with running_receiver(home / "receiver") as receiver:
            setup = Setup(
                home / "syncd", home / "sample-1.18.33.db", receiver.url, transport, scale.window
            )
            async with running_daemon(setup) as daemon:
                sessions = _sessions_in(setup.db)
                await _until(
                    lambda: receiver.arrivals.batches >= sessions,
                    daemon,
                    "the sample's initial delivery",
                    quiet=scale.quiet,
                )
                settled = receiver.arrivals.batches
                cpu_before, began = daemon.cpu_seconds(), time.monotonic()
                rss = [daemon.rss_mb()]
                while time.monotonic() - began < scale.idle_seconds:
                    await asyncio.sleep(1.0)
                    daemon.check_alive()
                    rss.append(daemon.rss_mb())
                elapsed = time.monotonic() - began
                cpu = daemon.cpu_seconds() - cpu_before
                results[transport] = {
                    "seconds": elapsed,
                    "cpu_percent": 100 * cpu / elapsed,
                    "rss_mb": rss[-1],
                    "rss_max_mb": max(rss),
                    "batches_while_idle": receiver.arrivals.batches - settled,
                }

    outcomes = await asyncio.gather(*(one(t) for t in transports), return_exceptions=True)
    for transport, outcome in zip(transports, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            results[transport] = {"error": str(outcome)}
    return results


def cached_databases(fixtures_dir: Path, scale: Scale) -> tuple[Path, Path]:
    """(backfill database, many-small-sessions database)."""
    big = dbgen.cached_database(fixtures_dir, scale.backfill_sessions, scale.backfill_parts)
    small = dbgen.cached_database(fixtures_dir, scale.batch_sessions, 4)
    return big, small
