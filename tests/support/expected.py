"""The expected final state, read straight off an opencode database, and the comparison with
what a receiver holds.

Messages and parts are rebuilt the way CONTRACTS.md section 1 defines them
(`{"id", "sessionID", **data}`, parts also `"messageID"`); comparison is field by field and
JSON-type strict (1 is not 1.0 is not True), so a lossy round trip anywhere shows up.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

Snapshot = dict[str, dict[str, Any]]


def database_snapshot(db_path: Path) -> Snapshot:
    """{session_id: {"session": row, "messages": {id: Message}, "parts": {id: Part}}}."""
    connection = sqlite3.connect(
        f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=10, isolation_level=None
    )
    connection.row_factory = sqlite3.Row
    try:
        connection.execute("BEGIN")  # one read transaction: a consistent snapshot
        try:
            sessions = connection.execute("SELECT * FROM session ORDER BY id").fetchall()
            messages = connection.execute(
                "SELECT id, session_id, data FROM message ORDER BY id"
            ).fetchall()
            parts = connection.execute(
                "SELECT id, session_id, message_id, data FROM part ORDER BY id"
            ).fetchall()
        finally:
            connection.execute("ROLLBACK")
    finally:
        connection.close()
    snapshot: Snapshot = {
        row["id"]: {"session": dict(row), "messages": {}, "parts": {}} for row in sessions
    }
    for row in messages:
        snapshot[row["session_id"]]["messages"][row["id"]] = {
            "id": row["id"],
            "sessionID": row["session_id"],
            **json.loads(row["data"]),
        }
    for row in parts:
        snapshot[row["session_id"]]["parts"][row["id"]] = {
            "id": row["id"],
            "sessionID": row["session_id"],
            "messageID": row["message_id"],
            **json.loads(row["data"]),
        }
    return snapshot


def json_differences(expected: Any, actual: Any, path: str = "$") -> list[str]:
    """Every place where two JSON values differ, in value or in JSON type."""
    if type(expected) is not type(actual):
        return [
            f"{path}: expected {expected!r} ({type(expected).__name__}), "
            f"got {actual!r} ({type(actual).__name__})"
        ]
    if isinstance(expected, dict):
        differences = []
        for key in sorted(expected.keys() | actual.keys()):
            if key not in actual:
                differences.append(f"{path}.{key}: missing (expected {expected[key]!r})")
            elif key not in expected:
                differences.append(f"{path}.{key}: unexpected {actual[key]!r}")
            else:
                differences += json_differences(expected[key], actual[key], f"{path}.{key}")
        return differences
    if isinstance(expected, list):
        if len(expected) != len(actual):
            return [f"{path}: expected {len(expected)} items, got {len(actual)}: {actual!r}"]
        differences = []
        for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
            differences += json_differences(want, got, f"{path}[{index}]")
        return differences
    return [] if expected == actual else [f"{path}: expected {expected!r}, got {actual!r}"]


def receiver_differences(expected: dict[str, Any], share: dict[str, Any]) -> list[str]:
    """Differences between one session of a snapshot and a share as read from the receiver
    (`ShareStore.read_share`: messages and parts are lists)."""
    row = expected["session"]
    session = share.get("session")
    differences: list[str] = []
    if not isinstance(session, dict):
        differences.append(f"session {row['id']}: no session object on the receiver")
    else:
        wanted_session = {
            "id": row["id"],
            "slug": row["slug"],
            "title": row["title"],
            "directory": row["directory"],
            "version": row["version"],
            "time.created": row["time_created"],
            "time.updated": row["time_updated"],
        }
        got_session = {
            **{key: session.get(key) for key in ("id", "slug", "title", "directory", "version")},
            "time.created": session.get("time", {}).get("created"),
            "time.updated": session.get("time", {}).get("updated"),
        }
        differences += json_differences(wanted_session, got_session, f"session[{row['id']}]")
    for kind in ("messages", "parts"):
        received = {item.get("id"): item for item in share.get(kind, [])}
        differences += json_differences(expected[kind], received, kind)
    return differences


def assert_receiver_matches(expected: dict[str, Any], share: dict[str, Any]) -> None:
    """`expected` is one session of `database_snapshot(...)`; `share` is `read_share(share_id)`."""
    differences = receiver_differences(expected, share)
    if differences:
        shown = "\n  ".join(differences[:40])
        more = f"\n  ... and {len(differences) - 40} more" if len(differences) > 40 else ""
        raise AssertionError(
            f"receiver differs from opencode's database for session "
            f"{expected['session']['id']} ({len(differences)} differences):\n  {shown}{more}"
        )
