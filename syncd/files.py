"""syncd's own files (the state and archive databases, the lock): in a directory no other user
can write, created 0600 in a 0700 directory, and opened only directly, never through a link,
so that another user cannot make syncd write or truncate a file of their choosing."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from .errors import UserError

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIRECTORY_MODE = 0o700


def private_directory(directory: Path) -> None:
    """Create `directory` (0700; missing parents get the usual mode), or accept an existing
    one only when no other user can write to it: UserError (one line) otherwise. OSError when
    it cannot be made, for the caller to word."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=PRIVATE_DIRECTORY_MODE)
    info = directory.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(directory))
    if info.st_uid not in (os.geteuid(), 0):
        raise UserError(
            f"{directory} belongs to another user (uid {info.st_uid}), who could replace "
            "syncd's files in it: keep syncd's files in a directory of your own"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UserError(
            f"{directory} is writable by other users (mode {stat.S_IMODE(info.st_mode):o}), "
            f"who could replace syncd's files in it: run chmod go-w {directory}, or keep "
            "syncd's files in a directory of your own"
        )


def open_own_file(path: Path, flags: int) -> int:
    """A descriptor on `path` (created 0600 when `flags` has O_CREAT, never truncated),
    refusing a symbolic link, anything but a regular file, and a file with other names."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise refused_link(path) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{path} is not a regular file: move it away, syncd creates its own")
        if info.st_nlink > 1:
            raise UserError(
                f"{path} has other names (hard links): syncd writes only files of its own; "
                "move it away"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def prepare_database_file(path: Path) -> None:
    """Make `path` ready for SQLite: created 0600 when missing; an existing one must be a
    regular file with one name, not a link, and is made 0600. An existing database is never
    opened here: closing any descriptor on it would drop the POSIX locks SQLite holds on it
    for this process's other connections, and corrupt it ("How To Corrupt An SQLite Database
    File", section 2.2). The directory is private (checked before), so nothing can swap the
    file between this look and SQLite's open."""
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            PRIVATE_FILE_MODE,
        )  # fmt: skip
    except FileExistsError:
        pass
    else:
        os.close(fd)  # a new, empty file: no connection of this process has it open
        return
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise refused_link(path)
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{path} is not a regular file: move it away, syncd creates its own")
    if info.st_nlink > 1:
        raise UserError(
            f"{path} has other names (hard links): syncd writes only files of its own; move it away"
        )
    if stat.S_IMODE(info.st_mode) != PRIVATE_FILE_MODE:
        os.chmod(path, PRIVATE_FILE_MODE)


def refuse_links(*paths: Path) -> None:
    """UserError when any of `paths` is a symbolic link (files SQLite opens by name)."""
    for path in paths:
        if path.is_symlink():
            raise refused_link(path)


def refused_link(path: Path) -> UserError:
    return UserError(
        f"{path} is a symbolic link: syncd opens its own files only directly; replace the "
        "link with the file itself, or point the config at the real path"
    )
