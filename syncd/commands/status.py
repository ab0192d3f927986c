"""`syncd status`: per session, where its remote copy stands; dead letters; a health verdict.

Reads the state database read-only (safe while the daemon runs: a WAL reader neither blocks
it nor is blocked by it; and it works as well when no daemon runs). Whether a daemon runs is
what the state lock says: a session is "retrying" only while one does. Exit code 0 when
healthy; 1 when anything is dead-lettered, the oldest pending item is older than `max_lag`
seconds, opencode's database cannot be read, or the daemon reported a problem beyond one
session (the receiver refusing the key, deletions held back), so the command can serve as a
health check.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from typing import Any, TextIO

from rich import box
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

LAG_LIMIT_SECONDS = 300.0


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    help = "show what is synced, pending and failed"
    sub = commands.add_parser("status", parents=[common], help=help, description=help)
    sub.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_argument(
        "--max-lag",
        type=float,
        default=LAG_LIMIT_SECONDS,
        metavar="SECONDS",
        help="exit 1 when an item has been pending longer than this (default 300)",
    )
    sub.set_defaults(command=lambda config, args: show(config, args.json, args.max_lag))


def verdict(row: dict[str, Any], daemon_running: bool) -> str:
    if row["dead_letters"]:
        return "dead-lettered"
    if row["pending"] and row["attempts"] and daemon_running:
        return "retrying"
    if row["pending"]:
        return "pending"
    return "delivered"


async def collect(config: Config, max_lag: float = LAG_LIMIT_SECONDS) -> dict[str, Any]:
    state = await StateStore.open_readonly(config.state)
    try:
        rows = await state.session_report()
        dead = await state.dead_letters()
        conditions = await state.conditions()
    finally:
        await state.close()
    holder = StateLock(config.state).holder()
    running = holder is not None
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
    problems = []
    if unreadable := await _opencode_unreadable(config):
        problems.append(unreadable)
    problems += [c["message"] for c in conditions if c["problem"] and c["name"] != "source"]
    if dead:
        problems.append(f"{len(dead)} dead letter(s): see `syncd dead-letters list`")
    if worst_lag > max_lag:
        problems.append(f"oldest pending item is {worst_lag:.0f}s old (limit {max_lag:g}s)")
    return {
        "healthy": not problems,
        "problems": problems,
        "notices": [f"{timestamp(c['time_created'])}: {c['message']}" for c in conditions
                    if not c["problem"]],
        "daemon": {"running": running, "pid": holder or None},
        "max_lag_seconds": max_lag,
        "totals": totals,
        "sessions": sessions,
        "dead_letters": dead,
        "opencode": opencode_source(config),
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


async def show(config: Config, as_json: bool = False, max_lag: float = LAG_LIMIT_SECONDS) -> int:
    report = await collect(config, max_lag)
    if as_json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render(report, sys.stdout)
    return 0 if report["healthy"] else 1


def render(report: dict[str, Any], out: TextIO) -> None:
    table = table_for(out, "SESSION", "STATE", "PENDING", "LAG(s)", "LAST DELIVERY",
                      "SHARE URL", "LAST ERROR")  # fmt: skip
    for s in report["sessions"]:
        style = {"dead-lettered": "red", "retrying": "yellow", "pending": "cyan"}.get(s["state"])
        # Text, not markup: ids, urls and server messages may hold "[...]".
        table.add_row(
            Text(s["session_id"]),
            Text(s["state"], style=style or ""),
            str(s["pending"]),
            f"{s['lag_seconds']:g}",
            timestamp(s["time_last_delivery"]),
            Text(s["share_url"] or "-"),
            Text((s["last_error"] or "-")[:100]),
        )
    t = report["totals"]
    summary = Text.assemble(
        f"{t['sessions']} session(s): {t['delivered']} delivered, {t['pending']} pending, "
        f"{t['retrying']} retrying, {t['dead_lettered_sessions']} dead-lettered; "
        f"{t['pending_items']} item(s) pending, {t['dead_letters']} dead letter(s), "
        f"max lag {t['max_lag_seconds']:g}s: ",
        ("healthy", "green") if report["healthy"] else ("UNHEALTHY", "bold red"),
    )
    head: list[RenderableType] = [table, ""] if report["sessions"] else []
    daemon = report["daemon"]
    running = f"running (pid {daemon['pid']})" if daemon["running"] else "not running"
    notes = [Text(f"  note: {notice}") for notice in report["notices"]]
    problems = [Text(f"  - {problem}") for problem in report["problems"]]
    emit(
        out, *head, Text(f"daemon: {running}"), *notes, summary, *problems,
        *source_lines(report["opencode"]),
    )  # fmt: skip


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


def emit(out: TextIO, *renderables: RenderableType) -> None:
    """Colours and a terminal-wide table on a TTY; in a pipe, plain unwrapped lines without
    trailing blanks (one row per line for `grep` and `awk`), written by plain `write` so that
    a closed pipe reaches the CLI as BrokenPipeError."""
    if out.isatty():
        console = Console(file=out)
        for renderable in renderables:
            console.print(renderable)
        return
    buffer = io.StringIO()
    console = Console(file=buffer, width=100_000, no_color=True, highlight=False, emoji=False)
    for renderable in renderables:
        console.print(renderable)
    out.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))


def table_for(out: TextIO, *headers: str) -> Table:
    terminal = out.isatty()
    return Table(
        *headers,
        box=box.SIMPLE_HEAD if terminal else None,
        show_edge=False,
        pad_edge=False,
        header_style="bold" if terminal else "",
    )


def timestamp(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"
