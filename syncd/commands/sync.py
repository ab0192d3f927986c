"""`syncd sync` and `syncd backfill`: catch up once and exit 0 only when everything was
delivered, for headless hosts after `opencode run`; backfill shows progress. While a daemon
owns the state, they wait for it to deliver instead of racing it."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

from ..config import Config
from ..errors import UserError
from ..model import Cursor
from ..pipeline.deliver import RetryPolicy
from ..pipeline.pipeline import Pipeline, capture_and_drain
from ..source.changes import ChangeDetector, SessionChange
from ..source.opencode_db import OpencodeDb
from ..state.lock import StateLock, StateLocked
from ..state.store import StateStore
from . import Subcommands
from .progress import follow_backfill, plan_backfill

log = structlog.get_logger("syncd")


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    for name, help, show_progress in (
        ("sync", "sync everything pending once, then exit", False),
        (
            "backfill",
            "deliver the whole existing database with progress (resumable: run it again)",
            True,
        ),
    ):
        sub = commands.add_parser(name, parents=[common], help=help, description=help)
        sub.add_argument(
            "--give-up-after",
            type=_positive_seconds,
            default=60.0,
            metavar="SECONDS",
            help="stop retrying an unreachable or failing receiver after this long; what is "
            "not delivered stays pending and the exit code is 1 (default 60)",
        )
        sub.set_defaults(command=_command, show_progress=show_progress)


def _command(config: Config, args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    return sync_once(config, args.give_up_after, show_progress=args.show_progress)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


async def sync_once(
    config: Config, give_up_after: float = 60.0, *, show_progress: bool = False
) -> int:
    """Capture everything, deliver it without waiting for windows, and report. While a
    daemon owns the state, wait for it to deliver everything instead of racing it.
    Interrupted, it resumes where it stopped: captures and acknowledgements are durable.
    `show_progress`: a progress bar on a terminal, progress lines otherwise (backfill)."""
    lock = StateLock(config.state)
    try:
        lock.acquire()
    except StateLocked as held:
        log.info("a syncd daemon owns this state; waiting for it to catch up", pid=held.pid)
        return await _wait_for_daemon(config, give_up_after)
    try:
        return await _sync_owned(config, give_up_after, show_progress)
    finally:
        lock.release()


async def _sync_owned(config: Config, give_up_after: float, show_progress: bool) -> int:
    pipeline = await Pipeline.open(
        config,
        RetryPolicy(
            backoff_max=min(config.backoff_max, 10.0),
            give_up_after=give_up_after,
            # Evidence about a share must fit in the time `sync` has.
            ambiguous_after=min(RetryPolicy.ambiguous_after, give_up_after / 3),
        ),
    )
    try:
        dead_before = len(await pipeline.state.dead_letters())
        pipeline.window.window = 0.0  # catching up: no window to wait for
        if show_progress:
            # Counted first (cheaply), then shown from the start: sessions are delivered while
            # the rest is still being captured.
            async with follow_backfill(pipeline.state, await plan_backfill(pipeline)):
                await capture_and_drain(pipeline, deep=True)
        else:
            await capture_and_drain(pipeline, deep=True)
        pending = await pipeline.state.pending_sessions()
        dead = len(await pipeline.state.dead_letters()) - dead_before
    finally:
        await pipeline.window.cancel()
        await pipeline.close()
    if pending:
        rows = await _report(config)
        errors = {row["last_error"] for row in rows if row["pending"] and row["last_error"]}
        raise UserError(
            f"{len(pending)} session(s) not delivered to {config.url or config.archive}: "
            f"{'; '.join(sorted(errors)) or 'unknown error'} (items stay pending; run again)",
            exit_code=1,
        )
    if dead:
        raise UserError(
            f"{dead} item(s) dead-lettered (refused by the receiver, or unreadable in the "
            "opencode database); see `syncd status` and `syncd dead-letters`",
            exit_code=1,
        )
    log.info("everything delivered")
    return 0


async def _wait_for_daemon(config: Config, give_up_after: float) -> int:
    """Until the daemon has captured every change now in the database and delivered it."""
    db = await OpencodeDb.open(config.db)
    state = await StateStore.open(config.state)
    detector = ChangeDetector(db, only_shared=config.sessions == "shared")
    deadline = asyncio.get_running_loop().time() + give_up_after
    try:
        while True:
            cursors = await state.cursors()
            changes = await detector.detect(cursors)
            behind = [c for c in changes.changed if _ahead_of(c, cursors.get(c.session_id))]
            pending = await state.pending_sessions()
            if not behind and not pending:
                log.info("everything delivered (by the running daemon)")
                return 0
            if asyncio.get_running_loop().time() > deadline:
                raise UserError(
                    f"the running daemon has not delivered {len(pending) + len(behind)} "
                    f"session(s) within {give_up_after:.0f}s; see `syncd status`",
                    exit_code=1,
                )
            await asyncio.sleep(0.5)
    finally:
        await db.close()
        await state.close()


def _ahead_of(change: SessionChange, cursor: Cursor | None) -> bool:
    if cursor is None:
        return True
    if change.journal_seq is not None:
        return cursor.journal_seq is None or change.journal_seq > cursor.journal_seq
    return cursor.time_updated is None or (change.time_updated or 0) > cursor.time_updated


async def _report(config: Config) -> list[dict]:
    state = await StateStore.open(config.state)
    try:
        return await state.session_report()
    finally:
        await state.close()
