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
        private_directory(self.path.parent)
        fd = open_own_file(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise StateLocked(self.path, pid) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None
