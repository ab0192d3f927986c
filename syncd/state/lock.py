"""One daemon per state database: an advisory lock beside it, holding the owner's pid.

The kernel drops a `flock` when its process dies, `kill -9` included, so a stale lock file
never blocks a restart. The lock file is syncd's own (`syncd.files`): never a link, in a
directory no other user can write, so rewriting the pid in it touches nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from ..errors import UserError, os_problem
from ..files import open_own_file, private_directory


class StateLocked(Exception):
    def __init__(self, path: Path, pid: str) -> None:
        super().__init__(f"state {path} is in use by syncd pid {pid or 'unknown'}")
        self.pid = pid


class StateLock:
    def __init__(self, state_path: Path) -> None:
        self.path = state_path.with_name(state_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            private_directory(self.path.parent)
            fd = open_own_file(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise UserError(
                f"cannot create the state lock {self.path}: {os_problem(exc, self.path)}; "
                "choose a writable state location (--state, or state in the config file)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise StateLocked(self.path, pid) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def holder(self) -> str | None:
        """Who holds the lock now, without taking it: the holder's pid ("" when it wrote
        none), or None when no process does (no daemon runs on this state)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None  # no lock file: nothing ever ran on this state
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            return pid
        os.close(fd)  # closing drops the shared lock just taken
        return None

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None
