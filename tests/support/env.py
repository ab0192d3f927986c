"""A test's own environment, ports and waiting on a condition."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

WAIT_SECONDS = 30.0


def isolated_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test's environment with its own XDG homes, so no developer config leaks in."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "NOTIFY_", "WATCHDOG_"))
    }
    home = tmp_path / "home"
    return {**env, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, log: Callable[[], str]
) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{log()[-4000:]}")
        await asyncio.sleep(0.05)


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Return as soon as `predicate()` holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
