"""`syncd deletions`: the remote deletions held back because most known sessions vanished
from opencode at once (a database replaced, recreated or emptied) while `on_delete = "delete"`.

`confirm` lets them go ahead: the running daemon deletes the remote copies at its next look at
the database; without a daemon, this command does it now. `discard` keeps the remote copies
and forgets the sessions. A session that comes back into opencode is no longer held.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Coroutine
from typing import Any

from rich.text import Text

from ..config import Config
from ..errors import UserError
from ..pipeline.conditions import DELETIONS
from ..pipeline.deliver import RetryPolicy
from ..pipeline.pipeline import Pipeline
from ..state.lock import StateLock, StateLocked
from ..state.store import StateStore
from . import Subcommands
from .screen import screen, table_for

GIVE_UP_AFTER = 60.0


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    help = "list, confirm or discard remote deletions held back after a mass vanishing"
    deletions = commands.add_parser("deletions", help=help, description=help)
    deletions.set_defaults(command=_command, reads_state=True)
    actions = deletions.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("list", "the sessions whose remote deletion is held back"),
        ("confirm", "delete their remote copies"),
        ("discard", "keep their remote copies and forget the sessions"),
    ):
        actions.add_parser(name, parents=[common], help=text, description=text)


def _command(config: Config, args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    match args.action:
        case "list":
            return list_held(config)
        case "confirm":
            return confirm(config)
        case _:
            return discard(config)


async def list_held(config: Config) -> int:
    state = await StateStore.open_readonly(config.state)
    try:
        held = await state.held_deletions()
    finally:
        await state.close()
    if not held:
        print("no deletions held back")
        return 0
    with screen(sys.stdout) as shown:
        table = table_for(shown, "SESSION", "CONFIRMED")
        for session_id, confirmed in sorted(held.items()):
            table.add_row(Text(session_id), "yes" if confirmed else "no")
        for renderable in (table, "", Text(
            f"{len(held)} remote deletion(s) held back. `syncd deletions confirm` deletes the "
            "remote copies; `syncd deletions discard` keeps them."
        )):  # fmt: skip
            shown.print(renderable)
    return 0


async def confirm(config: Config) -> int:
    state = await StateStore.open(config.state)
    try:
        count = await state.confirm_deletions()
    finally:
        await state.close()
    if not count:
        print("no deletions held back")
        return 0
    lock = StateLock(config.state)
    try:
        lock.acquire()
    except StateLocked as held:
        print(
            f"{count} deletion(s) confirmed: the running daemon (pid {held.pid or 'unknown'}) "
            f"deletes the remote copies within {config.poll_interval:g}s"
        )
        return 0
    try:
        policy = RetryPolicy(give_up_after=GIVE_UP_AFTER, request_timeout=config.request_timeout)
        pipeline = await Pipeline.open(config, policy)
        try:
            await pipeline.settle_deletions()
            await pipeline.window.drain()
            left = await pipeline.state.held_deletions()
        finally:
            await pipeline.close()
    finally:
        lock.release()
    if left:
        raise UserError(
            f"{count} deletion(s) confirmed, {len(left)} not done yet (see `syncd status` for the "
            "receiver's error); they stay confirmed: the daemon or the next `syncd sync` "
            "deletes them",
            exit_code=1,
        )
    print(f"{count} deletion(s) confirmed and done: the remote copies are deleted")
    return 0


async def discard(config: Config) -> int:
    state = await StateStore.open(config.state)
    try:
        held = await state.held_deletions()
        for session_id in held:
            await state.forget_session(session_id)
        await state.set_condition(DELETIONS, None)
    finally:
        await state.close()
    if not held:
        print("no deletions held back")
        return 0
    print(f"{len(held)} deletion(s) discarded: the remote copies are kept")
    return 0
