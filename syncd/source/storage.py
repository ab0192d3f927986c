"""opencode's JSON storage beside its database (`<data>/opencode/storage/`).

opencode 1.1 to 1.15 keep a session's file diffs in `storage/session_diff/<session>.json`
rather than in the database (docs/opencode-releases.md). opencode writes that file right after
it updates the session's row, so the file's modification time is the diff's own stamp: a diff
newer than what was captured of its session means the session must be read again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from .. import jsontext

log = structlog.get_logger("syncd.source")


def storage_dir(db_path: Path) -> Path:
    return db_path.parent / "storage"


def diff_file(storage: Path, session_id: str) -> Path | None:
    """The session's diff file; None for an id that is not a plain file name."""
    if not session_id or "/" in session_id or session_id.startswith("."):
        return None
    return storage / "session_diff" / f"{session_id}.json"


def diff_stamp(storage: Path, session_id: str) -> int | None:
    """When the session's diff file was last written (ms since the epoch), if it has one."""
    path = diff_file(storage, session_id)
    try:
        return path.stat().st_mtime_ns // 1_000_000 if path else None
    except OSError:
        return None


def read_diffs(storage: Path, session_id: str) -> list[Any] | None:
    """The session's diffs from its file; None when it has none, or when the file cannot be
    read as a JSON array right now (opencode may be writing it: its next write is a new stamp,
    and the session is read again then)."""
    path = diff_file(storage, session_id)
    if path is None:
        return None
    try:
        value = jsontext.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.warning("diff file unreadable for now", path=str(path), error=str(error))
        return None
    if not isinstance(value, list):
        log.warning("diff file is not a JSON array; ignored", path=str(path))
        return None
    return value
