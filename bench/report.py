"""results.json -> tables: results.md, and the blocks bench/publish.py keeps current in README.md
and docs/transports.md. Every figure on those pages comes from here."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

Figures = dict[str, Any]
Column = tuple[str, Callable[[Figures], str]]

LATENCY_TARGET_MS = 150
BACKFILL_TARGET_SHARE = 1 / 3
RECEIVER_TARGET_US = 10.0
IDLE_CPU_TARGET = 0.5
IDLE_RSS_TARGET_MB = 80


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The figures the targets speak of: latency and idle of the reference transport (http when
    measured), the backfill into the embedded archive, the REST receiver's CPU per item."""
    transports = results["transports"]
    name = "http" if "http" in transports else next(iter(transports))
    measured = transports[name]
    raw = results["raw_read"]["rows_per_s"]
    archive = results.get("archive", {}).get("items_per_s", math.nan)
    return {
        "transport": name,
        "latency_p50_beyond_window_ms": measured.get("latency", {}).get("p50_beyond_window_ms"),
        "latency_p99_beyond_window_ms": measured.get("latency", {}).get("p99_beyond_window_ms"),
        "archive_backfill_items_per_s": archive,
        "raw_read_rows_per_s": raw,
        "archive_share_of_raw": archive / raw,
        "receiver_cpu_us_per_item": measured.get("backfill", {}).get("receiver_cpu_us_per_item"),
        "idle_cpu_percent": measured.get("idle", {}).get("cpu_percent"),
        "idle_rss_mb": measured.get("idle", {}).get("rss_mb"),
    }


def markdown(results: dict[str, Any]) -> str:
    meta, scale = results["meta"], results["meta"]["scale"]
    rtts = ", ".join(f"{ms:g}" for ms in scale.get("rtts_ms", ()))
    network = f"; also through a delaying proxy at {rtts} ms RTT (bench/proxy.py)" if rtts else ""
    lines = [
        "# syncd benchmark results",
        "",
        f"`{meta['command']}` at {meta['commit']} on {meta['date']}: {meta['cpu']} "
        f"({meta['cores']} cores), Python {meta['python']}, everything on loopback{network}; "
        f"1-minute load average {meta['load_average_at_start']:.1f} at start, "
        f"{meta['load_average_at_end']:.1f} at end, run time {meta['seconds']:.0f} s.",
        f"Receiver: `syncd serve`'s app in the benchmark process; syncd: `python -m syncd` "
        f"subprocesses; writer: a separate process (tests/fake_opencode.py). Coalescing window "
        f"{scale['window']} s. Workload: {meta['workload']}.",
        "",
        "## Targets",
        "",
        targets_table(results),
        "",
        f"## Backfill ({scale['backfill_sessions']} sessions x {scale['backfill_parts']} parts)",
        "",
        backfill_table(results),
        "",
        "## Transports on bare loopback",
        "",
        loopback_table(results),
        "",
        "## Over a network",
        "",
        network_table(results),
        "",
        f"- Session lifecycle: a session created (session, user message and part, assistant "
        f"message and part), then {scale['lifecycle_updates']} rewrites of its assistant part "
        f"spaced 1.5 windows apart; {scale['lifecycle_sessions']} sessions; counted by an ASGI "
        "middleware (HTTP/1.1 head + headers + body, WebSocket payloads).",
        f"- Latency: {scale['steady_sessions']} sessions streaming assistant turns at "
        f"{scale['steady_rate']:g} writes/s for {scale['steady_seconds']:g} s; each write's "
        "commit to the acknowledgement of the first batch carrying it (or a newer version), "
        "minus the window.",
        "- New session: from the commit of a new session's row to the acknowledgement of its "
        "first batch (share created, data stored), minus the window; the lifecycle and "
        "streaming sessions together.",
        f"- batches/s: `syncd sync` of {scale['batch_sessions']} small sessions (one batch "
        "each), acknowledged batches over the run's wall time.",
        "- Receiver CPU per item: the benchmark process's CPU time (the receiver and its "
        "instruments) during the backfill, over the items acknowledged.",
        "- Errors, if any, are in results.json.",
    ]
    errors = [
        f"- {where}: {value['error']}"
        for where, value in _phases(results)
        if isinstance(value, dict) and "error" in value
    ]
    if errors:
        lines += ["", "## Errors", "", *errors]
    skipped = meta.get("skipped_transports") or {}
    if skipped:
        lines += ["", "Not measured: " + "; ".join(f"{k} ({v})" for k, v in skipped.items())]
    return "\n".join(lines) + "\n"


def _phases(results: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    yield "archive", results.get("archive")
    for rtt, transports in _networks(results):
        for name, measured in transports.items():
            for phase, value in measured.items():
                yield f"{name} at {rtt:g} ms / {phase}", value


def _networks(results: dict[str, Any]) -> list[tuple[float, dict[str, Figures]]]:
    """(round-trip time in ms, transports measured there), bare loopback (0) first."""
    others = sorted((float(ms), measured) for ms, measured in results.get("rtt", {}).items())
    return [(0.0, results["transports"]), *others]


# -- tables ------------------------------------------------------------------------------------


def targets_table(results: dict[str, Any]) -> str:
    head, scale = results["headline"], results["meta"]["scale"]
    rows = [
        (
            f"change-to-ack latency beyond the window, p50 / p99 ({head['transport']})",
            f"{_num(head['latency_p50_beyond_window_ms'])} / "
            f"{_num(head['latency_p99_beyond_window_ms'])} ms",
            f"p99 <= {LATENCY_TARGET_MS} ms",
            _at_most(head["latency_p99_beyond_window_ms"], LATENCY_TARGET_MS),
        ),
        (
            f"backfill into the embedded archive ({scale['backfill_sessions']:,} sessions x "
            f"{scale['backfill_parts']} parts)",
            f"{_num(head['archive_backfill_items_per_s'])} items/s = "
            f"{_num(100 * head['archive_share_of_raw'], 1)}% of raw read+parse "
            f"({_num(head['raw_read_rows_per_s'])} rows/s)",
            f">= {100 * BACKFILL_TARGET_SHARE:.1f}% of raw",
            _at_least(head["archive_share_of_raw"], BACKFILL_TARGET_SHARE),
        ),
        (
            f"receiver CPU per item, {head['transport']} backfill",
            f"{_num(head['receiver_cpu_us_per_item'], 1)} µs",
            f"<= {RECEIVER_TARGET_US:g} µs",
            _at_most(head["receiver_cpu_us_per_item"], RECEIVER_TARGET_US),
        ),
        (
            f"idle CPU over {scale['idle_seconds']:g} s ({head['transport']})",
            f"{_num(head['idle_cpu_percent'], 3)}% of a core",
            f"< {IDLE_CPU_TARGET}%",
            _below(head["idle_cpu_percent"], IDLE_CPU_TARGET),
        ),
        (
            f"idle RSS ({head['transport']})",
            f"{_num(head['idle_rss_mb'], 1)} MB",
            f"< {IDLE_RSS_TARGET_MB} MB",
            _below(head["idle_rss_mb"], IDLE_RSS_TARGET_MB),
        ),
    ]
    return _table(
        ["figure", "measured", "target", "met"],
        [[figure, measured, target, _verdict(met)] for figure, measured, target, met in rows],
    )


def backfill_table(results: dict[str, Any]) -> str:
    """Per transport on bare loopback, and the embedded archive."""
    header = ["transport", "items/s", "first ack after", "syncd CPU µs/item",
              "receiver CPU µs/item", "syncd peak RSS"]  # fmt: skip
    rows = []
    archive = results.get("archive")
    if archive and "error" not in archive:
        rows.append([
            "local (embedded archive)", _num(archive["items_per_s"]), "-",
            _num(_per_item_us(archive["syncd_cpu_s"], archive["items"]), 1), "(in syncd)",
            f"{_num(archive.get('syncd_max_rss_mb'))} MB",
        ])  # fmt: skip
    for name, measured in results["transports"].items():
        backfill = measured.get("backfill", {})
        rows.append([
            name, _num(backfill.get("items_per_s")),
            f"{_num(backfill.get('first_ack_after_s'), 1)} s",
            _num(_per_item_us(backfill.get("syncd_cpu_s"), backfill.get("items")), 1),
            _num(backfill.get("receiver_cpu_us_per_item"), 1),
            f"{_num(backfill.get('syncd_max_rss_mb'))} MB",
        ])  # fmt: skip
    return _table(header, rows)


def loopback_table(results: dict[str, Any]) -> str:
    columns = [_TRANSPORT, _REQUESTS, _CONNECTIONS, _KB, _LATENCY, _NEW_SESSION, _BATCHES,
               _BACKFILL, _IDLE_CPU, _IDLE_RSS]  # fmt: skip
    return _table(
        [title for title, _ in columns],
        [[cell(figures) for _, cell in columns] for figures in _rows(results, [0.0])],
    )


def network_table(results: dict[str, Any]) -> str:
    """Every round-trip time measured (bare loopback included), transports side by side."""
    columns = [_RTT, _TRANSPORT, _LATENCY, _NEW_SESSION, _REQUESTS, _CONNECTIONS, _KB,
               _BACKFILL, _BATCHES]  # fmt: skip
    return _table(
        [title for title, _ in columns],
        [[cell(figures) for _, cell in columns] for figures in _rows(results)],
    )


def replay_table(results: dict[str, Any]) -> str:
    """A replayed opencode database, per session lifecycle, at every round-trip time."""
    columns = [_RTT, _TRANSPORT, _REQUESTS, _KB, _LATENCY, _NEW_SESSION, _ACKNOWLEDGED]
    return _table(
        [title for title, _ in columns],
        [[cell(figures) for _, cell in columns] for figures in _rows(results)],
    )


def _rows(results: dict[str, Any], only: list[float] | None = None) -> Iterator[Figures]:
    for rtt, transports in _networks(results):
        if only is None or rtt in only:
            for name, measured in transports.items():
                yield {"name": name, "rtt": rtt, **measured}


def _requests(figures: Figures) -> str:
    life = figures.get("lifecycle", {})
    frames = life.get("frames_up", 0)
    count = _num(life.get("requests", math.nan) + frames, 1)
    return f"{count} ({_num(frames, 1)} frames)" if frames else count


def _connections(figures: Figures) -> str:
    life = figures.get("lifecycle", {})
    return (
        f"{_num(life.get('connections', math.nan) * life.get('sessions', math.nan))} / "
        f"{_num(figures.get('backfill', {}).get('connections'))}"
    )


def _kb(figures: Figures) -> str:
    life = figures.get("lifecycle", {})
    up, down = life.get("bytes_up", math.nan), life.get("bytes_down", math.nan)
    return f"{_num(up / 1024, 1)} / {_num(down / 1024, 1)}"


def _latency(figures: Figures) -> str:
    latency = figures.get("latency", {})
    return (
        f"{_num(latency.get('p50_beyond_window_ms'))} / {_num(latency.get('p99_beyond_window_ms'))}"
    )


def _new_session(figures: Figures) -> str:
    new = figures.get("new_session", {})
    return f"{_num(new.get('p50_beyond_window_ms'))} / {_num(new.get('max_beyond_window_ms'))}"


def _acknowledged(figures: Figures) -> str:
    latency = figures.get("latency", {})
    samples, missing = latency.get("samples"), latency.get("missing")
    if samples is None or missing is None:
        return "-"
    return f"{samples} of {samples + missing}"


_RTT: Column = ("RTT", lambda f: "loopback" if f["rtt"] == 0 else f"{f['rtt']:g} ms")
_TRANSPORT: Column = ("transport", lambda f: f"`{f['name']}`")
_REQUESTS: Column = ("requests+frames / lifecycle", _requests)
_CONNECTIONS: Column = ("TCP connections: lifecycle run / backfill", _connections)
_KB: Column = ("KB up / down per lifecycle", _kb)
_LATENCY: Column = ("change-to-ack beyond window, p50 / p99 (ms)", _latency)
_NEW_SESSION: Column = ("new session's first data beyond window, p50 / max (ms)", _new_session)
_ACKNOWLEDGED: Column = ("writes acknowledged", _acknowledged)
_BATCHES: Column = ("batches/s", lambda f: _num(f.get("batches", {}).get("batches_per_s")))
_BACKFILL: Column = ("backfill items/s", lambda f: _num(f.get("backfill", {}).get("items_per_s")))
_IDLE_CPU: Column = ("idle CPU %", lambda f: _num(f.get("idle", {}).get("cpu_percent"), 3))
_IDLE_RSS: Column = ("idle RSS MB", lambda f: _num(f.get("idle", {}).get("rss_mb"), 1))


# -- formatting --------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _per_item_us(seconds: Any, items: Any) -> float:
    return seconds / items * 1e6 if _usable(seconds) and _usable(items) and items else math.nan


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("yes" if met else "**no**")


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
