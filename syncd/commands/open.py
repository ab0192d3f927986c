"""`syncd open [SESSION]`: the page of a session's remote copy, opened in a browser when
there is one to open it in, and printed (so `syncd open --print` feeds other tools).

The embedded archive's pages are served by `syncd serve`; when nothing answers there, a note
on stderr says so instead of leaving a browser on an error page unexplained.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import webbrowser
from typing import Any
from urllib.parse import urlsplit

from ..config import Config
from ..errors import UserError
from ..state.store import StateStore
from ..terminal import printable
from ..transports.local import page_url
from . import Subcommands
from .screen import find_session


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    help = "open (or print) the page of a session's remote copy"
    sub = commands.add_parser("open", parents=[common], help=help, description=help)
    sub.add_argument(
        "session",
        nargs="?",
        metavar="SESSION",
        help="session id (its start or end, or its share id); default: the last one delivered",
    )
    sub.add_argument("--print", action="store_true", help="only print the url")
    sub.set_defaults(command=lambda config, args: open_page(config, args.session, args.print))


def choose(rows: list[dict[str, Any]], wanted: str | None) -> dict[str, Any]:
    """The state's row for `wanted` (see find_session), or the session delivered last."""
    if wanted is not None:
        return find_session(rows, wanted)
    delivered = [row for row in rows if row["share_url"] and row["time_last_delivery"]]
    if not delivered:
        raise UserError("no session has been delivered yet: run `syncd sync` (or `syncd run`)")
    return max(delivered, key=lambda row: row["time_last_delivery"])


def _answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 80), timeout=2):
            return True
    except OSError:
        return False


def _has_browser() -> bool:
    """A graphical browser to hand the url to (on a server, `webbrowser` would start a text
    browser in this terminal instead)."""
    graphical = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    return sys.platform in ("darwin", "win32") or bool(graphical)


async def open_page(config: Config, wanted: str | None, print_only: bool) -> int:
    state = await StateStore.open_readonly(config.state)
    try:
        rows = await state.session_report()
    finally:
        await state.close()
    row = choose(rows, wanted)
    if not row["share_url"]:
        raise UserError(
            f"session {row['session_id']} has no share yet: run `syncd sync` (or wait for "
            "`syncd run`) and try again"
        )
    url = page_url(row["share_url"], config.serve_url)
    print(printable(url))  # as the receiver answered it
    if url.startswith(config.serve_url + "/") and not _answers(url):
        print(
            f"syncd: nothing answers at {config.serve_url}: start `syncd serve` to read this page",
            file=sys.stderr,
        )
    elif not print_only and _has_browser():
        webbrowser.open(url)
    return 0
