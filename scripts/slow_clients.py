"""`syncd serve` under slow clients: connections that send their request head or body a few
bytes at a time (slowloris), with the default read deadlines and connection limit, while an
ordinary client keeps asking for the share listing.

Two attacks: fewer slow connections than the limit (the ordinary client must be served
throughout), then more than the limit (it gets 503 until the deadlines drop them).

    python scripts/slow_clients.py [--heads 200] [--bodies 10] [--over 300] [--no-doc]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from syncd.config import Config
from tests.support.served import Served, SlowClient, serving

HEAD = b"GET /api/share HTTP/1.1\r\nHost: x\r\n"
BODY = b"POST /api/share HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
PROBE_INTERVAL = 0.25


async def probe_until(served: Served, done: asyncio.Event) -> list[tuple[float, int, float]]:
    """(seconds since start, status or 0 for no answer, latency) of ordinary requests."""
    probes: list[tuple[float, int, float]] = []
    began = time.monotonic()
    async with httpx.AsyncClient(timeout=10.0) as client:
        while not done.is_set():
            sent = time.monotonic()
            try:
                status = (await client.get(f"{served.url}/api/share")).status_code
            except httpx.HTTPError:
                status = 0
            probes.append((sent - began, status, time.monotonic() - sent))
            await asyncio.sleep(PROBE_INTERVAL)
    return probes


async def attack(
    served: Served, heads: int, bodies: int
) -> tuple[list[float], list[float], list[tuple[float, int, float]]]:
    """Seconds until each slow head and body was dropped, and the ordinary requests meanwhile."""
    slow_heads = [await SlowClient.open(served.port, HEAD, b"X: y\r\n") for _ in range(heads)]
    slow_bodies = [await SlowClient.open(served.port, BODY, b"x") for _ in range(bodies)]
    done = asyncio.Event()
    probing = asyncio.create_task(probe_until(served, done))
    bound = 600.0
    head_waits = await asyncio.gather(*(slow.until_closed(bound) for slow in slow_heads))
    body_waits = await asyncio.gather(*(slow.until_closed(bound) for slow in slow_bodies))
    done.set()
    return list(head_waits), list(body_waits), await probing


def rss_peak_mb(served: Served) -> float:
    assert served.process.process is not None
    status = Path(f"/proc/{served.process.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def spread(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


async def measure(heads: int, bodies: int, over: int) -> dict[str, Any]:
    defaults = Config.__dataclass_fields__
    limit = defaults["serve_max_connections"].default
    with tempfile.TemporaryDirectory() as tmp:
        async with serving(Path(tmp)) as served:
            head_waits, body_waits, probes = await attack(served, heads, bodies)
            under_limit = [latency * 1000 for _, status, latency in probes if status == 200]
            failed_under = sum(1 for _, status, _ in probes if status != 200)
            over_waits, _, over_probes = await attack(served, over, 0)
            refused = [at for at, status, _ in over_probes if status == 503]
            first_served = min(
                (at for at, status, _ in over_probes if status == 200), default=float("nan")
            )
            rss = rss_peak_mb(served)
    return {
        "serve_header_timeout_seconds": defaults["serve_header_timeout"].default,
        "serve_body_timeout_seconds": defaults["serve_body_timeout"].default,
        "serve_max_connections": limit,
        "slow_heads": heads,
        "slow_bodies": bodies,
        "head_dropped_after_seconds_min_median_max": spread(head_waits),
        "body_dropped_after_seconds_min_median_max": spread(body_waits),
        "ordinary_requests_during_attack": len(probes),
        "ordinary_requests_not_served": failed_under,
        "ordinary_latency_ms_median": round(statistics.median(under_limit), 1),
        "ordinary_latency_ms_max": round(max(under_limit), 1),
        "over_limit_slow_heads": over,
        "over_limit_dropped_after_seconds_max": round(max(over_waits), 2),
        "over_limit_ordinary_requests_answered_503": len(refused),
        "over_limit_first_ordinary_request_served_after_seconds": round(first_served, 2),
        "serve_rss_peak_mb": round(rss, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", type=int, default=200)
    parser.add_argument("--bodies", type=int, default=10)
    parser.add_argument("--over", type=int, default=300)
    parser.add_argument("--no-doc", action="store_true", help="print, do not update docs/")
    args = parser.parse_args()
    figures = asyncio.run(measure(args.heads, args.bodies, args.over))
    for name, value in figures.items():
        print(f"{name}: {value}")
    if not args.no_doc:
        from scripts.reliability_doc import update_section

        update_section("slow_clients", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
