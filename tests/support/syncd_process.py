"""`syncd run` as a real subprocess (the installed package, `python -m syncd`), for end-to-end
tests: started, SIGTERMed or SIGKILLed like a service manager would, its log kept for failures."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from syncd.commands.run import STOP_FLUSH_SECONDS

# syncd flushes for up to STOP_FLUSH_SECONDS after SIGTERM, then closes what it holds.
STOP_TIMEOUT = STOP_FLUSH_SECONDS + 10.0


async def run_syncd(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120.0
) -> tuple[int, str]:
    """`python -m syncd ARGS` to its end: exit code and everything it printed (stdout and
    stderr together); killed, and the test failed, after `timeout` seconds."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "syncd", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=None if env is None else dict(env),
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, output.decode()


def _interruptible() -> None:
    """SIGINT as a terminal's Ctrl-C delivers it, whatever the test run inherited: a shell
    starts a background job with SIGINT ignored, and an ignored signal stays ignored across
    exec (Python then installs no handler for it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class SyncdProcess:
    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.args = args
        self.env = dict(env)
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        assert self.process is None or self.process.returncode is not None, "already running"
        with self.log_path.open("a") as log:
            log.write(f"--- start {self.starts}: syncd {' '.join(self.args)}\n")
            log.flush()
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "syncd",
                *self.args,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_interruptible,
            )
        self.starts += 1

    async def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then its exit code; fails (after killing it) if it takes over `timeout`."""
        process = self._running()
        process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            await self.kill()
            raise AssertionError(f"syncd did not exit within {timeout:g}s of SIGTERM") from None

    async def kill(self) -> None:
        """SIGKILL: a crash, as far as syncd can tell."""
        process = self._running()
        process.kill()
        await process.wait()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def _running(self) -> asyncio.subprocess.Process:
        assert self.process is not None and self.process.returncode is None, "syncd is not running"
        return self.process


@contextlib.asynccontextmanager
async def syncd_process(
    args: list[str], env: Mapping[str, str], log_path: Path
) -> AsyncIterator[SyncdProcess]:
    """A started `syncd`; whatever happens in the test, no process is left behind."""
    syncd = SyncdProcess(args, env, log_path)
    await syncd.start()
    try:
        yield syncd
    finally:
        if syncd.process is not None and syncd.process.returncode is None:
            syncd.process.kill()
            await syncd.process.wait()


def state_shares(state_db: Path) -> dict[str, str]:
    """session id -> share id, as syncd's state database records them (read after syncd exits)."""
    connection = sqlite3.connect(f"{state_db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return dict(connection.execute("SELECT session_id, share_id FROM share").fetchall())
    finally:
        connection.close()


def state_dead_letters(state_db: Path) -> list[tuple[str, str, str]]:
    connection = sqlite3.connect(f"{state_db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return connection.execute("SELECT session_id, kind, item_id FROM dead_letter").fetchall()
    finally:
        connection.close()
