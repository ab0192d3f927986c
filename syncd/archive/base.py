"""The archive store: shares and their merged content, the one interface the receiver and the
embedded archive (the local transport) both write through. Implementations: `sqlite`
(one file; the default and the embedded archive) and `postgres` (a team's receiver).

Merge rules follow opencode's share server (packages/enterprise/src/core/share.ts): every item
has a key (`session`, `message/<id>`, `part/<messageID>/<id>`, `session_diff`, `model`) and the
newest item with a key replaces the older one, so `session_diff` and `model` arrays are
replaced whole. A sync batch is checked completely before anything is written and applied in
one transaction, so a bad item leaves the share as it was. Items are stored as the JSON text
they arrived as, so numbers keep their type.

The change feed: each write gives the items it stores the share's next sequence numbers, so
`changes(share_id, after)` returns the newest state of everything written after `after`, in
order, with no gaps across restarts or processes.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from typing import Any

from .. import jsontext
from ..model import Share, SyncItem

SYNC_KINDS = ("session", "message", "part", "session_diff", "model")
# Batch keys remembered per share; a lost acknowledgement is retried long before this many
# newer batches arrive.
DEDUP_KEYS_KEPT = 1000
SHARE_ID_LENGTH = 8
# A share id must name the share in a url path as it is: a session id whose last characters
# are not all of these gets a random share id instead.
SHARE_ID_CHARACTERS = re.compile(r"[A-Za-z0-9_-]+")


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
        jsontext.check_depth(value)
        return jsontext.dumps(value)
    except jsontext.JsonTextError as exc:
        raise BadSyncData(f"{where}: data {exc}") from exc


def require_text(value: Any, name: str) -> str:
    """`value` as a non-empty string with a UTF-8 form (an id or a secret is stored and
    compared as text); BadSyncData naming `name` otherwise."""
    if not isinstance(value, str) or not value:
        raise BadSyncData(f"{name} must be a non-empty string")
    if not jsontext.is_text(value):
        raise BadSyncData(f"{name} holds a lone surrogate, which is not text")
    return value


def share_id_for(session_id: str) -> str | None:
    """The share id opencode's server derives from a session id (its last 8 characters), or
    None when those cannot name a share in a url."""
    share_id = session_id[-SHARE_ID_LENGTH:]
    return share_id if SHARE_ID_CHARACTERS.fullmatch(share_id) else None


def _require_str(data: dict[str, Any], field: str, where: str) -> str:
    return require_text(data.get(field), f"{where}: data.{field}")


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


class ArchiveStore(ABC):
    """Shares and their merged content. Every method is safe to call concurrently."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def create_share(self, session_id: str, base_url: str) -> Share:
        """A new share of `session_id`. Its id is the session id's last 8 characters, as on
        opencode's server (`share_id_for`), or a random one when another share holds that id
        already or those characters cannot name a share in a url."""

    @abstractmethod
    async def share_for_session(self, session_id: str, base_url: str) -> Share:
        """The newest share of `session_id`, created when there is none."""

    @abstractmethod
    async def delete_share(self, share_id: str, secret: str) -> None: ...

    @abstractmethod
    async def list_shares(self) -> list[dict[str, Any]]:
        """Every share: id, session_id, url, time_updated; newest first."""

    @abstractmethod
    async def sync(
        self, share_id: str, secret: str, data: list[Any], dedup_key: str | None = None
    ) -> int:
        """Merge `data` into the share; returns how many syncs the share has taken. A batch
        whose `dedup_key` was applied already changes nothing."""

    @abstractmethod
    async def read_items(self, share_id: str) -> list[SyncItem]:
        """The merged share as opencode's `GET /api/share/{id}/data` answers it: SyncData
        items ordered by merge key."""

    @abstractmethod
    async def changes(
        self, share_id: str, after: int, limit: int = 500
    ) -> list[tuple[int, SyncItem]]:
        """(seq, item) of the items written after sequence `after`, oldest first."""

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
