"""`syncd sync` and `syncd backfill`: catch up once and exit 0 only when everything was
delivered, for headless hosts after `opencode run`; backfill shows progress. While a daemon
owns the state, they wait for it to deliver instead of racing it, and refuse settings that
daemon would ignore (another url or transport).

"Everything delivered" means it: nothing pending and nothing dead-lettered in the state of the
receiver asked about, whenever it was dead-lettered."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import threading
from collections.abc import Coroutine
from typing import Any

import structlog

from ..config import Config
from ..errors import UserError
from ..model import Cursor, TableRead
from ..pipeline.deliver import RetryPolicy
from ..pipeline.pipeline import DELIVERING_META, Pipeline, capture_and_drain, delivering
from ..source.changes import ChangeDetector, SessionChange
from ..source.opencode_db import OpencodeDb
from ..state.lock import StateLock, StateLocked
from ..state.store import StateStore
from . import Subcommands
from .progress import follow_backfill, plan_backfill

log = structlog.get_logger("syncd")
DAEMON_STARTING_POLLS = 50
# Waiting on the daemon, a look at its state and at opencode's database is taken at most every
# half second, and never more often than keeps the looks under a tenth of a core: one look on
# 5,000 table-mode sessions costs about 470 ms, which every half second was a whole core.
LOOK_INTERVAL = 0.5
LOOK_SHARE_OF_CORE = 0.1


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
    return _stopped_by_sigterm(
        sync_once(config, args.give_up_after, show_progress=args.show_progress)
    )


async def _stopped_by_sigterm(work: Coroutine[Any, Any, int]) -> int:
    """`work`, which SIGTERM (a service manager's stop, `timeout`) ends as Ctrl-C does: by
    cancelling it, so that what is being recorded (a share just made) is, rather than by
    killing the process. Exit code 143, as a shell reports a process SIGTERM ended."""
    if threading.current_thread() is not threading.main_thread():
        return await work  # only the main thread takes signals (syncd run from a program)
    running = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, running.cancel)
    try:
        return await running
    except asyncio.CancelledError:
        if asyncio.current_task().cancelling():  # type: ignore[union-attr]  # Ctrl-C: ours
            raise
        return 128 + signal.SIGTERM
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


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
        await _require_daemons_receiver(config, held.pid)
        log.info("a syncd daemon owns this state; waiting for it to catch up", pid=held.pid)
        return await _wait_for_daemon(config, give_up_after)
    try:
        return await _sync_owned(config, give_up_after, show_progress)
    finally:
        lock.release()


async def _sync_owned(config: Config, give_up_after: float, show_progress: bool) -> int:
    policy = RetryPolicy(
        backoff_max=min(config.backoff_max, 10.0),
        give_up_after=give_up_after,
        request_timeout=config.request_timeout,
        # Evidence about a share must fit in the time `sync` has.
        ambiguous_after=min(RetryPolicy.ambiguous_after, give_up_after / 3),
    )
    pipeline = await Pipeline.open(config, policy)
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
        dead = len(await pipeline.state.dead_letters())
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
    _require_no_dead_letters(dead, dead - dead_before)
    log.info("everything delivered")
    return 0


def _require_no_dead_letters(dead: int, new: int | None = None) -> None:
    if dead:
        this_run = "" if new is None else f", {new} of them in this run"
        raise UserError(
            f"{dead} item(s) dead-lettered{this_run} (refused by the receiver, or unreadable "
            "in the opencode database), so not everything is delivered; see `syncd status` "
            "and `syncd dead-letters` (retry them once the cause is fixed)",
            exit_code=1,
        )


async def _require_daemons_receiver(config: Config, pid: str) -> None:
    """A sync answers only for the receiver the running daemon delivers to: a flag (or a
    config) naming another url or transport is an error, not a claim about a receiver that
    nobody contacted."""
    state = await StateStore.open_readonly(config.state)
    try:
        recorded = await state.meta(DELIVERING_META)
        for _ in range(DAEMON_STARTING_POLLS):
            if recorded is not None:
                break
            await asyncio.sleep(0.1)  # a daemon that just took the lock records it next
            recorded = await state.meta(DELIVERING_META)
    finally:
        await state.close()
    if recorded is None:
        return  # not a daemon (another sync), or one from before syncd recorded it
    daemons = json.loads(recorded)
    asked = delivering(config)
    # Only what the daemon recorded: one from before syncd recorded `sessions` conflicts in
    # nothing it did not say.
    conflicts = [
        f"{name} {asked[name] or 'none'} (the daemon's: {daemons[name] or 'none'})"
        for name in asked
        if name in daemons and asked[name] != daemons[name]
    ]
    if conflicts:
        raise UserError(
            f"a syncd daemon (pid {pid or 'unknown'}) owns state {config.state} and delivers "
            f"otherwise; this sync asks for {', '.join(conflicts)}, which that daemon would "
            "ignore: drop those flags, reload the daemon with them (SIGHUP), or give this sync "
            "its own --state"
        )


async def _wait_for_daemon(config: Config, give_up_after: float) -> int:
    """Until the daemon has captured every change now in the database and delivered it."""
    db = await OpencodeDb.open(config.db)
    try:
        state = await StateStore.open(config.state)
        try:
            return await _until_delivered(config, db, state, give_up_after)
        finally:
            await state.close()
    finally:
        await db.close()


async def _until_delivered(
    config: Config, db: OpencodeDb, state: StateStore, give_up_after: float
) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_after
    # The first look reads the rows of every session, idle ones too, as a `sync` alone does (a
    # row written in an idle session is found by the daemon's deep poll); the later ones
    # those of the sessions found behind, and of the active ones.
    behind_ids: set[str] | None = None
    while True:
        look_began = loop.time()
        cursors, reads = await state.cursors(), await state.table_reads()
        # A new detector each look, that starts from the reads the daemon's captures recorded
        # (not from what this one saw): a change it finds, the daemon has not captured yet.
        detector = ChangeDetector(db, only_shared=config.sessions == "shared", reads=reads)
        deep = behind_ids is None
        changes = await detector.detect(cursors, deep=deep, check=behind_ids or ())
        behind = [c for c in changes.changed if _ahead_of(c, cursors.get(c.session_id), reads)]
        behind_ids = {change.session_id for change in behind}
        pending = await state.pending_sessions()
        if not behind and not pending:
            _require_no_dead_letters(len(await state.dead_letters()))
            log.info("everything delivered (by the running daemon)")
            return 0
        if loop.time() > deadline:
            problems = [c["message"] for c in await state.conditions() if c["problem"]]
            raise UserError(
                f"the running daemon has not delivered {len(pending) + len(behind)} "
                f"session(s) within {give_up_after:.0f}s"
                + "".join(f"; {problem}" for problem in problems)
                + "; see `syncd status`",
                exit_code=1,
            )
        now = loop.time()
        took = 0.0 if deep else now - look_began  # the deep look, once: spaced as a cheap one
        await asyncio.sleep(min(next_look_after(took), max(deadline - now, 0.0)))


def next_look_after(look_seconds: float) -> float:
    """How long to wait before the next look, after one that took `look_seconds`."""
    return max(LOOK_INTERVAL, look_seconds * (1 / LOOK_SHARE_OF_CORE - 1))


def _ahead_of(change: SessionChange, cursor: Cursor | None, reads: dict[str, TableRead]) -> bool:
    """Whether `change` is one the daemon has not captured yet."""
    if not change.keys:
        return False  # only a read to keep (its print, for a read kept without one)
    if cursor is None:
        return True
    if change.journal_seq is not None:
        return cursor.journal_seq is None or change.journal_seq > cursor.journal_seq
    if change.session_id in reads:  # found from where the daemon's last capture read
        return True
    # A session the daemon has not captured since syncd recorded its reads: only a newer
    # stamp tells (a row committed late, stamped below the cursor, is not seen here).
    return cursor.time_updated is None or (change.time_updated or 0) > cursor.time_updated


async def _report(config: Config) -> list[dict]:
    state = await StateStore.open(config.state)
    try:
        return await state.session_report()
    finally:
        await state.close()
