"""`syncd status`: per session, where its remote copy stands; dead letters; a health verdict.

Reads the state database only (safe while the daemon runs: WAL readers never block it).
Exit code 0 when healthy, 1 when anything is dead-lettered or lags beyond LAG_LIMIT_SECONDS,
so the command can serve as a health check.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from .config import Config
from .errors import UserError
from .state.store import StateStore

LAG_LIMIT_SECONDS = 300.0


def verdict(row: dict[str, Any]) -> str:
    if row["dead_letters"]:
        return "dead-lettered"
    if row["pending"] and row["attempts"]:
        return "retrying"
    if row["pending"]:
        return "pending"
    return "delivered"


async def collect(config: Config) -> dict[str, Any]:
    if not config.state.is_file():
        raise UserError(
            f"no state database at {config.state}: syncd has not run with this state yet "
            "(start `syncd run` or `syncd sync`, or pass --state)"
        )
    state = await StateStore.open(config.state)
    try:
        rows = await state.session_report()
        dead = await state.dead_letters()
    finally:
        await state.close()
    now = time.time()
    sessions = []
    for row in rows:
        lag = now - row["oldest_pending"] / 1000 if row["oldest_pending"] else 0.0
        sessions.append({**row, "state": verdict(row), "lag_seconds": round(lag, 1)})
    worst_lag = max((s["lag_seconds"] for s in sessions), default=0.0)
    totals = {
        "sessions": len(sessions),
        "pending_items": sum(s["pending"] for s in sessions),
        "dead_letters": len(dead),
        "max_lag_seconds": worst_lag,
    }
    healthy = not dead and worst_lag <= LAG_LIMIT_SECONDS
    return {"healthy": healthy, "totals": totals, "sessions": sessions, "dead_letters": dead}


async def show(config: Config, as_json: bool = False) -> int:
    report = await collect(config)
    if as_json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(report))
    return 0 if report["healthy"] else 1


def render(report: dict[str, Any]) -> str:
    header = ("SESSION", "STATE", "PENDING", "LAG(s)", "LAST DELIVERY", "SHARE URL", "LAST ERROR")
    lines = [header]
    for s in report["sessions"]:
        delivered = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["time_last_delivery"] / 1000))
            if s["time_last_delivery"]
            else "-"
        )
        lines.append(
            (
                s["session_id"],
                s["state"],
                str(s["pending"]),
                str(s["lag_seconds"]),
                delivered,
                s["share_url"] or "-",
                (s["last_error"] or "-")[:80],
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
           for line in lines]  # fmt: skip
    t = report["totals"]
    out.append(
        f"\n{t['sessions']} session(s), {t['pending_items']} item(s) pending, "
        f"{t['dead_letters']} dead letter(s), max lag {t['max_lag_seconds']}s: "
        + ("healthy" if report["healthy"] else "UNHEALTHY")
    )
    for letter in report["dead_letters"]:
        out.append(
            f"dead letter {letter['id']}: {letter['kind']} {letter['item_id']} "
            f"(session {letter['session_id']}): {letter['reason']}"
        )
    return "\n".join(out) + "\n"
