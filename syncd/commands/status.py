"""`syncd status`: per session, where its remote copy stands; dead letters; a health verdict.

Reads the state database read-only (safe while the daemon runs: a WAL reader neither blocks
it nor is blocked by it; and it works as well when no daemon runs). Whether a daemon runs is
what the state lock says: a session is "retrying" only while one does. Exit code 0 when
healthy; 1 when anything is dead-lettered, the oldest pending item is older than `max_lag`
seconds, opencode's database cannot be read, or the daemon reported a problem beyond one
session (the receiver refusing the key, deletions held back), so the command can serve as a
health check. On a terminal the table fits its width (short ids, relative times); `--wide`,
a pipe, or `status SESSION` give every detail. The table lists the sessions not delivered and
the ones delivered last (`--all`: every session; `--json`: always every one).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from ..config import Config
from ..errors import UserError
from ..source import json_store
from ..source.opencode_db import OpencodeDb
from ..source.storage import storage_dir
from ..state.lock import StateLock
from ..state.store import StateStore
from ..transports.local import page_url
from . import Subcommands
from .screen import (
    ago,
    clipped,
    duration,
    find_session,
    fitted,
    screen,
    short_ids,
    table_for,
    timestamp,
)

LAG_LIMIT_SECONDS = 300.0
# Delivered sessions listed (the most recently delivered): years of opencode sessions made a
# table of thousands of rows that took seconds to draw and hid the ones needing attention.
DELIVERED_LISTED = 20
STATE_STYLES = {"dead-lettered": "red", "retrying": "yellow", "pending": "cyan"}


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    help = "show what is synced, pending and failed"
    sub = commands.add_parser("status", parents=[common], help=help, description=help)
    sub.add_argument(
        "session", nargs="?", metavar="SESSION", help="one session in detail (as `syncd open`)"
    )
    sub.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_argument(
        "--wide", action="store_true", help="every column in full, however wide the terminal"
    )
    sub.add_argument(
        "--all",
        action="store_true",
        help=f"list every session (default: those not delivered, and the {DELIVERED_LISTED} "
        "delivered last)",
    )
    sub.add_argument(
        "--max-lag",
        type=float,
        default=LAG_LIMIT_SECONDS,
        metavar="SECONDS",
        help="exit 1 when an item has been pending longer than this (default 300)",
    )
    sub.set_defaults(command=_command, reads_state=True)


def _command(config: Config, args: argparse.Namespace) -> Any:
    return show(
        config, args.json, args.max_lag, session=args.session, wide=args.wide, every=args.all
    )


def verdict(row: dict[str, Any], daemon_running: bool) -> str:
    if row["dead_letters"]:
        return "dead-lettered"
    if row["pending"] and row["attempts"] and daemon_running:
        return "retrying"
    if row["pending"]:
        return "pending"
    return "delivered"


async def collect(
    config: Config, max_lag: float = LAG_LIMIT_SECONDS, session: str | None = None
) -> dict[str, Any]:
    """The report, on every session or on the one `session` names (its id or a part of it)."""
    state = await StateStore.open_readonly(config.state)
    try:
        rows = await state.session_report()
        dead = await state.dead_letters()
        conditions = await state.conditions()
    finally:
        await state.close()
    holder = StateLock(config.state).holder()
    running = holder is not None
    if session is not None:
        session_id = find_session(rows, session)["session_id"]
        rows = [row for row in rows if row["session_id"] == session_id]
        dead = [letter for letter in dead if letter["session_id"] == session_id]
    now = time.time()
    sessions = []
    for row in rows:
        lag = now - row["oldest_pending"] / 1000 if row["oldest_pending"] else 0.0
        if row["share_url"]:
            row["share_url"] = page_url(row["share_url"], config.serve_url)
        state_name = verdict(row, running)
        sessions.append({**row, "state": state_name, "lag_seconds": round(max(lag, 0.0), 1)})
    worst_lag = max((s["lag_seconds"] for s in sessions), default=0.0)
    states = [s["state"] for s in sessions]
    totals = {
        "sessions": len(sessions),
        **{name: states.count(name) for name in ("delivered", "pending", "retrying")},
        "dead_lettered_sessions": states.count("dead-lettered"),
        "pending_items": sum(s["pending"] for s in sessions),
        "dead_letters": len(dead),
        "max_lag_seconds": worst_lag,
    }
    warnings = [warning] if (warning := config.cleartext_warning()) else []
    problems = []
    if unreadable := await _opencode_unreadable(config):
        problems.append(unreadable)
    # The source's condition is not taken from the state: status reads the database itself.
    problems += [c["message"] for c in conditions if c["problem"] and c["name"] != "source"]
    if dead:
        problems.append(f"{len(dead)} dead letter(s): see `syncd dead-letters list`")
    if worst_lag > max_lag:
        problems.append(f"oldest pending item is {worst_lag:.0f}s old (limit {max_lag:g}s)")
    return {
        "healthy": not problems,
        "problems": problems,
        "warnings": warnings,
        "notices": [f"{timestamp(c['time_created'])}: {c['message']}"
                    for c in conditions if not c["problem"]],
        "daemon": {"running": running, "pid": holder or None},
        "max_lag_seconds": max_lag,
        "totals": totals,
        "sessions": sessions,
        "dead_letters": dead,
        "opencode": opencode_source(config),
        "time": now,
    }  # fmt: skip


async def _opencode_unreadable(config: Config) -> str | None:
    """Why opencode's database cannot be read now, or None when it can (read by status itself,
    so that it holds with or without a daemon)."""
    try:
        db = await OpencodeDb.open(config.db)
    except UserError as error:
        return str(error)
    try:
        await db.readable()
    except UserError as error:
        return str(error)
    finally:
        await db.close()
    return None


def opencode_source(config: Config) -> dict[str, Any]:
    """Where syncd reads opencode's sessions: its database, and the JSON session files under
    its storage/ (opencode <= 1.1, or left behind by an upgrade)."""
    storage = storage_dir(config.db)
    return {
        "db": str(config.db),
        "db_exists": config.db.is_file(),
        "json_session_files": json_store.count_sessions(storage),
        "storage": str(storage),
    }


async def show(
    config: Config,
    as_json: bool = False,
    max_lag: float = LAG_LIMIT_SECONDS,
    *,
    session: str | None = None,
    wide: bool = False,
    every: bool = False,
) -> int:
    report = await collect(config, max_lag, session)
    if as_json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif session is not None:
        render_session(report, sys.stdout)
    else:
        render(report, sys.stdout, wide=wide, every=every)
    return 0 if report["healthy"] else 1


def render(
    report: dict[str, Any],
    out: TextIO,
    *,
    wide: bool = False,
    every: bool = False,
    console: Console | None = None,
) -> None:
    listed, unlisted = (report["sessions"], 0) if every else _listed(report["sessions"])
    with screen(out, console) as shown:
        compact = shown.is_terminal and not wide
        rows = {**report, "sessions": listed}
        table = _compact_table(rows, shown) if compact else _wide_table(rows, shown)
        head: list[RenderableType] = [table, ""] if listed else []
        if unlisted:
            more = f"{unlisted} more delivered session(s): syncd status --all lists every one"
            head[1:1] = [Text(more, style="dim")]
        for renderable in (
            *head,
            _daemon(report),
            *_notices(report),
            _summary(report),
            *_problems(report),
            *_warnings(report),
            *source_lines(report["opencode"]),
        ):
            shown.print(renderable)
        if compact and report["sessions"]:
            shown.print(Text("details: syncd status SESSION, or --wide", style="dim"))


def _listed(sessions: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The sessions to list, in their order (every one not delivered, and the
    DELIVERED_LISTED delivered last), and how many delivered ones are left out."""
    delivered = [s for s in sessions if s["state"] == "delivered"]
    latest = sorted(delivered, key=lambda s: s["time_last_delivery"] or 0, reverse=True)
    kept = {s["session_id"] for s in latest[:DELIVERED_LISTED]}
    listed = [s for s in sessions if s["state"] != "delivered" or s["session_id"] in kept]
    return listed, len(delivered) - len(kept)


def _compact_table(report: dict[str, Any], console: Console) -> Table:
    """Fits 80 columns: the id's tail, relative times, the error cut to what is left."""
    table = fitted(
        table_for(console, "SESSION", "STATE", "PENDING", "LAG", "DELIVERED", "LAST ERROR")
    )
    table.columns[2].justify = "right"
    short = short_ids(s["session_id"] for s in report["sessions"])
    for s in report["sessions"]:
        table.add_row(
            Text(short[s["session_id"]]),
            Text(s["state"], style=STATE_STYLES.get(s["state"], "")),
            str(s["pending"]),
            duration(s["lag_seconds"]) if s["pending"] else "-",
            ago(s["time_last_delivery"], report["time"]),
            clipped(s["last_error"]),
        )
    return table


def _wide_table(report: dict[str, Any], console: Console) -> Table:
    table = table_for(console, "SESSION", "STATE", "PENDING", "LAG(s)", "LAST DELIVERY",
                      "SHARE URL", "LAST ERROR")  # fmt: skip
    for s in report["sessions"]:
        # Text, not markup: ids, urls and server messages may hold "[...]".
        table.add_row(
            Text(s["session_id"]),
            Text(s["state"], style=STATE_STYLES.get(s["state"], "")),
            str(s["pending"]),
            f"{s['lag_seconds']:g}",
            timestamp(s["time_last_delivery"]),
            Text(s["share_url"] or "-"),
            Text(_one_line(s["last_error"])),
        )
    return table


def _summary(report: dict[str, Any]) -> Text:
    t = report["totals"]
    return Text.assemble(
        f"{t['sessions']} session(s): {t['delivered']} delivered, {t['pending']} pending, "
        f"{t['retrying']} retrying, {t['dead_lettered_sessions']} dead-lettered; "
        f"{t['pending_items']} item(s) pending, {t['dead_letters']} dead letter(s), "
        f"max lag {duration(t['max_lag_seconds'])}: ",
        ("healthy", "green") if report["healthy"] else ("UNHEALTHY", "bold red"),
    )


def source_lines(source: dict[str, Any]) -> list[Text]:
    lines = [] if source["db_exists"] else [Text(f"no opencode database at {source['db']}")]
    if source["json_session_files"]:
        lines.append(
            Text(
                f"{source['json_session_files']} JSON session file(s) under {source['storage']} "
                "(opencode <= 1.1, or left by an upgrade): delivered too, unless the "
                "database has the same session"
            )
        )
    return lines


def _daemon(report: dict[str, Any]) -> Text:
    daemon = report["daemon"]
    return Text(
        f"daemon: running (pid {daemon['pid']})" if daemon["running"] else "daemon: not running"
    )


def _notices(report: dict[str, Any]) -> list[Text]:
    return [Text(f"note: {notice}") for notice in report["notices"]]


def _warnings(report: dict[str, Any]) -> list[Text]:
    return [Text(f"warning: {warning}", style="yellow") for warning in report["warnings"]]


def _problems(report: dict[str, Any]) -> list[Text]:
    return [Text(f"  - {problem}") for problem in report["problems"]]


def render_session(report: dict[str, Any], out: TextIO, console: Console | None = None) -> None:
    """One session, every detail, one per line."""
    (s,) = report["sessions"]
    now = report["time"]
    oldest = s["oldest_pending"]
    pending = f"{s['pending']} item(s)" + (
        f", the oldest captured {ago(oldest, now)} ({timestamp(oldest)})" if oldest else ""
    )
    delivered = s["time_last_delivery"]
    letters = report["dead_letters"]
    details = {
        "session": s["session_id"],
        "state": Text(s["state"], style=STATE_STYLES.get(s["state"], "")),
        "pending": pending,
        "attempts": str(s["attempts"]),
        "last delivery": f"{timestamp(delivered)} ({ago(delivered, now)})" if delivered else "-",
        "share": s["share_url"] or "-",
        "last error": s["last_error"] or "-",
        "dead letters": (
            f"{len(letters)}: ids {', '.join(str(letter['id']) for letter in letters)} "
            "(syncd dead-letters show ID)"
            if letters
            else "0"
        ),
    }
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in details.items():
        table.add_row(name, value if isinstance(value, Text) else Text(value))
    with screen(out, console) as shown:
        shown.print(table)
        for problem in _problems(report):
            shown.print(problem)


def _one_line(text: str | None) -> str:
    return " ".join(text.split()) if text else "-"
