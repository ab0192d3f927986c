"""Reads the newest state of pending entities, at send time, as SyncData items.

Reading at send time (rather than copying rows when they are captured) makes the latest state
win by construction and keeps the state database small; an entity whose row is gone was
deleted with its session, and a row that cannot be parsed is reported, never dropped.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from ..model import PendingItem, SyncItem
from . import storage, syncdata
from .models import ModelCatalogue
from .opencode_db import OpencodeDb

# SQLite's default limit on host parameters is well above this; chunks keep statements small.
CHUNK = 500


@dataclass
class Loaded:
    items: list[tuple[PendingItem, SyncItem]] = field(default_factory=list)
    gone: list[PendingItem] = field(default_factory=list)
    bad: list[tuple[PendingItem, str, Any]] = field(default_factory=list)
    diffs: list[Any] | None = None  # the session's diffs, when its row was read
    models: list[dict[str, Any]] = field(default_factory=list)


async def load(db: OpencodeDb, pending: list[PendingItem], catalogue: ModelCatalogue) -> Loaded:
    loaded = Loaded()
    by_kind: dict[str, list[PendingItem]] = {}
    for item in pending:
        if isinstance(item.item_id, str):
            by_kind.setdefault(item.kind, []).append(item)
        else:  # TEXT that is not UTF-8, read as bytes: no query finds the row by it again
            reason = f"{item.kind} id {item.item_id!r} is not valid UTF-8 text"
            loaded.bad.append((item, reason, None))

    def fetch(conn: sqlite3.Connection) -> dict[tuple[str, str], Any]:
        rows: dict[tuple[str, str], Any] = {}
        for kind, items in by_kind.items():
            for start in range(0, len(items), CHUNK):
                ids = [item.item_id for item in items[start : start + CHUNK]]
                marks = ",".join("?" * len(ids))
                for fetched in conn.execute(f"SELECT * FROM {kind} WHERE id IN ({marks})", ids):
                    rows[(kind, fetched["id"])] = fetched
        return rows

    rows = await db.read(fetch)
    model_refs: set[tuple[str, str]] = set()
    for item in pending:
        if not isinstance(item.item_id, str):
            continue  # dead-lettered above
        row = rows.get((item.kind, item.item_id))
        if row is None:
            loaded.gone.append(item)
            continue
        try:
            converted = _convert(item.kind, row)
            if item.kind == "session":
                stored = storage.read_diffs(db.storage, item.item_id)
                loaded.diffs = stored if stored is not None else syncdata.session_diffs(row)
        except syncdata.BadRow as exc:
            loaded.bad.append((item, str(exc), _raw(row)))
            continue
        except Exception as exc:  # whatever one row does, it is that row's problem alone
            reason = f"{item.kind} {item.item_id} cannot be read: {type(exc).__name__}: {exc}"
            loaded.bad.append((item, reason, _raw(row)))
            continue
        loaded.items.append((item, converted))
        if item.kind == "message" and (ref := syncdata.user_model_ref(converted)):
            model_refs.add(ref)
    loaded.models = [catalogue.describe(*ref) for ref in sorted(model_refs)]
    return loaded


def _convert(kind: str, row: Any) -> SyncItem:
    if bytes in map(type, row):  # rare (text that is not UTF-8, a blob): find which column
        for column in row.keys():  # noqa: SIM118 - sqlite rows are not mappings
            if column != "data" and isinstance(row[column], bytes):
                raise syncdata.BadRow(f"{kind} {row['id']}: {column} is not valid UTF-8 text")
    if kind == "session":
        return syncdata.session_item(row)
    if kind == "message":
        return syncdata.message_item(row)
    return syncdata.part_item(row)


def _raw(row: Any) -> Any:
    """A row as a JSON-safe dict for the dead letter (bytes shown as replacement text)."""
    return {
        key: row[key].decode("utf-8", "replace") if isinstance(row[key], bytes) else row[key]
        for key in row.keys()  # noqa: SIM118 - sqlite rows are not mappings
    }
