"""One module per `syncd` command; each has `register(commands, common)`, which adds its
parser and sets `command`, a function of (config, args) returning the coroutine to run."""

from __future__ import annotations

import argparse
from typing import NoReturn

from ..config import SESSIONS, TRANSPORTS

Subcommands = argparse._SubParsersAction


class Parser(argparse.ArgumentParser):
    """Usage mistakes end like every other user error: one line on stderr, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"syncd: {message} (see `{self.prog} --help`)\n")


def common_flags() -> Parser:
    """The flags that override the config file, shared by the daemon-side commands. The share
    key is deliberately not a flag: command lines are visible to every user in `ps`."""
    common = Parser(add_help=False)
    add_config_flag(common)
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
    return common


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML config file (default $XDG_CONFIG_HOME/syncd/config.toml)",
    )


def config_flags(args: argparse.Namespace) -> dict[str, object]:
    """Command-line values under their Config names; None means "not given"."""
    names = ("config", "db", "state", "archive", "url", "transport", "sessions")
    flags: dict[str, object] = {name: getattr(args, name, None) for name in names}
    flags["serve_host"] = getattr(args, "host", None)
    flags["serve_port"] = getattr(args, "port", None)
    flags["store"] = getattr(args, "store", None)
    flags["serve_public"] = getattr(args, "public", None)
    return flags
