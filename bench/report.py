"""results.json -> results.md: the targets first, then the transports side by side."""

from __future__ import annotations

import math
from typing import Any


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The figures the targets speak of, for the reference transport (http when measured)."""
    transports = results["transports"]
    name = "http" if "http" in transports else next(iter(transports))
    measured = transports[name]
    raw = results["raw_read"]["rows_per_s"]
    backfill = measured.get("backfill", {}).get("items_per_s", math.nan)
    return {
        "transport": name,
        "latency_p50_beyond_window_ms": measured.get("latency", {}).get("p50_beyond_window_ms"),
        "latency_p99_beyond_window_ms": measured.get("latency", {}).get("p99_beyond_window_ms"),
        "backfill_items_per_s": backfill,
        "raw_read_rows_per_s": raw,
        "backfill_share_of_raw": backfill / raw,
        "idle_cpu_percent": measured.get("idle", {}).get("cpu_percent"),
        "idle_rss_mb": measured.get("idle", {}).get("rss_mb"),
    }


def markdown(results: dict[str, Any]) -> str:
    meta, head = results["meta"], results["headline"]
    scale = meta["scale"]
    lines = [
        "# syncd benchmark results",
        "",
        f"`{meta['command']}` at {meta['commit']} on {meta['date']}: {meta['cpu']} "
        f"({meta['cores']} cores), Python {meta['python']}, everything on loopback; 1-minute "
        f"load average {meta['load_average_at_start']:.1f} at start, "
        f"{meta['load_average_at_end']:.1f} at end, run time {meta['seconds']:.0f} s.",
        f"Receiver: `syncd serve`'s app in the benchmark process; syncd: `python -m syncd` "
        f"subprocesses; writer: a separate process (tests/fake_opencode.py). Coalescing window "
        f"{scale['window']} s. Workload: {meta['workload']}.",
        "",
        f"## Targets ({head['transport']} transport)",
        "",
        "| figure | measured | target | met |",
        "|---|---|---|---|",
        _target_row(
            "change-to-ack latency beyond the window, p50 / p99",
            f"{_num(head['latency_p50_beyond_window_ms'])} / "
            f"{_num(head['latency_p99_beyond_window_ms'])} ms",
            "p99 <= 150 ms",
            _at_most(head["latency_p99_beyond_window_ms"], 150),
        ),
        _target_row(
            f"backfill ({scale['backfill_sessions']} sessions x {scale['backfill_parts']} parts)",
            f"{_num(head['backfill_items_per_s'])} items/s = "
            f"{_num(100 * head['backfill_share_of_raw'], 1)}% of raw read+parse "
            f"({_num(head['raw_read_rows_per_s'])} rows/s)",
            ">= 33.3% of raw",
            _at_least(head["backfill_share_of_raw"], 1 / 3),
        ),
        _target_row(
            f"idle CPU over {scale['idle_seconds']:g} s",
            f"{_num(head['idle_cpu_percent'], 3)}% of a core",
            "< 0.5%",
            _below(head["idle_cpu_percent"], 0.5),
        ),
        _target_row(
            "idle RSS",
            f"{_num(head['idle_rss_mb'], 1)} MB",
            "< 80 MB",
            _below(head["idle_rss_mb"], 80),
        ),
        "",
        "## Transports on the same workloads",
        "",
        "| transport | requests+frames / session | connections (lifecycle run / backfill) "
        "| KB up / session | KB down / session "
        "| latency beyond window p50 / p99 (ms) | samples (missing) | batches/s "
        "| backfill items/s | idle CPU % | idle RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, measured in results["transports"].items():
        lines.append(_transport_row(name, measured))
    lines += [
        "",
        f"- Session lifecycle: a session created (session, user message and part, assistant "
        f"message and part), then {scale['lifecycle_updates']} rewrites of its assistant part "
        f"spaced 1.5 windows apart; {scale['lifecycle_sessions']} sessions; counted by an ASGI "
        "middleware (HTTP/1.1 head + headers + body, WebSocket payloads).",
        f"- Latency: {scale['steady_sessions']} sessions streaming assistant turns at "
        f"{scale['steady_rate']:g} writes/s for {scale['steady_seconds']:g} s; each write's "
        "commit to the acknowledgement of the first batch carrying it (or a newer version), "
        "minus the window.",
        f"- batches/s: `syncd sync` of {scale['batch_sessions']} small sessions (one batch "
        "each), acknowledged batches over the run's wall time.",
        "- Errors, if any, are in results.json.",
    ]
    errors = [
        f"- {name} / {phase}: {value['error']}"
        for name, measured in results["transports"].items()
        for phase, value in measured.items()
        if isinstance(value, dict) and "error" in value
    ]
    if errors:
        lines += ["", "## Errors", "", *errors]
    skipped = meta.get("skipped_transports") or {}
    if skipped:
        lines += ["", "Not measured: " + "; ".join(f"{k} ({v})" for k, v in skipped.items())]
    return "\n".join(lines) + "\n"


def _transport_row(name: str, measured: dict[str, Any]) -> str:
    life = measured.get("lifecycle", {})
    latency = measured.get("latency", {})
    p50, p99 = latency.get("p50_beyond_window_ms"), latency.get("p99_beyond_window_ms")
    idle = measured.get("idle", {})
    cells = [
        name,
        _num(life.get("requests", math.nan) + life.get("frames_up", math.nan), 1),
        f"{_num(life.get('connections', math.nan) * life.get('sessions', math.nan))} / "
        f"{_num(measured.get('backfill', {}).get('connections'))}",
        _num(life.get("bytes_up", math.nan) / 1024, 1),
        _num(life.get("bytes_down", math.nan) / 1024, 1),
        f"{_num(p50)} / {_num(p99)}",
        f"{latency.get('samples', '-')} ({latency.get('missing', '-')})",
        _num(measured.get("batches", {}).get("batches_per_s")),
        _num(measured.get("backfill", {}).get("items_per_s")),
        _num(idle.get("cpu_percent"), 3),
        _num(idle.get("rss_mb"), 1),
    ]
    return "| " + " | ".join(cells) + " |"


def _target_row(figure: str, measured: str, target: str, met: bool | None) -> str:
    verdict = "n/a" if met is None else ("yes" if met else "**no**")
    return f"| {figure} | {measured} | {target} | {verdict} |"


def _usable(value: Any) -> bool:
    return isinstance(value, int | float) and not math.isnan(value)


def _at_most(value: Any, limit: float) -> bool | None:
    return value <= limit if _usable(value) else None


def _at_least(value: Any, limit: float) -> bool | None:
    return value >= limit if _usable(value) else None


def _below(value: Any, limit: float) -> bool | None:
    return value < limit if _usable(value) else None


def _num(value: Any, digits: int = 0) -> str:
    if not _usable(value):
        return "-"
    return f"{value:,.{digits}f}"
