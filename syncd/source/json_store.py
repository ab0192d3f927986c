"""The sessions opencode keeps as JSON files under `storage/`: every session of opencode <= 1.1,
and the ones a later release left there (1.17 and later do not import them into their
database: docs/opencode-releases.md).

They are read into TEMP tables of the source's own read-only connection, the way opencode's
own JSON import (1.2 to 1.15) maps them to rows; TEMP views named `session`, `message` and
`part` then show opencode.db's rows and these together, so every reader of the source reads
them like any other session. A session opencode.db has wins over its JSON files. A message's
or part's file time is its `time_updated`: the table watermarks see a file rewritten.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from .. import jsontext

log = structlog.get_logger("syncd.source")

# The session columns the JSON files fill (opencode 1.2's table, which its JSON import fills).
SESSION_COLUMNS = (
    "id", "project_id", "parent_id", "slug", "directory", "title", "version", "share_url",
    "summary_additions", "summary_deletions", "summary_files", "summary_diffs", "revert",
    "permission", "time_created", "time_updated", "time_compacting", "time_archived",
)  # fmt: skip
MESSAGE_COLUMNS = ("id", "session_id", "time_created", "time_updated", "data")
PART_COLUMNS = ("id", "message_id", "session_id", "time_created", "time_updated", "data")
TABLES = {"session": SESSION_COLUMNS, "message": MESSAGE_COLUMNS, "part": PART_COLUMNS}
# Where each kind's files are: storage/<kind>/<parent>/<id>.json (the parent of a session is
# its project, of a message its session, of a part its message).
PARENT_COLUMN = {"session": "project_id", "message": "session_id", "part": "message_id"}


def has_sessions(storage: Path) -> bool:
    return any(_files(storage, "session"))


def count_sessions(storage: Path) -> int:
    return sum(1 for _ in _files(storage, "session"))


async def create_tables(conn: aiosqlite.Connection) -> None:
    for kind, columns in TABLES.items():
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS json_{kind} "
            f"({', '.join(columns)}, stamp TEXT, PRIMARY KEY (id))"
        )
    await conn.execute(
        "CREATE INDEX IF NOT EXISTS temp.json_message_session ON json_message(session_id)"
    )
    await conn.execute("CREATE INDEX IF NOT EXISTS temp.json_part_session ON json_part(session_id)")


@dataclass(frozen=True)
class _File:
    kind: str
    id: str
    parent: str
    path: Path
    stamp: str  # modification time and size: a rewritten file has another


async def refresh(conn: aiosqlite.Connection, storage: Path) -> None:
    """Bring the JSON tables up to date with the files: read what is new or rewritten since
    the last refresh, drop what is gone. A file that cannot be parsed (opencode may be writing
    it) keeps its last rows until it can."""
    found = await asyncio.to_thread(_scan, storage)
    for kind in TABLES:
        async with conn.execute(f"SELECT id, stamp FROM json_{kind}") as cursor:
            known = {row[0]: row[1] for row in await cursor.fetchall()}
        files = found[kind]
        gone = [item_id for item_id in known if item_id not in files]
        await conn.executemany(f"DELETE FROM json_{kind} WHERE id = ?", [(i,) for i in gone])
        changed = [file for item_id, file in files.items() if known.get(item_id) != file.stamp]
        rows = await asyncio.to_thread(_rows, kind, changed)
        if kind == "part":
            rows = await _with_part_sessions(conn, rows)
        columns = (*TABLES[kind], "stamp")
        await conn.executemany(
            f"INSERT OR REPLACE INTO json_{kind} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})",
            [tuple(row[column] for column in columns) for row in rows],
        )


def view_statements(main_columns: dict[str, set[str]] | None) -> list[str]:
    """TEMP views `session`, `message`, `part`: opencode.db's rows (with `main_columns`, its
    columns per table) and the JSON sessions it does not have; with `main_columns` None, the
    JSON sessions alone."""
    statements = []
    for kind, json_columns in TABLES.items():
        statements.append(f"DROP VIEW IF EXISTS temp.{kind}")
        if main_columns is None:
            statements.append(
                f"CREATE TEMP VIEW {kind} AS SELECT {', '.join(json_columns)} FROM json_{kind}"
            )
            continue
        columns = sorted(main_columns[kind], key=lambda c: (c not in json_columns, c))
        picked = ", ".join(c if c in json_columns else f"NULL AS {c}" for c in columns)
        session_of = "id" if kind == "session" else "session_id"
        statements.append(
            f"CREATE TEMP VIEW {kind} AS SELECT {', '.join(columns)} FROM main.{kind} "
            f"UNION ALL SELECT {picked} FROM json_{kind} AS j WHERE NOT EXISTS "
            f"(SELECT 1 FROM main.session AS s WHERE s.id = j.{session_of})"
        )
    return statements


def drop_view_statements() -> list[str]:
    return [f"DROP VIEW IF EXISTS temp.{kind}" for kind in TABLES]


def _files(storage: Path, kind: str) -> Iterable[_File]:
    base = storage / kind
    try:
        parents = list(os.scandir(base))
    except OSError:
        return
    for parent in parents:
        if not parent.is_dir(follow_symlinks=False):
            continue
        try:
            entries = list(os.scandir(parent.path))
        except OSError:
            continue
        for entry in entries:
            if not entry.name.endswith(".json") or not entry.is_file(follow_symlinks=False):
                continue
            try:
                stat = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            yield _File(
                kind, entry.name[: -len(".json")], parent.name, Path(entry.path),
                f"{stat.st_mtime_ns}:{stat.st_size}",
            )  # fmt: skip


def _scan(storage: Path) -> dict[str, dict[str, _File]]:
    return {kind: {file.id: file for file in _files(storage, kind)} for kind in TABLES}


def _rows(kind: str, files: list[_File]) -> list[dict[str, Any]]:
    rows = []
    for file in files:
        try:
            data = jsontext.loads(file.path.read_bytes())
            stamp_ms = file.path.stat().st_mtime_ns // 1_000_000
        except (OSError, ValueError) as error:
            log.debug("JSON file unreadable for now", path=str(file.path), error=str(error))
            continue
        if isinstance(data, dict):
            rows.append(_row(kind, file, data, stamp_ms))
    return rows


def _row(kind: str, file: _File, data: dict[str, Any], stamp_ms: int) -> dict[str, Any]:
    """The file as opencode's JSON import makes it a row (ids from the file's path)."""
    time = _object(data, "time")
    if kind == "session":
        summary, share = _object(data, "summary"), _object(data, "share")
        return {
            "id": file.id,
            "project_id": file.parent,
            "parent_id": data.get("parentID"),
            "slug": data.get("slug", ""),
            "directory": data.get("directory", ""),
            "title": data.get("title", ""),
            "version": data.get("version", ""),
            "share_url": share.get("url"),
            "summary_additions": summary.get("additions"),
            "summary_deletions": summary.get("deletions"),
            "summary_files": summary.get("files"),
            "summary_diffs": _json_text(summary.get("diffs")),
            "revert": _json_text(data.get("revert")),
            "permission": _json_text(data.get("permission")),
            "time_created": time.get("created", stamp_ms),
            "time_updated": time.get("updated", stamp_ms),
            "time_compacting": time.get("compacting"),
            "time_archived": time.get("archived"),
            "stamp": file.stamp,
        }
    rest = {k: v for k, v in data.items() if k not in ("id", "sessionID", "messageID")}
    row = {
        "id": file.id,
        "time_created": time.get("created", stamp_ms),
        "time_updated": stamp_ms,
        "data": jsontext.dumps(rest),
        "stamp": file.stamp,
    }
    if kind == "message":
        return {**row, "session_id": file.parent}
    # A part names its session itself; opencode's import looks it up from the message.
    return {**row, "message_id": file.parent, "session_id": data.get("sessionID")}


async def _with_part_sessions(
    conn: aiosqlite.Connection, rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    kept = []
    for row in rows:
        if not row["session_id"]:
            async with conn.execute(
                "SELECT session_id FROM json_message WHERE id = ?", (row["message_id"],)
            ) as cursor:
                found = await cursor.fetchone()
            if found is None:
                continue  # its message is not there (yet)
            row["session_id"] = found[0]
        kept.append(row)
    return kept


def _object(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _json_text(value: Any) -> str | None:
    return None if value is None else jsontext.dumps(value)
