"""The `syncd` command: run the daemon, sync once or backfill, show status, handle dead letters,
or serve a receiver.

The share key is deliberately not a flag: command lines are visible to every user in `ps`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

from syncd import __version__
from syncd.config import SESSIONS, TRANSPORTS, Config, load_config
from syncd.errors import UserError
from syncd.log import configure_logging


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        configure_logging()
        config = load_config(_flags(args))
        configure_logging(config)
        code = asyncio.run(args.command(config, args))
        sys.stdout.flush()  # here, so that a closed pipe is handled below
        return code
    except UserError as e:
        print(f"syncd: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`syncd status | head`): stop quietly, as `cat` would. Point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # killed by SIGPIPE, in the shell's convention


def _run(config: Config, args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    from syncd import daemon

    # SIGHUP re-reads every layer with the same flags, so the command line keeps winning.
    return daemon.run(config, reload_config=lambda: load_config(_flags(args)))


def _sync(config: Config, args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    from syncd import daemon

    return daemon.sync_once(config, args.give_up_after)


def _backfill(config: Config, args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    from syncd import daemon

    return daemon.sync_once(config, args.give_up_after, show_progress=True)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _status(config: Config, args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    from syncd import status

    return status.show(config, as_json=args.json, max_lag=args.max_lag)


def _dead_letters(config: Config, args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    from syncd import dead_letters

    match args.action:
        case "list":
            return dead_letters.list_letters(config, as_json=args.json)
        case "show":
            return dead_letters.show_letter(config, args.id)
        case "retry":
            return dead_letters.retry(config, args.ids, args.all)
        case _:
            return dead_letters.discard(config, args.ids, args.all)


def _serve(config: Config, _args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    from syncd.serve import app

    return app.serve(config)


def _flags(args: argparse.Namespace) -> dict[str, object]:
    """Command-line values under their Config names; None means "not given"."""
    return {
        "config": args.config,
        "db": args.db,
        "state": args.state,
        "archive": args.archive,
        "url": args.url,
        "transport": args.transport,
        "sessions": args.sessions,
        "serve_host": getattr(args, "host", None),
        "serve_port": getattr(args, "port", None),
    }


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        help="TOML config file (default $XDG_CONFIG_HOME/syncd/config.toml)",
    )
    common.add_argument("--db", metavar="FILE", help="opencode database to read")
    common.add_argument("--state", metavar="FILE", help="syncd's own state database")
    common.add_argument("--archive", metavar="FILE", help="embedded archive / serve store")
    common.add_argument(
        "--url", help="receiver base url (none: keep sessions in the local archive)"
    )
    common.add_argument("--transport", choices=TRANSPORTS, help="how to talk to the receiver")
    common.add_argument(
        "--sessions", choices=SESSIONS, help="sync every session or only shared ones"
    )

    parser = _Parser(
        prog="syncd",
        description="Keeps a remote copy of every opencode session complete and current.",
    )
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    commands = parser.add_subparsers(dest="name", required=True, metavar="COMMAND")

    def command(
        name: str, handler: Callable[..., Any], help: str, *, flags: bool = True
    ) -> argparse.ArgumentParser:
        parents = [common] if flags else []
        sub = commands.add_parser(name, parents=parents, help=help, description=help)
        sub.set_defaults(command=handler)
        return sub

    command("run", _run, "follow the opencode database and sync every change until stopped")
    catch_up = [
        command("sync", _sync, "sync everything pending once, then exit"),
        command(
            "backfill",
            _backfill,
            "deliver the whole existing database with progress (resumable: run it again)",
        ),
    ]
    for sub in catch_up:
        sub.add_argument(
            "--give-up-after",
            type=_positive_seconds,
            default=60.0,
            metavar="SECONDS",
            help="stop retrying an unreachable or failing receiver after this long; what is "
            "not delivered stays pending and the exit code is 1 (default 60)",
        )
    status = command("status", _status, "show what is synced, pending and failed")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--max-lag",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="exit 1 when an item has been pending longer than this (default 300)",
    )
    # The common flags go on each action (`syncd dead-letters list --state FILE`): argparse
    # would let an action's defaults overwrite flags given before it.
    letters = command(
        "dead-letters", _dead_letters, "list, show, retry or discard dead letters", flags=False
    )
    actions = letters.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, parents=[common], help=help, description=help)

    action("list", "every dead letter").add_argument(
        "--json", action="store_true", help="machine-readable output"
    )
    action("show", "one dead letter with its payload").add_argument("id", type=int)
    for name, text in (
        ("retry", "send again (read afresh from opencode) once the receiver accepts them"),
        ("discard", "drop for good"),
    ):
        sub = action(name, text)
        sub.add_argument("ids", type=int, nargs="*", metavar="ID")
        sub.add_argument("--all", action="store_true", help="every dead letter")
    serve = command("serve", _serve, "run a receiver (share REST API, capnweb, A2A)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 4788, 0: any free)")
    return parser


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end like every other user error: one line on stderr, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"syncd: {message} (see `{self.prog} --help`)\n")
