"""`syncd serve`: the receiver (share REST API, capnweb, A2A) over the archive store."""

from __future__ import annotations

import argparse
from collections.abc import Coroutine
from typing import Any

from ..config import Config
from . import Subcommands


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    help = "run a receiver (share REST API, capnweb, A2A)"
    sub = commands.add_parser("serve", parents=[common], help=help, description=help)
    sub.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    sub.add_argument("--port", type=int, help="port to listen on (default 4788, 0: any free)")
    sub.add_argument(
        "--store",
        metavar="URL",
        help="archive: a path, sqlite:///path or postgresql://user@host:port/db "
        "(default: --archive); keep passwords out of the command line (config file, PGPASSFILE)",
    )
    sub.set_defaults(command=_command)


def _command(config: Config, _args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    from ..receiver.app import serve  # starlette and uvicorn load only for serve

    return serve(config)
