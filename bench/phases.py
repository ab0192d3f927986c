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
from .receiver import Receiver, running_receiver
from .stats import acknowledgement_delays, percentile

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
)


def note(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


class PhaseError(Exception):
    pass


# -- live: `syncd run` following a writer ------------------------------------------------------


async def live(
    workdir: Path, fixtures_dir: Path, transport: str, scale: Scale, replay: Path | None
) -> dict[str, Any]:
    """Requests and bytes per session lifecycle, and change-to-acknowledgement latency, against
    one `syncd run`. With `replay`, one replayed database supplies both."""
    workdir.mkdir(parents=True)
    db = workdir / "opencode.db"
    FakeOpencode(db, fixtures_dir).close()
    async with running_receiver(workdir / "receiver") as receiver:
        setup = Setup(workdir / "syncd", db, receiver.url, transport, scale.window)
        async with running_daemon(setup) as daemon:
            await _probe(db, fixtures_dir, receiver, daemon)
            if replay is not None:
                spec = {
                    "workload": "replay",
                    "source": str(replay),
                    "max_gap": scale.replay_max_gap,
                }
                run = await _workload(
                    workdir, db, fixtures_dir, spec, receiver, daemon, scale.quiet
                )
                return {"lifecycle": run.traffic_per_session(), "latency": run.latency(scale)}
            spec = {
                "workload": "lifecycle",
                "sessions": scale.lifecycle_sessions,
                "updates": scale.lifecycle_updates,
                "gap": scale.window * 1.5,
            }
            lifecycle = await _workload(
                workdir, db, fixtures_dir, spec, receiver, daemon, scale.quiet
            )
            spec = {
                "workload": "steady",
                "sessions": scale.steady_sessions,
                "rate": scale.steady_rate,
                "seconds": scale.steady_seconds,
            }
            steady = await _workload(workdir, db, fixtures_dir, spec, receiver, daemon, scale.quiet)
            return {"lifecycle": lifecycle.traffic_per_session(), "latency": steady.latency(scale)}


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
    writes: list[tuple[str, str, str, float]]
    arrivals: list[tuple[str, str, str, float]]
    traffic: dict[str, int]
    batches: int

    def traffic_per_session(self) -> dict[str, float]:
        per = {name: value / self.sessions for name, value in self.traffic.items()}
        return {
            "sessions": self.sessions,
            "batches_per_session": self.batches / self.sessions,
            **per,
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


async def _workload(
    workdir: Path,
    db: Path,
    fixtures_dir: Path,
    spec: dict[str, Any],
    receiver: Receiver,
    daemon: Daemon,
    quiet: float,
) -> WorkloadRun:
    name = spec["workload"]
    spec_file, out = workdir / f"{name}.spec.json", workdir / f"{name}.writes.jsonl"
    spec_file.write_text(json.dumps({**spec, "db": str(db), "fixtures_dir": str(fixtures_dir)}))
    receiver.traffic.reset()
    receiver.arrivals.reset(track_versions=True)
    sessions_before = _sessions_in(db)
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
    writes = [tuple(json.loads(line)) for line in out.read_text().splitlines()]
    final = {(kind, item_id): digest for kind, item_id, digest, _ in writes}

    def delivered() -> bool:
        seen = {(kind, item_id, digest) for kind, item_id, digest, _ in receiver.arrivals.versions}
        return all((kind, item_id, digest) in seen for (kind, item_id), digest in final.items())

    await _until(delivered, daemon, f"the {name} workload's last versions", quiet=quiet)
    arrivals = receiver.arrivals
    return WorkloadRun(
        sessions=max(1, _sessions_in(db) - sessions_before),
        writes=writes,  # type: ignore[arg-type]
        arrivals=list(arrivals.versions),
        traffic=asdict(receiver.traffic.reset()),
        batches=arrivals.batches,
    )


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


async def backfill(workdir: Path, db: Path, transport: str, scale: Scale) -> dict[str, Any]:
    async with running_receiver(workdir / "receiver") as receiver:
        receiver.arrivals.reset(track_versions=False)
        receiver.traffic.reset()
        setup = Setup(workdir / "syncd", db, receiver.url, transport, scale.window)
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
        return {
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
            "receiver_cpu_s": receiver_cpu,
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
