"""The pipeline, wired: opencode database -> changes -> pending (state) -> windows -> wire.

`run` is the service: it tails the database until SIGTERM/SIGINT, then flushes what is pending
(within STOP_FLUSH_SECONDS) and exits 0; SIGHUP reloads the config in place. `sync_once`
catches up once and exits 0 only when everything was delivered, for headless hosts after
`opencode run` (`syncd backfill` is the same with a progress display).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import structlog

from . import systemd
from .coalesce import Coalescer
from .config import Config, opencode_settings
from .deliver import RetryPolicy, SessionDelivery
from .errors import UserError
from .log import configure_logging
from .metrics import Metrics
from .metrics_endpoint import serving_metrics
from .progress import follow_backfill
from .serve.store import ShareStore
from .source.changes import ChangeDetector, SessionChange
from .source.models import ModelCatalogue
from .source.opencode_db import OpencodeDb
from .source.wakeups import Wakeup, wakeups
from .state.lock import StateLock, StateLocked
from .state.store import Cursor, StateStore
from .transports import make_transport, target_of
from .transports.base import Transport

log = structlog.get_logger("syncd")
STOP_FLUSH_SECONDS = 20.0
WAIT_FOR_DB_SECONDS = 2.0
SCHEMA_SETTLE_SECONDS = 30.0
STATUS_EVERY_SECONDS = 5.0  # STATUS= line and pending gauges, when no watchdog asks for more

# What SIGHUP can change in a running daemon: the rest takes a restart (the files, the
# watcher's poll, the endpoint's address, opencode's directories).
TRANSPORT_KEYS = frozenset({"url", "transport", "key", "request_timeout", "ca_bundle",
                            "a2a_binding"})  # fmt: skip
RELOADABLE_KEYS = TRANSPORT_KEYS | {
    "sessions", "window", "batch_max_items", "batch_max_bytes", "backoff_max", "concurrency",
    "on_delete", "log_format", "log_level", "health_max_failures", "health_period",
}  # fmt: skip


@dataclass
class Pipeline:
    config: Config
    db: OpencodeDb
    state: StateStore
    transport: Transport
    archive: ShareStore | None
    detector: ChangeDetector
    delivery: SessionDelivery
    coalescer: Coalescer
    metrics: Metrics
    policy: RetryPolicy
    # One capture at a time: the watcher's and a reload's would otherwise interleave.
    _capturing: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    async def open(cls, config: Config, policy: RetryPolicy) -> Pipeline:
        state = await StateStore.open(config.state, target_of(config))
        db = archive = transport = None
        try:
            db = await OpencodeDb.open(config.db)
            if config.transport == "local":
                archive = await ShareStore.open(config.archive)
            transport = make_transport(config, archive)
            detector = ChangeDetector(db, only_shared=config.sessions == "shared")
            metrics = Metrics(
                config.transport,
                max_failures=config.health_max_failures,
                period=config.health_period,
            )
            delivery = SessionDelivery(
                db=db,
                state=state,
                transport=transport,
                target=target_of(config),
                origin=config.origin,
                catalogue=ModelCatalogue(
                    config.opencode_cache_dir / "models.json",
                    opencode_settings(config.opencode_config_dir).get("provider"),
                ),
                whole_session=detector.whole_session,
                policy=policy,
                concurrency=config.concurrency,
                max_items=config.batch_max_items,
                max_bytes=config.batch_max_bytes,
                metrics=metrics,
            )
        except BaseException:
            for resource in (transport, archive, db, state):
                if resource is not None:
                    await _close(resource)
            raise
        pipeline = cls(config, db, state, transport, archive, detector, delivery, None, metrics,  # type: ignore[arg-type]
                       policy)  # fmt: skip
        pipeline.coalescer = Coalescer(config.window, pipeline.deliver)
        return pipeline

    async def close(self) -> None:
        for resource in (self.transport, self.archive, self.db, self.state):
            if resource is not None:
                await _close(resource)

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
            self.coalescer.touch(change.session_id)  # deliver while the rest is captured
            changed += 1
        self.metrics.record_read(scan.rows_read)
        for session_id in scan.deleted:
            await self._deleted(session_id)
        # Everything pending is scheduled, including what an earlier run left behind.
        for session_id in await self.state.pending_sessions():
            self.coalescer.touch(session_id)
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
                self.archive = await ShareStore.open(config.archive)
            transport = make_transport(config, self.archive)
            target = target_of(config)
            old = await self.delivery.replace_transport(transport, target, config.origin)
            self.transport = transport
            await _close(old)
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
        self.coalescer.window = config.window
        self.metrics.health.max_failures = config.health_max_failures
        self.metrics.health.period = config.health_period
        if "sessions" in changed:
            self.detector = ChangeDetector(self.db, only_shared=config.sessions == "shared")
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


async def run(config: Config, reload_config: Callable[[], Config] | None = None) -> int:
    """The daemon. `reload_config` reads the config again (SIGHUP); None: SIGHUP is ignored."""
    stop = asyncio.Event()
    hangup = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hangup.set)
    lock = _lock(config)
    try:
        await _wait_for_database(config, stop)
        if stop.is_set():
            return 0
        return await _serve_until(stop, hangup, config, reload_config)
    finally:
        lock.release()


async def _serve_until(
    stop: asyncio.Event,
    hangup: asyncio.Event,
    config: Config,
    reload_config: Callable[[], Config] | None,
) -> int:
    pipeline = await Pipeline.open(config, RetryPolicy(backoff_max=config.backoff_max))
    helpers: list[asyncio.Task[None]] = []
    try:
        async with serving_metrics(
            config.metrics_address, pipeline.metrics, pipeline.refresh_pending
        ):
            # Ready: the state, the database and the endpoint are open.
            systemd.notify("READY=1")
            helpers.append(asyncio.create_task(_watchdog(pipeline), name="watchdog"))
            helpers.append(
                asyncio.create_task(_reloader(pipeline, hangup, reload_config), name="reload")
            )
            log.info(
                "syncd running",
                db=str(config.db),
                transport=config.transport,
                url=config.url or str(config.archive),
                sessions=config.sessions,
            )
            await _follow(pipeline, stop)
            systemd.notify("STOPPING=1")
            helpers[-1].cancel()  # no reload while stopping
            log.info("stopping: flushing pending items", seconds=STOP_FLUSH_SECONDS)
            try:
                # A commit whose file event had not arrived yet still belongs in the flush.
                await asyncio.wait_for(_capture_and_drain(pipeline), STOP_FLUSH_SECONDS)
            except TimeoutError:
                log.warning(
                    "flush did not finish in time; what is left stays pending for next start"
                )
                await pipeline.coalescer.cancel()
    finally:
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        await pipeline.coalescer.cancel()
        await pipeline.close()
    return 0


async def _follow(pipeline: Pipeline, stop: asyncio.Event) -> None:
    """Capture changes as the database moves, until `stop`."""
    config = pipeline.config
    # Read before the capture: a commit landing during it then still differs at its wake-up.
    last_version = await pipeline.db.data_version()
    await pipeline.capture(deep=True)
    async for wakeup in wakeups(config.db, config.poll_interval, stop):
        pipeline.metrics.record_wakeup(wakeup.value)
        version = await pipeline.db.data_version()
        if wakeup is Wakeup.FILE and version == last_version:
            continue  # a file event without a commit (a checkpoint, our own read)
        last_version = version
        await pipeline.capture(deep=wakeup is Wakeup.DEEP)


async def _reloader(
    pipeline: Pipeline, hangup: asyncio.Event, reload_config: Callable[[], Config] | None
) -> None:
    while True:
        await hangup.wait()
        hangup.clear()
        if reload_config is None:
            log.warning("SIGHUP ignored: this daemon was started without a config to reload")
            continue
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        systemd.notify(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")
        try:
            await pipeline.reload(reload_config())
        except UserError as error:
            log.error("config not reloaded; the running settings stay", error=str(error))
        except Exception as error:  # a failed reload must not stop the daemon
            log.exception("config reload failed; the running settings stay", error=str(error))
        systemd.notify("READY=1")


async def _capture_and_drain(pipeline: Pipeline, *, deep: bool = False) -> None:
    await pipeline.capture(deep=deep)
    await pipeline.coalescer.drain()


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
        config, RetryPolicy(backoff_max=min(config.backoff_max, 10.0), give_up_after=give_up_after)
    )
    try:
        dead_before = len(await pipeline.state.dead_letters())
        pipeline.coalescer.window = 0.0  # catching up: no window to wait for
        if show_progress:
            # From the start: sessions are delivered while the rest is still being captured.
            async with follow_backfill(pipeline.state, lambda: pipeline.metrics.items_delivered):
                await _capture_and_drain(pipeline, deep=True)
        else:
            await _capture_and_drain(pipeline, deep=True)
        pending = await pipeline.state.pending_sessions()
        dead = len(await pipeline.state.dead_letters()) - dead_before
    finally:
        await pipeline.coalescer.cancel()
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


def _lock(config: Config) -> StateLock:
    lock = StateLock(config.state)
    try:
        lock.acquire()
    except StateLocked as held:
        raise UserError(
            f"another syncd (pid {held.pid or 'unknown'}) is already running on state "
            f"{config.state}: stop it first, or give this one its own --state"
        ) from None
    return lock


async def _report(config: Config) -> list[dict]:
    state = await StateStore.open(config.state)
    try:
        return await state.session_report()
    finally:
        await state.close()


async def _wait_for_database(config: Config, stop: asyncio.Event) -> None:
    """A service installed before opencode's first run waits for its database."""
    if config.db.is_file():
        return
    log.warning(
        "opencode database not found yet; waiting for opencode to create it", db=str(config.db)
    )
    # Started and healthy, only idle: ready for systemd (a start that never completes would be
    # restarted in a loop), pinging its watchdog while it waits.
    interval = systemd.watchdog_interval()
    watchdog = "\nWATCHDOG=1" if interval else ""
    period = min(WAIT_FOR_DB_SECONDS, interval / 2) if interval else WAIT_FOR_DB_SECONDS
    systemd.notify(f"READY=1\nSTATUS=waiting for the opencode database at {config.db}")
    # A database that just appeared may still be migrating (opencode creates the file, then
    # its tables): it gets SCHEMA_SETTLE_SECONDS to become one syncd can read.
    settled_by: float | None = None
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        if config.db.is_file():
            problem = await _unreadable(config.db)
            if problem is None:
                return
            settled_by = settled_by or loop.time() + SCHEMA_SETTLE_SECONDS
            if loop.time() > settled_by:
                raise problem
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period)
        systemd.notify(f"STATUS=waiting for the opencode database at {config.db}{watchdog}")


async def _unreadable(path: Path) -> UserError | None:
    """Why the database at `path` cannot be read yet, or None when it can."""
    try:
        db = await OpencodeDb.open(path)
    except UserError as problem:
        return problem
    await db.close()
    return None


async def _watchdog(pipeline: Pipeline) -> None:
    """Pings systemd from the event loop itself, so a stuck loop gets the service restarted;
    with each ping, a STATUS= line (what `systemctl status` shows) and fresh pending gauges."""
    interval = systemd.watchdog_interval()
    period = min(interval / 2, STATUS_EVERY_SECONDS) if interval else STATUS_EVERY_SECONDS
    while True:
        try:
            items, lag = await pipeline.refresh_pending()
            status = (
                f"STATUS={items} item(s) pending, oldest {lag:.0f}s; "
                f"{pipeline.coalescer.busy} session(s) in flight"
            )
        except Exception as error:  # the ping matters more than the status line
            status = f"STATUS=cannot read the state: {error}"
        systemd.notify(status + ("\nWATCHDOG=1" if interval else ""))
        await asyncio.sleep(period)


async def _close(resource: object) -> None:
    closer = getattr(resource, "aclose", None) or resource.close  # type: ignore[attr-defined]
    with contextlib.suppress(Exception):
        await closer()
