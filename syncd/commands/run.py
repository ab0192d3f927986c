"""`syncd run`: the daemon. It tails the database until SIGTERM/SIGINT, then flushes what is
pending (within STOP_FLUSH_SECONDS) and exits 0; SIGHUP reloads the config in place. Under
systemd it reports READY, STATUS and STOPPING and feeds the watchdog."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from .. import systemd
from ..config import Config, load_config
from ..errors import UserError
from ..metrics_endpoint import serving_metrics
from ..pipeline.deliver import RetryPolicy
from ..pipeline.pipeline import Pipeline, capture_and_drain, follow
from ..source import json_store
from ..source.storage import storage_dir
from ..state.lock import StateLock, StateLocked
from . import Subcommands, config_flags

log = structlog.get_logger("syncd")
STOP_FLUSH_SECONDS = 20.0
WAIT_FOR_DB_SECONDS = 2.0
STATUS_EVERY_SECONDS = 5.0  # STATUS= line and pending gauges, when no watchdog asks for more


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    help = "follow the opencode database and sync every change until stopped"
    sub = commands.add_parser("run", parents=[common], help=help, description=help)
    sub.set_defaults(command=_command)


def _command(config: Config, args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    # SIGHUP re-reads every layer with the same flags, so the command line keeps winning.
    return run(config, reload_config=lambda: load_config(config_flags(args)))


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
            await follow(pipeline, stop)
            systemd.notify("STOPPING=1")
            helpers[-1].cancel()  # no reload while stopping
            log.info("stopping: flushing pending items", seconds=STOP_FLUSH_SECONDS)
            try:
                # A commit whose file event had not arrived yet still belongs in the flush.
                await asyncio.wait_for(capture_and_drain(pipeline), STOP_FLUSH_SECONDS)
            except TimeoutError:
                log.warning(
                    "flush did not finish in time; what is left stays pending for next start"
                )
                await pipeline.window.cancel()
    finally:
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        await pipeline.window.cancel()
        await pipeline.close()
    return 0


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


async def _wait_for_database(config: Config, stop: asyncio.Event) -> None:
    """A service installed before opencode's first run waits for its database (an opencode
    that keeps its sessions as JSON files needs none)."""
    if config.db.is_file():
        return
    storage = storage_dir(config.db)
    if json_store.has_sessions(storage):
        log.info(
            "no opencode database; delivering the JSON sessions under storage/ "
            "(opencode <= 1.1) until opencode creates one",
            db=str(config.db),
            sessions=json_store.count_sessions(storage),
        )
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
    # Once the file is there, a schema still being created (or one syncd cannot read) holds
    # only the capture: the daemon reads it again at every wake-up (pipeline.follow).
    while not (stop.is_set() or config.db.is_file() or json_store.has_sessions(storage)):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period)
        systemd.notify(f"STATUS=waiting for the opencode database at {config.db}{watchdog}")


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
                f"{pipeline.window.busy} session(s) in flight"
            )
            if pipeline.metrics.health.blocked:
                status += f"; waiting: {pipeline.metrics.health.blocked}"
        except Exception as error:  # the ping matters more than the status line
            status = f"STATUS=cannot read the state: {error}"
        systemd.notify(status + ("\nWATCHDOG=1" if interval else ""))
        await asyncio.sleep(period)
