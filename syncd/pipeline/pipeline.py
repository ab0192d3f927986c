"""The pipeline, wired: opencode database -> changes -> pending (state) -> windows -> wire.

`Pipeline` holds one daemon's resources and moves a change down the line: the source's
detector finds it, the state records it as pending, the session's window gathers it, and the
delivery sends it through the transport. `follow` drives it from the database's wake-ups.

The source follows the file at `db`, not the file first opened: a database deleted, recreated,
renamed over or truncated is reopened and captured afresh (every session whole; the cursors of
sessions it no longer has are dropped). While the database cannot be read the daemon keeps
running, unhealthy with the reason, and tries again at every wake-up.

Sessions that vanish from opencode one by one are deleted remotely when `on_delete = "delete"`;
when most known sessions vanish at once (a database replaced, recreated or emptied), their
remote copies are held back until `syncd deletions confirm` (or kept: `discard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from asyncio import FIRST_COMPLETED
from dataclasses import fields, replace

import structlog

from ..archive import ArchiveStore, open_archive
from ..config import Config, opencode_settings
from ..errors import UserError
from ..log import configure_logging
from ..metrics import Metrics
from ..model import TableRead
from ..source.changes import ChangeDetector, SessionChange
from ..source.models import ModelCatalogue
from ..source.opencode_db import OpencodeDb
from ..source.wakeups import Wakeup, wakeups
from ..state.store import StateError, StateStore
from ..transports import make_transport, target_of
from ..transports.base import Transport
from .conditions import DELETIONS, SOURCE, SOURCE_REPLACED, Conditions
from .deliver import RetryPolicy, SessionDelivery
from .window import Window

log = structlog.get_logger("syncd")
# Sessions vanishing together in one look that hold their remote deletion back: more than
# this many, and more than half of the sessions syncd knows.
MASS_DELETION_MIN = 3
WAIT_FOR_DIRECTORY = 2.0
# How long the database may stay unreadable while running before it counts as a problem.
SOURCE_SETTLE_SECONDS = 10.0
# Where the state tells which receiver and transport the daemon owning it delivers to.
DELIVERING_META = "delivering"

# What SIGHUP can change in a running daemon: the rest takes a restart (the files, the
# watcher's poll, the endpoint's address, opencode's directories).
TRANSPORT_KEYS = frozenset({"url", "transport", "key", "request_timeout", "ca_bundle",
                            "a2a_binding"})  # fmt: skip
RELOADABLE_KEYS = TRANSPORT_KEYS | {
    "sessions", "window", "batch_max_items", "batch_max_bytes", "backoff_max", "concurrency",
    "on_delete", "log_format", "log_level", "health_max_failures", "health_period",
}  # fmt: skip
# Sessions captured whose keys are still being written while the next one is read.
CAPTURES_IN_FLIGHT = 8


class Pipeline:
    """One daemon's data flow: the source's changes into the state, through the windows, to
    the delivery, with the resources it holds open."""

    def __init__(
        self,
        config: Config,
        *,
        db: OpencodeDb,
        state: StateStore,
        archive: ArchiveStore | None,
        transport: Transport,
        metrics: Metrics,
        policy: RetryPolicy,
        reads: dict[str, TableRead] | None = None,
    ) -> None:
        """`reads`: table mode's last reads, as the state recorded them (see ChangeDetector)."""
        self.config = config
        self.db = db
        self.state = state
        self.archive = archive
        self.transport = transport
        self.metrics = metrics
        self.policy = policy
        self.conditions = Conditions(state, metrics.health)
        self.detector = ChangeDetector(db, only_shared=config.sessions == "shared", reads=reads)
        self.delivery = SessionDelivery(
            db=db,
            only_shared=config.sessions == "shared",
            state=state,
            transport=transport,
            target=target_of(config),
            origin=config.origin,
            catalogue=ModelCatalogue(
                config.opencode_cache_dir / "models.json",
                opencode_settings(config.opencode_config_dir).get("provider"),
            ),
            whole_session=self.detector.whole_session,
            policy=policy,
            concurrency=config.concurrency,
            max_items=config.batch_max_items,
            max_bytes=config.batch_max_bytes,
            metrics=metrics,
            conditions=self.conditions,
        )
        self.window = Window(config.window, self.deliver)
        # One capture at a time: the watcher's and a reload's would otherwise interleave.
        self._capturing = asyncio.Lock()
        self._last_version: int | None = None  # PRAGMA data_version at the last capture
        self._trouble_since: float | None = None  # since when the database cannot be read
        self._captured = False  # a look has captured since the daemon started
        self._deleting: set[str] = set()  # sessions whose remote copy goes at their turn
        self.daemon = False  # `syncd run`'s: it records where it delivers in the state

    @classmethod
    async def open(cls, config: Config, policy: RetryPolicy, *, daemon: bool = False) -> Pipeline:
        """Open every resource. `daemon`: a database that cannot be read yet is waited for
        (`look` opens it when it can) instead of refused; the state records what the daemon
        delivers to (`sync` checks its flags against it)."""
        state = await StateStore.open(config.state, target_of(config))
        db = archive = transport = None
        try:
            db = OpencodeDb(config.db)
            unreadable = None
            try:
                await db.reopen()
            except UserError as error:
                if not daemon:
                    raise
                unreadable = error
            if config.transport == "local":
                archive = await open_archive(config.archive)
            transport = make_transport(config, archive)
            metrics = Metrics(
                config.transport,
                max_failures=config.health_max_failures,
                period=config.health_period,
            )
            pipeline = cls(
                config,
                db=db,
                state=state,
                archive=archive,
                transport=transport,
                metrics=metrics,
                policy=policy,
                reads=await state.table_reads(),
            )
            await pipeline.conditions.load()
            if unreadable is not None:
                await pipeline._source_trouble(unreadable, settled=True)
            if daemon:
                pipeline.daemon = True
                await pipeline._record_delivering()
            return pipeline
        except BaseException:
            for resource in (transport, archive, db, state):
                if resource is not None:
                    await close_quietly(resource)
            raise

    async def close(self) -> None:
        if self.daemon:  # no daemon delivers from this state any more
            with contextlib.suppress(Exception):
                await self.state.set_meta(DELIVERING_META, None)
        for resource in (self.transport, self.archive, self.db, self.state):
            if resource is not None:
                await close_quietly(resource)

    async def look(
        self, *, deep: bool = False, file_event: bool = False, json_moved: bool = False
    ) -> None:
        """One look at opencode's data (at start, a wake-up, a poll): reopen the database when
        the file was replaced (or could not be read), capture what changed, and keep going,
        unhealthy with the reason, while it cannot be read (a newer schema, one being
        migrated, a corrupted or missing file). `file_event`: a commit is confirmed by
        PRAGMA data_version before anything is read; `json_moved`: the JSON sessions under
        storage/ are read again."""
        db = self.db
        troubled = self._trouble_since is not None
        await self.state.check_on_disk()
        try:
            moved = db.moved()
            if moved == "deleted":
                raise UserError("it is gone (deleted or moved away); what is pending is still sent")
            if not db.connected or moved is not None or troubled:
                await db.reopen()
                self._last_version = None
            if moved is not None:
                await self.conditions.note(
                    SOURCE_REPLACED,
                    f"the opencode database {db.path} was {moved} while syncd ran: reopened, "
                    "every session in it captured again",
                )
            # Read before the capture: a commit landing during it still differs next time.
            version = await db.data_version()
            if json_moved:
                db.json_stale = True
            elif file_event and moved is None and version == self._last_version:
                return  # a file event without a commit (a checkpoint, our own read)
            await self.capture(deep=deep or troubled, fresh=moved is not None)
            self._last_version = version
        except StateError:
            raise  # syncd's own state, not opencode's database: nothing to wait for
        except UserError as error:  # the database cannot be read (OpencodeDb says why)
            await self._source_trouble(error, settled=not self._captured)
            return
        self._captured = True
        self._trouble_since = None
        await self.conditions.clear(SOURCE)

    async def _source_trouble(self, error: Exception, *, settled: bool) -> None:
        """The database cannot be read. Unhealthy at once when it never could since the start
        (`settled`); otherwise once the trouble outlasts a safety poll (at most
        SOURCE_SETTLE_SECONDS): a database being replaced or recreated is briefly gone or half
        made, and that is no problem to report."""
        now = time.monotonic()
        if self._trouble_since is None:
            self._trouble_since = now
        settle = min(self.config.poll_interval, SOURCE_SETTLE_SECONDS)
        if settled or now - self._trouble_since >= settle:
            await self.conditions.set(
                SOURCE,
                f"waiting for the opencode database at {self.db.path}: {error} (tried again "
                "at every change and safety poll)",
            )
        else:
            log.debug("opencode database not readable yet", db=str(self.db.path), error=str(error))

    async def capture(self, *, deep: bool = False, fresh: bool = False) -> int:
        """Record what changed since the cursors and open the windows of those sessions.
        `fresh`: capture every session whole (the database was replaced)."""
        async with self._capturing:
            return await self._capture(deep=deep, fresh=fresh)

    async def _capture(self, *, deep: bool, fresh: bool) -> int:
        cursors = await self.state.cursors()
        scan = await self.detector.scan(cursors, deep=deep, fresh=fresh)
        changed = 0
        # Each session's keys are written while the next session is read: a few writes in
        # flight (memory stays bounded), which the state commits together.
        writes: set[asyncio.Task[None]] = set()
        try:
            async for change in self.detector.changes(scan, cursors):
                while len(writes) >= CAPTURES_IN_FLIGHT:
                    done, writes = await asyncio.wait(writes, return_when=FIRST_COMPLETED)
                    for write in done:
                        write.result()  # a failed write stops the capture, as before
                writes.add(asyncio.create_task(self._record(change)))
                changed += bool(change.keys)  # none: only its read is kept
        finally:
            outcomes = await asyncio.gather(*writes, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        self.metrics.record_read(scan.rows_read)
        await self._vanished(scan.deleted, len(cursors))
        # Everything pending is scheduled, including what an earlier run left behind.
        for session_id in await self.state.pending_sessions():
            self.window.touch(session_id)
        return changed

    async def _record(self, change: SessionChange) -> None:
        await self.state.capture(
            change.session_id,
            change.keys,
            journal_seq=change.journal_seq,
            time_updated=change.time_updated,
            read=change.read,
        )
        if change.keys:
            self.window.touch(change.session_id)  # deliver while the rest is captured

    async def settle_deletions(self) -> None:
        """Act on the sessions gone from opencode now, held deletions confirmed since included
        (`syncd deletions confirm` while no daemon runs)."""
        cursors = await self.state.cursors()
        scan = await self.detector.scan(cursors)
        await self._vanished(scan.deleted, len(cursors))

    async def _vanished(self, deleted: list[str], known: int) -> None:
        """Sessions gone from opencode since the last look (`known`: sessions syncd tracked)."""
        held = await self.state.held_deletions()
        for session_id, confirmed in held.items():
            if session_id not in deleted:  # back in opencode: it goes on as before
                await self.state.release_held(session_id)
            elif confirmed:
                self._delete(session_id)
        deleted = [session_id for session_id in deleted if session_id not in held]
        mass = len(deleted) > MASS_DELETION_MIN and 2 * len(deleted) > known
        if mass and self.config.on_delete == "delete":
            await self.state.hold_deletions(deleted)
        else:
            for session_id in deleted:
                await self._deleted(session_id)
        held_now = [c for c in (await self.state.held_deletions()).values() if not c]
        if held_now:
            await self.conditions.set(
                DELETIONS,
                f"{len(held_now)} session(s) vanished from opencode together with most others "
                "(a database replaced or emptied?); their remote copies are kept until "
                "`syncd deletions confirm` deletes them (or `syncd deletions discard` keeps "
                "them)",
            )
        else:
            await self.conditions.clear(DELETIONS)

    async def _deleted(self, session_id: str) -> None:
        if self.config.on_delete == "delete":
            log.info("session deleted in opencode; deleting its remote copy", session=session_id)
            self._delete(session_id)
        else:
            log.info("session deleted in opencode; remote copy kept", session=session_id)
            await self.state.forget_session(session_id)

    def _delete(self, session_id: str) -> None:
        """Delete the remote copy in the session's own worker, retried there like a batch:
        a receiver that is down holds up neither the capture nor the other sessions."""
        self._deleting.add(session_id)
        self.window.touch(session_id)

    async def _record_delivering(self) -> None:
        await self.state.set_meta(DELIVERING_META, json.dumps(delivering(self.config)))

    async def refresh_pending(self) -> tuple[int, float]:
        """Pending items and the age in seconds of the oldest, into the gauges too."""
        items, oldest = await self.state.pending_totals()
        self.metrics.set_pending(items, oldest)
        return items, max(time.time() - oldest / 1000, 0.0) if oldest else 0.0

    async def reload(self, config: Config) -> None:
        """Apply a reloaded config in place (SIGHUP). Pending items stay where they are, in
        the state; a new transport takes over while calls on the old one finish."""
        old = self.config
        changed = {
            f.name for f in fields(Config) if getattr(config, f.name) != getattr(old, f.name)
        }
        fixed = sorted(changed - RELOADABLE_KEYS)
        if fixed:
            log.warning("these settings change only at restart; kept as they were", keys=fixed)
            config = replace(config, **{name: getattr(old, name) for name in fixed})
        configure_logging(config)
        if changed & TRANSPORT_KEYS:
            if config.transport == "local" and self.archive is None:
                self.archive = await open_archive(config.archive)
            transport = make_transport(config, self.archive)
            target = target_of(config)
            replaced = await self.delivery.replace_transport(transport, target, config.origin)
            self.transport = transport
            await close_quietly(replaced)
            # A new receiver has none of the sessions: bind_target makes capture send all.
            # Not while a capture runs: it read the old receiver's cursors, and would write
            # them back over the forgetting.
            async with self._capturing:
                await self.state.bind_target(target)
            self.metrics.transport = config.transport
        self.policy = replace(
            self.policy, backoff_max=config.backoff_max, request_timeout=config.request_timeout
        )
        self.delivery.reconfigure(
            policy=self.policy,
            concurrency=config.concurrency,
            max_items=config.batch_max_items,
            max_bytes=config.batch_max_bytes,
        )
        self.window.window = config.window
        self.metrics.health.max_failures = config.health_max_failures
        self.metrics.health.period = config.health_period
        if "sessions" in changed:
            self.detector.only_shared = config.sessions == "shared"
            self.delivery.only_shared = config.sessions == "shared"
        self.config = config
        if changed & TRANSPORT_KEYS or "sessions" in changed:  # what delivering() records
            await self._record_delivering()
        log.info("config reloaded", changed=sorted(changed & RELOADABLE_KEYS))
        await self.capture(deep=True)

    async def deliver(self, session_id: str) -> None:
        try:
            if session_id in self._deleting:
                await self.delivery.delete(session_id)
                self._deleting.discard(session_id)
            else:
                await self.delivery.deliver(session_id)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # one session's failure must not stop the others
            log.error("delivery stopped; items stay pending", session=session_id, error=str(error))
            try:
                await self.state.record_error(session_id, str(error))
            except Exception as unrecorded:  # the state may be what failed (a full disk)
                log.error(
                    "the state cannot record why delivery stopped",
                    session=session_id,
                    error=str(unrecorded),
                )


def delivering(config: Config) -> dict[str, str | None]:
    """Where and what `config` delivers, as the state records it for the daemon that owns it."""
    return {
        "transport": config.transport,
        "url": config.url,
        "archive": str(config.archive) if config.transport == "local" else None,
        "sessions": config.sessions,
    }


async def follow(pipeline: Pipeline, stop: asyncio.Event) -> None:
    """Capture changes as the database (and opencode's storage/) moves, until `stop`. A
    database syncd cannot read holds the capture, not the daemon (`Pipeline.look`)."""
    config = pipeline.config
    await pipeline.look(deep=True)
    # The watcher needs the database's directory; until opencode creates it, look every
    # few seconds.
    while not config.db.parent.is_dir() and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(config.poll_interval, WAIT_FOR_DIRECTORY))
        await pipeline.look(deep=True)
    async for wakeup in wakeups(config.db, config.poll_interval, stop):
        pipeline.metrics.record_wakeup(wakeup.value)
        await pipeline.look(
            deep=wakeup is Wakeup.DEEP,
            file_event=wakeup is Wakeup.FILE,
            json_moved=wakeup in (Wakeup.STORAGE, Wakeup.DEEP),
        )


async def capture_and_drain(pipeline: Pipeline, *, deep: bool = False) -> None:
    """Capture what changed and deliver it now, without waiting for the windows."""
    await pipeline.capture(deep=deep)
    await pipeline.window.drain()


async def close_quietly(resource: object) -> None:
    closer = getattr(resource, "aclose", None) or resource.close  # type: ignore[attr-defined]
    with contextlib.suppress(Exception):
        await closer()
