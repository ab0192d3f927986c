"""`python -m bench`: measure syncd on loopback and write results.json and results.md.

Progress goes to stderr; `--json` prints the results document on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from tests.support import FIXTURES

from . import dbgen, phases, publish, report
from .daemon import REPO
from .phases import FULL, QUICK, note

# Each transport: its client module and class, and the receiver module serving it.
TRANSPORTS: dict[str, tuple[str, str, str]] = {
    "http": ("syncd.transports.http", "HttpTransport", "syncd.receiver.rest"),
    "capnweb-batch": ("syncd.transports.capnweb", "CapnwebBatchTransport", "syncd.receiver.rpc"),
    "capnweb-ws": ("syncd.transports.capnweb", "CapnwebWsTransport", "syncd.receiver.rpc"),
    "a2a": ("syncd.transports.a2a", "A2aTransport", "syncd.receiver.a2a"),
}
PHASES = ("live", "backfill", "archive", "batches", "idle")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI scale (about a minute)")
    parser.add_argument("--json", action="store_true", help="print the results JSON on stdout")
    parser.add_argument(
        "--transports",
        default=",".join(TRANSPORTS),
        help="comma-separated; those not in the tree yet are skipped with a note",
    )
    parser.add_argument(
        "--replay",
        type=Path,
        metavar="DB",
        help="replay this opencode database's journal as the live workload",
    )
    parser.add_argument("--phases", default=",".join(PHASES), help="subset of " + ",".join(PHASES))
    parser.add_argument(
        "--rtt",
        metavar="MS,...",
        help="round-trip times (ms) to measure through a delaying proxy besides bare loopback "
        "(every phase but idle); default 20,80 (--quick: 20); 0 for none",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write results.json and results.md here (default: bench/ for a full run, "
        "nowhere for --quick)",
    )
    args = parser.parse_args(argv)
    wanted_phases = [p for p in args.phases.split(",") if p]
    unknown = set(wanted_phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(sorted(unknown))}; choose from {PHASES}")
    transports, skipped = available_transports([t for t in args.transports.split(",") if t])
    for name, why in skipped.items():
        note(f"skipping transport {name}: {why}")
    if not transports:
        parser.error("no transport left to measure")
    if args.replay is not None and not args.replay.is_file():
        parser.error(f"--replay {args.replay}: no such database")
    scale = QUICK if args.quick else FULL
    if args.rtt is not None:
        try:
            rtts = tuple(float(ms) for ms in args.rtt.split(",") if ms.strip())
        except ValueError:
            parser.error(f"--rtt {args.rtt}: expected milliseconds, comma-separated")
        scale = replace(scale, rtts_ms=tuple(ms for ms in rtts if ms > 0))
    default_out = publish.REPLAY_DIR if args.replay else publish.RESULTS_DIR
    out = args.out or (None if args.quick else default_out)
    results = asyncio.run(measure(args, transports, skipped, wanted_phases, scale))
    text = json.dumps(_finite(results), indent=2)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(text + "\n")
        (out / "results.md").write_text(report.markdown(results))
        note(f"wrote {out / 'results.json'} and {out / 'results.md'}")
        if out.resolve() == default_out.resolve():
            note(f"updated the figures in {', '.join(publish.publish())}")
    if args.json:
        print(text)
    else:
        print(report.markdown(results))
    return 0


def available_transports(names: list[str]) -> tuple[list[str], dict[str, str]]:
    chosen: list[str] = []
    skipped: dict[str, str] = {}
    for name in names:
        if name not in TRANSPORTS:
            skipped[name] = f"unknown; known: {', '.join(TRANSPORTS)}"
            continue
        client, cls, server = TRANSPORTS[name]
        try:
            getattr(importlib.import_module(client), cls)
            importlib.import_module(server)
        except (ImportError, AttributeError) as error:
            skipped[name] = f"not importable yet ({error})"
            continue
        chosen.append(name)
    return chosen, skipped


async def measure(
    args: argparse.Namespace,
    transports: list[str],
    skipped: dict[str, str],
    wanted: list[str],
    scale: phases.Scale,
) -> dict[str, Any]:
    fixtures_dir = FIXTURES
    results: dict[str, Any] = {
        "meta": _meta(args, scale, skipped),
        "transports": {name: {} for name in transports},
    }
    began = time.perf_counter()
    note(f"preparing generated databases (cached under {dbgen.CACHE_DIR})")
    big, small = phases.cached_databases(fixtures_dir, scale)
    raw = dbgen.raw_read_rate(big)
    results["raw_read"] = raw
    note(f"raw read+parse: {raw['rows_per_s']:,.0f} rows/s")
    with tempfile.TemporaryDirectory(prefix="syncd-bench-") as tmp:
        workdir = Path(tmp)
        replay = _replay_copy(args.replay, workdir) if args.replay else None
        if "archive" in wanted:  # next to the raw read it is compared with
            await _phase(
                results,
                "archive",
                "local",
                phases.archive_backfill(workdir / "archive", big, scale),
            )
        for rtt_ms in (0.0, *scale.rtts_ms):
            network = f"rtt{rtt_ms:g}"
            # Bare loopback keeps the place it always had; each round-trip time gets its own.
            measured_here = (
                results["transports"]
                if rtt_ms == 0
                else results.setdefault("rtt", {}).setdefault(f"{rtt_ms:g}", {})
            )
            for name in transports:
                measured = measured_here.setdefault(name, {})
                label = name if rtt_ms == 0 else f"{name} at {rtt_ms:g} ms RTT"
                here = workdir / network / name
                if "live" in wanted:
                    await _phase(
                        measured,
                        "live",
                        label,
                        phases.live(here / "live", fixtures_dir, name, scale, replay, rtt_ms),
                    )
                    if "error" not in measured["live"]:
                        measured.update(measured.pop("live"))
                # Both are `syncd sync` over a database: big sessions, or many small ones.
                for phase, database in (("backfill", big), ("batches", small)):
                    if phase in wanted:
                        work = phases.backfill(here / phase, database, name, scale, rtt_ms)
                        await _phase(measured, phase, label, work)
        if "idle" in wanted:
            note(f"idle: {', '.join(transports)} side by side for {scale.idle_seconds:g} s")
            for name, figures in (
                await phases.idle(workdir / "idle", fixtures_dir, transports, scale)
            ).items():
                results["transports"][name]["idle"] = figures
    results["meta"]["seconds"] = time.perf_counter() - began
    results["meta"]["load_average_at_end"] = os.getloadavg()[0]
    results["headline"] = report.headline(results)
    return results


async def _phase(measured: dict[str, Any], phase: str, transport: str, work: Any) -> None:
    note(f"{transport}: {phase}")
    try:
        measured[phase] = await work
    except Exception as error:  # one broken transport or phase must not hide the others
        note(f"{transport}: {phase} failed: {error}")
        measured[phase] = {"error": str(error)}


def _replay_copy(source: Path, workdir: Path) -> Path:
    """A WAL database can only be read where its -shm can be written: read a copy."""
    target = workdir / "replay"
    target.mkdir()
    for path in source.parent.glob(source.name + "*"):
        if path.name in (source.name, f"{source.name}-wal", f"{source.name}-shm"):
            shutil.copy(path, target / path.name)
    return target / source.name


def _meta(args: argparse.Namespace, scale: phases.Scale, skipped: dict[str, str]) -> dict:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "syncd"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    workload = f"replay of {args.replay.name}" if args.replay else "synthetic (bench/writer.py)"
    return {
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "commit": (commit or "unknown") + (" with uncommitted changes in syncd/" if dirty else ""),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": _cores(),
        "python": platform.python_version(),
        "workload": workload,
        # Other work on the machine skews every figure: recorded, not corrected for.
        "load_average_at_start": os.getloadavg()[0],
        "scale": asdict(scale),
        "skipped_transports": skipped,
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def _finite(value: Any) -> Any:
    """NaN (a figure that could not be measured) as JSON null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


if __name__ == "__main__":
    raise SystemExit(main())
