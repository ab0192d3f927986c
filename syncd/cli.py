"""The `syncd` command: registers one module per command (`syncd.commands`) and runs the
chosen one, turning a user's mistake into one line on stderr and an exit code."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from collections.abc import Sequence

from syncd import __version__
from syncd.commands import (
    Parser,
    common_flags,
    config_flags,
    dead_letters,
    deletions,
    install_service,
    open,
    run,
    serve,
    status,
    sync,
)
from syncd.config import load_config
from syncd.errors import UserError
from syncd.log import configure_logging
from syncd.service import config_for_state_reader
from syncd.terminal import printable

COMMANDS = (run, sync, status, open, dead_letters, deletions, serve, install_service)
# Objects allocated before the cyclic collector runs (Python's default: 700). A backfill or an
# ingest keeps thousands of parsed items alive across allocations, so at the default the
# collector walks them again and again: 14% of a backfill's main-thread CPU. Nearly all of
# syncd's garbage is freed by reference counting; cycles wait a little longer.
GC_YOUNG_THRESHOLD = 20_000


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    try:
        configure_logging()
        flags = config_flags(args)
        # Root reading state it does not have reads the system service's (`sudo syncd status`).
        config = config_for_state_reader(flags) if args.reads_state else load_config(flags)
        configure_logging(config)
        code = asyncio.run(args.command(config, args))
        sys.stdout.flush()  # here, so that a closed pipe is handled below
        return code
    except UserError as e:
        print(f"syncd: {printable(str(e))}", file=sys.stderr)  # it may quote a receiver
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`syncd status | head`): stop quietly, as `cat` would. Point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # killed by SIGPIPE, in the shell's convention


def _parser() -> Parser:
    parser = Parser(
        prog="syncd",
        description="Keeps a remote copy of every opencode session complete and current.",
    )
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    parser.set_defaults(reads_state=False)
    commands = parser.add_subparsers(dest="name", required=True, metavar="COMMAND")
    common = common_flags()
    for command in COMMANDS:
        command.register(commands, common)
    return parser
