"""The `syncd` command: run the daemon, sync once, show status, or serve a receiver.

The share key is deliberately not a flag: command lines are visible to every user in `ps`.
"""

from __future__ import annotations

import argparse
import asyncio
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
        return asyncio.run(args.command(config, args))
    except UserError as e:
        print(f"syncd: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


def _run(config: Config, _args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    from syncd import daemon

    return daemon.run(config)


def _sync(config: Config, _args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    from syncd import daemon

    return daemon.sync_once(config)


def _status(config: Config, args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    from syncd import status

    return status.show(config, as_json=args.json)


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

    def command(name: str, handler: Callable[..., Any], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help, description=help)
        sub.set_defaults(command=handler)
        return sub

    command("run", _run, "follow the opencode database and sync every change until stopped")
    command("sync", _sync, "sync everything pending once, then exit")
    status = command("status", _status, "show what is synced, pending and failed")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    serve = command("serve", _serve, "run a receiver (share REST API, capnweb, A2A)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 4788, 0: any free)")
    return parser


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end like every other user error: one line on stderr, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"syncd: {message} (see `{self.prog} --help`)\n")
