"""syncd as a separate process, run the way a user runs it (`python -m syncd run|sync`), in an
isolated home so nothing of the machine's own opencode or syncd settings leaks in."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STOP_SECONDS = 25.0
SYNC_GIVE_UP_SECONDS = 1800


@dataclass(frozen=True)
class Setup:
    """Where one syncd instance reads, keeps state and delivers."""

    home: Path
    db: Path
    url: str
    transport: str
    window: float
    batch_max_items: int = 500

    def config_file(self) -> Path:
        path = self.home / "syncd.toml"
        path.write_text(
            f"window = {self.window}\n"
            f"batch_max_items = {self.batch_max_items}\n"
            'sessions = "all"\n'
            'log_format = "json"\n'
            'log_level = "warning"\n'
        )
        return path

    @property
    def archive(self) -> Path:
        """Where transport `local` (no url) keeps its embedded archive."""
        return self.home / "archive.db"

    def argv(self, command: str) -> list[str]:
        target = (
            ["--archive", str(self.archive)] if self.transport == "local" else ["--url", self.url]
        )
        return [
            sys.executable,
            "-m",
            "syncd",
            command,
            "--config",
            str(self.config_file()),
            "--db",
            str(self.db),
            "--state",
            str(self.home / "state.db"),
            *target,
            "--transport",
            self.transport,
            # `sync` gives up a fixed time after it started, however well delivery goes: a
            # measurement lets a slow transport (A2A's backfill takes minutes) finish.
            *(["--give-up-after", str(SYNC_GIVE_UP_SECONDS)] if command == "sync" else []),
        ]

    def env(self) -> dict[str, str]:
        home = str(self.home / "home")
        env = {key: value for key, value in os.environ.items() if not key.startswith("XDG_")}
        env.pop("OPENCODE_CONFIG", None)
        env.pop("OPENCODE_SHARE_TRANSPORT", None)
        env.pop("OPENCODE_SHARE_RPC_KEY", None)
        return {**env, "HOME": home, "PYTHONPATH": str(REPO)}


class Daemon:
    """A running `syncd run`; its CPU time and memory read from /proc."""

    def __init__(self, setup: Setup) -> None:
        setup.home.mkdir(parents=True, exist_ok=True)
        self.setup = setup
        self.log = setup.home / "syncd.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                setup.argv("run"), env=setup.env(), cwd=setup.home, stdout=log, stderr=log
            )

    def cpu_seconds(self) -> float:
        """utime + stime of every thread of the process so far."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc status")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"syncd run exited with {self.process.returncode}: {self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    async def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)


@contextlib.asynccontextmanager
async def running_daemon(setup: Setup):  # type: ignore[no-untyped-def]
    daemon = Daemon(setup)
    try:
        yield daemon
    finally:
        await daemon.stop()


@dataclass(frozen=True)
class SyncRun:
    exit_code: int
    seconds: float
    cpu_seconds: float
    max_rss_mb: float
    log: str


async def sync_once(setup: Setup) -> SyncRun:
    """`syncd sync` to completion: wall time, and the CPU time and peak RSS of that process
    alone (wait4's own accounting, not the sum over every child ever waited for)."""
    setup.home.mkdir(parents=True, exist_ok=True)
    log_path = setup.home / "sync.log"
    began = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            setup.argv("sync"), env=setup.env(), cwd=setup.home, stdout=log, stderr=log
        )
    try:
        _, status, usage = await asyncio.to_thread(os.wait4, process.pid, 0)
    except BaseException:
        process.kill()
        raise
    seconds = time.perf_counter() - began
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, not by Popen
    return SyncRun(
        exit_code=process.returncode,
        seconds=seconds,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        max_rss_mb=usage.ru_maxrss / 1024,
        log=log_path.read_text(errors="replace")[-2000:],
    )
