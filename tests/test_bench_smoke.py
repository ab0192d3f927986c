"""The benchmark still runs and still measures everything (figures are not judged here:
timings belong to bench/, not to tests)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

PER_TRANSPORT = {
    "lifecycle": ("batches_per_session", "requests", "frames_up", "bytes_up", "bytes_down"),
    "latency": ("samples", "p50_beyond_window_ms", "p99_beyond_window_ms", "p50_total_ms"),
    "new_session": ("samples", "p50_beyond_window_ms", "max_beyond_window_ms"),
    "backfill": ("items", "items_per_s", "first_ack_after_s", "syncd_cpu_s",
                 "syncd_max_rss_mb", "receiver_cpu_us_per_item"),
    "batches": ("batches", "batches_per_s"),
}  # fmt: skip
IDLE = ("cpu_percent", "rss_mb", "rss_max_mb")
HEADLINE = (
    "latency_p50_beyond_window_ms",
    "latency_p99_beyond_window_ms",
    "archive_backfill_items_per_s",
    "raw_read_rows_per_s",
    "archive_share_of_raw",
    "receiver_cpu_us_per_item",
    "idle_cpu_percent",
    "idle_rss_mb",
)
QUICK_RTT_MS = 20


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def bench_json(module: str, *args: str, timeout: float) -> Any:
    """What `python -m module --json *args` prints, once it has exited 0."""
    run = subprocess.run(
        [sys.executable, "-m", module, "--json", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def test_quick_benchmark_measures_every_figure(tmp_path: Path) -> None:
    results = bench_json(
        "bench", "--quick", "--out", str(tmp_path), "--rtt", str(QUICK_RTT_MS), timeout=900
    )
    assert "http" in results["transports"], results["meta"]["skipped_transports"]
    networks = {"loopback": results["transports"], "rtt": results["rtt"][str(QUICK_RTT_MS)]}
    assert set(networks["rtt"]) == set(results["transports"])
    for network, transports in networks.items():
        for transport, measured in transports.items():
            where = (network, transport)
            assert "error" not in measured.get("live", {}), (where, measured)
            for phase, names in PER_TRANSPORT.items():
                figures = measured.get(phase, {})
                assert "error" not in figures, (where, phase, figures)
                for name in names:
                    assert is_number(figures.get(name)), (where, phase, name, figures)
            # Every write the workload committed was acknowledged, none lost.
            assert measured["latency"]["samples"] > 0 and measured["latency"]["missing"] == 0
            assert measured["new_session"]["missing"] == 0, (where, measured["new_session"])
            assert measured["backfill"]["items"] > 0
            if network == "loopback":
                assert all(is_number(measured["idle"].get(name)) for name in IDLE), where
            else:
                # The delaying proxy was in the path: it carried the traffic, and a new
                # session's first data cannot beat one round trip past its window.
                assert measured["lifecycle"]["tcp_bytes_up"] > 0, (where, measured["lifecycle"])
                assert measured["backfill"]["tcp_bytes_up"] > 0, (where, measured["backfill"])
                assert measured["new_session"]["p50_beyond_window_ms"] >= QUICK_RTT_MS, where
    assert results["archive"]["items"] == results["transports"]["http"]["backfill"]["items"]
    for name in HEADLINE:
        assert is_number(results["headline"][name]), (name, results["headline"])
    assert is_number(results["raw_read"]["rows_per_s"])
    report = (tmp_path / "results.md").read_text()
    assert all(f"| `{transport}` |" in report for transport in results["transports"])
    assert f"| {QUICK_RTT_MS} ms | `http` |" in report


def test_transport_comparison_command_runs_on_the_recorded_workload(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """The command behind docs/transports.md, at CI scale: a real opencode database replayed
    through every transport, each write acknowledged, every figure measured."""
    sample = fixtures_dir / "opencode" / "sample-1.18.33.db"
    results = bench_json(
        "bench", "--quick", "--out", str(tmp_path), "--replay", str(sample),
        "--phases", "live", "--rtt", "0", timeout=900,
    )  # fmt: skip
    assert set(results["transports"]) == {"http", "capnweb-batch", "capnweb-ws", "a2a"}
    for transport, measured in results["transports"].items():
        assert "error" not in measured.get("live", {}), (transport, measured)
        for name in PER_TRANSPORT["lifecycle"]:
            assert is_number(measured["lifecycle"][name]), (transport, name)
        assert measured["latency"]["samples"] > 0 and measured["latency"]["missing"] == 0


def test_ingest_benchmark_measures_every_store_and_concurrency() -> None:
    """`python -m bench.ingest` (behind docs/team-receiver.md) at CI scale: SQLite and
    PostgreSQL with one and two replicas, 1, 4 and 16 daemons, every batch acknowledged."""
    runs = bench_json("bench.ingest", "--quick", timeout=600)["runs"]
    setups = {(r["store"], r["replicas"], r["daemons"]) for r in runs}
    assert setups == {
        (store, replicas, daemons)
        for store, replicas in (("sqlite", 1), ("postgres", 1), ("postgres", 2))
        for daemons in (1, 4, 16)
    }
    for figures in runs:
        assert figures["items"] > 0 and figures["batches"] > 0, figures
        for name in ("items_per_s", "p50_ms", "p99_ms"):
            assert is_number(figures[name]), (name, figures)


def test_ingest_benchmark_measures_receiver_cpu_per_item(tmp_path: Path) -> None:
    """`python -m bench.ingest --cpu` at CI scale: every session of the generated database
    (20 sessions x 20 parts) acknowledged by the benchmark's receiver, its CPU per item
    measured and a profile written."""
    profile = tmp_path / "ingest.prof"
    figures = bench_json("bench.ingest", "--cpu", "--quick", "--profile", str(profile), timeout=300)
    # Per session: the session, its diffs, its model list, 2 messages a turn and its parts.
    assert figures["sessions"] == 20 and figures["items"] == 20 * (3 + 2 + 20)
    for name in ("items_per_s", "cpu_us_per_item", "loop_cpu_us_per_item"):
        assert is_number(figures[name]) and figures[name] > 0, (name, figures)
    assert figures["loop_cpu_us_per_item"] <= figures["cpu_us_per_item"]
    assert profile.stat().st_size > 0
