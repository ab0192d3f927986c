"""Errors that reach the user as one line and a non-zero exit, never as a traceback."""

from __future__ import annotations

import errno
from pathlib import Path


class UserError(Exception):
    """A mistake in input the user controls (config, flags, database path, server answers).

    The message names the problem and what to do about it; the CLI prints it and exits with
    `exit_code`.
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


def os_problem(error: OSError, subject: Path) -> str:
    """An OSError about `subject` (or a directory on its way) in words: why, and which path
    when it is not `subject` itself (a file where a directory must be is named as such)."""
    where = error.filename
    if where is None or str(where) == str(subject):
        return error.strerror or str(error)
    if error.errno in (errno.EEXIST, errno.ENOTDIR):
        for path in (Path(where), *Path(where).parents):
            if path.exists() and not path.is_dir():
                return f"{path} is a file, not a directory"
    return f"{where}: {error.strerror or error}"
