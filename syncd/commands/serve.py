"""`syncd serve`: the receiver (share REST API, capnweb, A2A) over the archive store."""

from __future__ import annotations

import argparse
from collections.abc import Coroutine
from typing import Any

from ..config import Config
from . import Subcommands, add_config_flag


def register(commands: Subcommands, _common: argparse.ArgumentParser) -> None:
    # Not the daemon's flags (--db, --url, --transport...): they mean nothing to a receiver.
    help = "run a receiver (share REST API, capnweb, A2A)"
    sub = commands.add_parser("serve", help=help, description=help)
    add_config_flag(sub)
    sub.add_argument("--archive", metavar="FILE", help="the archive to serve and store into")
    sub.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    sub.add_argument("--port", type=int, help="port to listen on (default 4788, 0: any free)")
    sub.add_argument(
        "--store",
        metavar="URL",
        help="archive: a path, sqlite:///path or postgresql://user@host:port/db "
        "(default: --archive); keep passwords out of the command line (config file, PGPASSFILE)",
    )
    sub.add_argument(
        "--public",
        action="store_const",
        const=True,
        help="listen beyond loopback even without a key (anyone reaching it can write and list)",
    )
    sub.set_defaults(command=_command)


def _command(config: Config, _args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    from ..receiver.app import serve  # starlette and uvicorn load only for serve

    return serve(config)
