"""The pipeline, wired: opencode database -> changes -> pending (state) -> windows -> wire.

`Pipeline` holds one daemon's resources and moves a change down the line: the source's
detector finds it, the state records it as pending, the session's window gathers it, and the
delivery sends it through the transport. `follow` drives it from the database's wake-ups.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import fields, replace

import structlog

from ..archive import ArchiveStore, open_archive
from ..config import Config, opencode_settings
from ..log import configure_logging
from ..metrics import Metrics
from ..source.changes import ChangeDetector
from ..source.models import ModelCatalogue
from ..source.opencode_db import OpencodeDb, SchemaError
from ..source.wakeups import Wakeup, wakeups
from ..state.store import StateStore
from ..transports import make_transport, target_of
from ..transports.base import Transport
from .deliver import RetryPolicy, SessionDelivery
from .window import Window

log = structlog.get_logger("syncd")

# What SIGHUP can change in a running daemon: the rest takes a restart (the files, the
# watcher's poll, the endpoint's address, opencode's directories).
TRANSPORT_KEYS = frozenset({"url", "transport", "key", "request_timeout", "ca_bundle",
                            "a2a_binding"})  # fmt: skip
RELOADABLE_KEYS = TRANSPORT_KEYS | {
    "sessions", "window", "batch_max_items", "batch_max_bytes", "backoff_max", "concurrency",
    "on_delete", "log_format", "log_level", "health_max_failures", "health_period",
}  # fmt: skip


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
    ) -> None:
        self.config = config
        self.db = db
        self.state = state
        self.archive = archive
        self.transport = transport
        self.metrics = metrics
        self.policy = policy
        self.detector = ChangeDetector(db, only_shared=config.sessions == "shared")
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
        )
        self.window = Window(config.window, self.deliver)
        # One capture at a time: the watcher's and a reload's would otherwise interleave.
        self._capturing = asyncio.Lock()

    @classmethod
    async def open(cls, config: Config, policy: RetryPolicy) -> Pipeline:
        state = await StateStore.open(config.state, target_of(config))
        db = archive = transport = None
        try:
            db = await OpencodeDb.open(config.db)
            if config.transport == "local":
                archive = await open_archive(config.archive)
            transport = make_transport(config, archive)
            metrics = Metrics(
                config.transport,
                max_failures=config.health_max_failures,
                period=config.health_period,
            )
            return cls(
                config,
                db=db,
                state=state,
                archive=archive,
                transport=transport,
                metrics=metrics,
                policy=policy,
            )
        except BaseException:
            for resource in (transport, archive, db, state):
                if resource is not None:
                    await close_quietly(resource)
            raise

    async def close(self) -> None:
        for resource in (self.transport, self.archive, self.db, self.state):
            if resource is not None:
                await close_quietly(resource)

    async def capture(self, *, deep: bool = False) -> int:
        """Record what changed since the cursors and open the windows of those sessions."""
        async with self._capturing:
            return await self._capture(deep=deep)

    async def _capture(self, *, deep: bool) -> int:
        cursors = await self.state.cursors()
        scan = await self.detector.scan(cursors, deep=deep)
        changed = 0
        async for change in self.detector.changes(scan, cursors):
            await self.state.capture(
                change.session_id,
                change.keys,
                journal_seq=change.journal_seq,
                time_updated=change.time_updated,
            )
            self.window.touch(change.session_id)  # deliver while the rest is captured
            changed += 1
        self.metrics.record_read(scan.rows_read)
        for session_id in scan.deleted:
            await self._deleted(session_id)
        # Everything pending is scheduled, including what an earlier run left behind.
        for session_id in await self.state.pending_sessions():
            self.window.touch(session_id)
        return changed

    async def _deleted(self, session_id: str) -> None:
        if self.config.on_delete == "delete":
            log.info("session deleted in opencode; deleting its remote copy", session=session_id)
            await self.delivery.delete(session_id)
        else:
            log.info("session deleted in opencode; remote copy kept", session=session_id)
            await self.state.forget_session(session_id)

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
            await self.state.bind_target(target)
            self.metrics.transport = config.transport
        self.policy = replace(self.policy, backoff_max=config.backoff_max)
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
        log.info("config reloaded", changed=sorted(changed & RELOADABLE_KEYS))
        await self.capture(deep=True)

    async def deliver(self, session_id: str) -> None:
        try:
            await self.delivery.deliver(session_id)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # one session's failure must not stop the others
            await self.state.record_error(session_id, str(error))
            log.error("delivery stopped; items stay pending", session=session_id, error=str(error))


async def follow(pipeline: Pipeline, stop: asyncio.Event) -> None:
    """Capture changes as the database moves, until `stop`. A database syncd cannot read (a
    newer opencode, one being migrated) holds the capture, not the daemon: it stays up and
    unhealthy, and reads again at every wake-up until it can."""
    config = pipeline.config
    # Read before the capture: a commit landing during it then still differs at its wake-up.
    last_version = await pipeline.db.data_version()
    await _capture_unless_unreadable(pipeline, deep=True)
    async for wakeup in wakeups(config.db, config.poll_interval, stop):
        pipeline.metrics.record_wakeup(wakeup.value)
        version = await pipeline.db.data_version()
        if wakeup is Wakeup.FILE and version == last_version:
            continue  # a file event without a commit (a checkpoint, our own read)
        if wakeup in (Wakeup.STORAGE, Wakeup.DEEP):
            pipeline.db.json_stale = True  # the JSON sessions are read again
        last_version = version
        await _capture_unless_unreadable(pipeline, deep=wakeup is Wakeup.DEEP)


async def _capture_unless_unreadable(pipeline: Pipeline, *, deep: bool) -> None:
    health = pipeline.metrics.health
    try:
        await pipeline.capture(deep=deep or health.blocked is not None)
    except SchemaError as problem:
        if health.blocked != str(problem):
            log.error("cannot read the opencode database; waiting", error=str(problem))
        health.blocked = str(problem)
        return
    if health.blocked is not None:
        log.info("the opencode database is readable again; delivering")
        health.blocked = None


async def capture_and_drain(pipeline: Pipeline, *, deep: bool = False) -> None:
    """Capture what changed and deliver it now, without waiting for the windows."""
    await pipeline.capture(deep=deep)
    await pipeline.window.drain()


async def close_quietly(resource: object) -> None:
    closer = getattr(resource, "aclose", None) or resource.close  # type: ignore[attr-defined]
    with contextlib.suppress(Exception):
        await closer()
