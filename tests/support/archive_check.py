"""The pipeline's config in a test's own directories, and what opencode holds against what the
archive got."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from syncd.archive.sqlite import SqliteArchive
from syncd.config import Config, load_config
from syncd.state.store import StateStore


def make_config(tmp_path: Path, db: Path, **overrides: object) -> Config:
    env = {"HOME": str(tmp_path / "home")}
    flags = {"db": str(db), "state": str(tmp_path / "state.db"),
             "archive": str(tmp_path / "archive.db"), **overrides}  # fmt: skip
    return load_config(flags, env)


def expected_state(db: Path) -> dict[str, dict]:
    """session id -> {messages, parts} as the SDK objects, read straight from opencode."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    out: dict[str, dict] = {}
    for (sid,) in conn.execute("SELECT id FROM session"):
        messages = {
            r["id"]: {**json.loads(r["data"]), "id": r["id"], "sessionID": sid}
            for r in conn.execute("SELECT * FROM message WHERE session_id = ?", (sid,))
        }
        parts = {
            r["id"]: {
                **json.loads(r["data"]),
                "id": r["id"],
                "sessionID": sid,
                "messageID": r["message_id"],
            }
            for r in conn.execute("SELECT * FROM part WHERE session_id = ?", (sid,))
        }
        out[sid] = {"messages": messages, "parts": parts}
    conn.close()
    return out


async def archived(config: Config) -> dict[str, dict]:
    state = await StateStore.open(config.state)
    store = await SqliteArchive.open(config.archive)
    try:
        out = {}
        for row in await state.session_report():
            known = await state.share(row["session_id"], f"local:{config.archive}")
            assert known is not None, row
            out[row["session_id"]] = copy_of(await store.read_share(known[0].id))
        return out
    finally:
        await state.close()
        await store.close()


async def archived_copies(archive: Path) -> dict[str, dict]:
    """session id -> its copy, for every share in the archive (without syncd's state: safe
    while a daemon writes both)."""
    if not archive.is_file():
        return {}
    store = await SqliteArchive.open(archive)
    try:
        return {
            share["session_id"]: copy_of(await store.read_share(share["id"]))
            for share in await store.list_shares()
        }
    finally:
        await store.close()


def copy_of(share: dict) -> dict:
    """A merged share as {session, messages by id, parts by id, diffs}."""
    return {
        "session": share["session"],
        "messages": {m["id"]: m for m in share["messages"]},
        "parts": {p["id"]: p for p in share["parts"]},
        "diffs": share["diffs"],
    }
