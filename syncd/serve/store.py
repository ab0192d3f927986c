"""The receiver's archive: shares and their merged content in one SQLite file.

Merge rules follow opencode's share server (packages/enterprise/src/core/share.ts): every item
has a key (`session`, `message/<id>`, `part/<messageID>/<id>`, `session_diff`, `model`) and the
newest item with a key replaces the older one, so `session_diff` and `model` arrays are
replaced whole. A sync batch is checked completely before anything is written and applied in
one transaction, so a bad item leaves the share as it was. Items are stored as the JSON text
they arrived as, so numbers keep their type.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiosqlite

from ..errors import UserError
from ..sqlite import open_private, transaction
from ..transports.base import Share

MIGRATIONS = Path(__file__).with_name("migration")
SYNC_KINDS = ("session", "message", "part", "session_diff", "model")
# Batch keys remembered per share; a lost acknowledgement is retried long before this many
# newer batches arrive.
DEDUP_KEYS_KEPT = 1000
SHARE_ID_LENGTH = 8


class ShareNotFound(Exception):
    def __init__(self) -> None:
        super().__init__("Share not found")


class InvalidSecret(Exception):
    def __init__(self) -> None:
        super().__init__("Invalid secret")


class BadSyncData(ValueError):
    """A sync batch (or create request) that cannot be stored; the message names the item."""


def now_ms() -> int:
    return int(time.time() * 1000)


def _json_text(value: Any, where: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise BadSyncData(f"{where}: data is not plain JSON ({exc})") from exc


def _require_str(data: dict[str, Any], field: str, where: str) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value:
        raise BadSyncData(f"{where}: data.{field} must be a non-empty string")
    return value


def item_key(index: int, item: Any) -> tuple[str, str, str]:
    """(merge key, kind, JSON text) of one SyncData item; BadSyncData names what is wrong."""
    where = f"item {index}"
    if not isinstance(item, dict):
        raise BadSyncData(f"{where}: must be an object with 'type' and 'data'")
    kind = item.get("type")
    if kind not in SYNC_KINDS:
        raise BadSyncData(f"{where}: type {kind!r} is not one of {', '.join(SYNC_KINDS)}")
    where = f"item {index} ({kind})"
    if "data" not in item:
        raise BadSyncData(f"{where}: 'data' is missing")
    data = item["data"]
    if kind in ("session_diff", "model"):
        if not isinstance(data, list):
            raise BadSyncData(f"{where}: data must be an array")
        key = kind
    elif not isinstance(data, dict):
        raise BadSyncData(f"{where}: data must be an object")
    elif kind == "session":
        key = "session"
    elif kind == "message":
        key = f"message/{_require_str(data, 'id', where)}"
    else:
        key = f"part/{_require_str(data, 'messageID', where)}/{_require_str(data, 'id', where)}"
    return key, kind, _json_text(data, where)


class ShareStore:
    def __init__(self, path: Path, conn: aiosqlite.Connection) -> None:
        self.path = path
        self._conn = conn
        # One connection: reads must not see another call's transaction half done.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> ShareStore:
        """Open (creating, mode 0600: it holds share secrets) and migrate the archive."""
        try:
            conn = await open_private(path, MIGRATIONS)
        except (OSError, aiosqlite.Error) as exc:
            raise UserError(f"cannot open the archive {path}: {exc}") from exc
        return cls(path, conn)

    async def close(self) -> None:
        await self._conn.close()

    def _transaction(self) -> contextlib.AbstractAsyncContextManager[aiosqlite.Connection]:
        return transaction(self._conn, self._lock)

    async def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        async with self._lock, self._conn.execute(sql, tuple(params)) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]

    @staticmethod
    async def _fetch(db: aiosqlite.Connection, sql: str, params: Iterable[Any]) -> Any:
        async with db.execute(sql, tuple(params)) as cursor:
            return await cursor.fetchone()

    async def _check_secret(self, db: aiosqlite.Connection, share_id: str, secret: str) -> None:
        row = await self._fetch(db, "SELECT secret FROM share WHERE id = ?", (share_id,))
        if row is None:
            raise ShareNotFound()
        if not isinstance(secret, str) or not hmac.compare_digest(row[0].encode(), secret.encode()):
            raise InvalidSecret()

    # -- shares ----------------------------------------------------------------------------

    async def create_share(self, session_id: str, base_url: str) -> Share:
        """A new share of `session_id`. Its id is the session id's last 8 characters, as on
        opencode's server, or a random one when another share holds that id already."""
        if not isinstance(session_id, str) or not session_id:
            raise BadSyncData("sessionID must be a non-empty string")
        secret = str(uuid.uuid4())
        stamp = now_ms()
        async with self._transaction() as db:
            share_id = session_id[-SHARE_ID_LENGTH:]
            while await self._fetch(db, "SELECT 1 FROM share WHERE id = ?", (share_id,)):
                share_id = secrets.token_hex(SHARE_ID_LENGTH // 2)
            url = f"{base_url}/share/{share_id}"
            await db.execute(
                "INSERT INTO share (id, session_id, secret, url, time_created, time_updated) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (share_id, session_id, secret, url, stamp, stamp),
            )
        return Share(id=share_id, secret=secret, url=url)

    async def share_for_session(self, session_id: str, base_url: str) -> Share:
        """The newest share of `session_id`, created when there is none."""
        rows = await self._rows(
            "SELECT id, secret, url FROM share WHERE session_id = ? "
            "ORDER BY time_created DESC, rowid DESC LIMIT 1",
            (session_id,),
        )
        if rows:
            return Share(id=rows[0][0], secret=rows[0][1], url=rows[0][2])
        return await self.create_share(session_id, base_url)

    async def delete_share(self, share_id: str, secret: str) -> None:
        async with self._transaction() as db:
            await self._check_secret(db, share_id, secret)
            await db.execute("DELETE FROM share WHERE id = ?", (share_id,))

    async def list_shares(self) -> list[dict[str, Any]]:
        rows = await self._rows(
            "SELECT id, session_id, url, time_updated FROM share ORDER BY time_updated DESC, id"
        )
        return [
            {"id": row[0], "session_id": row[1], "url": row[2], "time_updated": row[3]}
            for row in rows
        ]

    # -- content ---------------------------------------------------------------------------

    async def sync(
        self, share_id: str, secret: str, data: list[dict[str, Any]], dedup_key: str | None = None
    ) -> int:
        """Merge `data` into the share; returns how many syncs the share has taken."""
        if not isinstance(data, list):
            raise BadSyncData("data must be an array of SyncData items")
        merged = [item_key(index, item) for index, item in enumerate(data)]
        stamp = now_ms()
        async with self._transaction() as db:
            await self._check_secret(db, share_id, secret)
            if dedup_key is not None:
                seen = await self._fetch(
                    db,
                    "SELECT 1 FROM share_sync WHERE share_id = ? AND dedup_key = ?",
                    (share_id, dedup_key),
                )
                if seen:
                    row = await self._fetch(
                        db, "SELECT sync_count FROM share WHERE id = ?", (share_id,)
                    )
                    return int(row[0])
                await db.execute(
                    "INSERT INTO share_sync (share_id, dedup_key, time_applied) VALUES (?, ?, ?)",
                    (share_id, dedup_key, stamp),
                )
                await db.execute(
                    "DELETE FROM share_sync WHERE share_id = ? AND rowid NOT IN (SELECT rowid "
                    "FROM share_sync WHERE share_id = ? ORDER BY rowid DESC LIMIT ?)",
                    (share_id, share_id, DEDUP_KEYS_KEPT),
                )
            await db.executemany(
                "INSERT INTO share_item (share_id, item_key, kind, data, time_updated) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (share_id, item_key) DO UPDATE SET "
                "kind = excluded.kind, data = excluded.data, time_updated = excluded.time_updated",
                [(share_id, key, kind, text, stamp) for key, kind, text in merged],
            )
            await db.execute(
                "UPDATE share SET sync_count = sync_count + 1, time_updated = ? WHERE id = ?",
                (stamp, share_id),
            )
            row = await self._fetch(db, "SELECT sync_count FROM share WHERE id = ?", (share_id,))
        return int(row[0])

    async def read_items(self, share_id: str) -> list[dict[str, Any]]:
        """The merged share as opencode's `GET /api/share/{id}/data` answers it: SyncData
        items ordered by merge key."""
        async with self._lock:
            if not await self._fetch(self._conn, "SELECT 1 FROM share WHERE id = ?", (share_id,)):
                raise ShareNotFound()
            async with self._conn.execute(
                "SELECT kind, data FROM share_item WHERE share_id = ? ORDER BY item_key",
                (share_id,),
            ) as cursor:
                rows = await cursor.fetchall()
        return [{"type": kind, "data": json.loads(text)} for kind, text in rows]

    async def read_share(self, share_id: str) -> dict[str, Any]:
        """The merged share: {"session", "messages", "parts", "diffs", "models"}; messages
        ordered by id, parts by message id then id."""
        document: dict[str, Any] = {
            "session": None,
            "messages": [],
            "parts": [],
            "diffs": [],
            "models": [],
        }
        for item in await self.read_items(share_id):
            kind, data = item["type"], item["data"]
            if kind == "session":
                document["session"] = data
            elif kind == "message":
                document["messages"].append(data)
            elif kind == "part":
                document["parts"].append(data)
            elif kind == "session_diff":
                document["diffs"] = data
            else:
                document["models"] = data
        return document
