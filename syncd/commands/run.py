"""`syncd run`: the daemon. It tails the database until SIGTERM/SIGINT, then flushes what is
pending (within STOP_FLUSH_SECONDS) and exits 0; SIGHUP reloads the config in place. Under
systemd it reports READY, STATUS and STOPPING and feeds the watchdog.

What can heal never stops it: an opencode database that does not exist yet, cannot be read
(not a database, corrupted, an unknown schema), is replaced or truncated is waited for
(unhealthy, the reason in the log, `syncd status`, /health and STATUS=), so that a service
manager never restarts it in a loop."""

from __future__ import annotations

import argparse
import asyncio
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
from ..pipeline.pipeline import Pipeline, follow
from ..state.lock import StateLock, StateLocked
from . import Subcommands, config_flags

log = structlog.get_logger("syncd")
STOP_FLUSH_SECONDS = 20.0
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
        return await _serve_until(stop, hangup, config, reload_config)
    finally:
        lock.release()


async def _serve_until(
    stop: asyncio.Event,
    hangup: asyncio.Event,
    config: Config,
    reload_config: Callable[[], Config] | None,
) -> int:
    policy = RetryPolicy(backoff_max=config.backoff_max, request_timeout=config.request_timeout)
    pipeline = await Pipeline.open(config, policy, daemon=True)
    helpers: list[asyncio.Task[None]] = []
    try:
        async with serving_metrics(
            config.metrics_address, pipeline.metrics, pipeline.refresh_pending
        ):
            # Ready: the state and the endpoint are open, the database too unless it is being
            # waited for (then STATUS= says so).
            problems = status_problems(pipeline)
            systemd.notify("READY=1" + (f"\nSTATUS={problems}" if problems else ""))
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
                await asyncio.wait_for(_flush(pipeline), STOP_FLUSH_SECONDS)
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


async def _flush(pipeline: Pipeline) -> None:
    # A commit whose file event had not arrived yet still belongs in the flush.
    await pipeline.look()
    await pipeline.window.drain()


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
            if problems := status_problems(pipeline):
                status = f"STATUS={problems}; {status.removeprefix('STATUS=')}"
        except Exception as error:  # the ping matters more than the status line
            status = f"STATUS=cannot read the state: {error}"
        systemd.notify(status + ("\nWATCHDOG=1" if interval else ""))
        await asyncio.sleep(period)


def status_problems(pipeline: Pipeline) -> str:
    """The conditions that make the daemon unhealthy, for systemd's STATUS= line."""
    return "; ".join(pipeline.conditions.current.values())
