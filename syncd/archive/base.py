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
order, with no gaps across restarts or processes. `wait_for_change(share_id, after)` returns
as soon as the share moves past `after`, whichever process (or replica) wrote it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
import time
import uuid
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from ..model import Share, SyncItem

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


class StoreUnavailable(Exception):
    """The store cannot be reached now (database down, restarting, out of connections); the
    request may succeed later. Whether an interrupted write landed is unknown: a retry of the
    same batch (same dedup key) settles it. The message never holds a password."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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


def share_ids(session_id: str) -> Iterator[str]:
    """The ids to try, in order, for a new share of `session_id`: the session id's last
    characters, as on opencode's server, then random ones (another share holds it)."""
    yield session_id[-SHARE_ID_LENGTH:]
    while True:
        yield secrets.token_hex(SHARE_ID_LENGTH // 2)


def new_secret() -> str:
    return str(uuid.uuid4())


def secret_matches(stored: str, given: Any) -> bool:
    """Whether `given` is the share's secret, compared in constant time."""
    return isinstance(given, str) and hmac.compare_digest(stored.encode(), given.encode())


def check_session_id(session_id: Any) -> None:
    """BadSyncData unless a share can be made for `session_id`: a non-empty string without
    NUL (which PostgreSQL text cannot hold; both stores refuse it alike)."""
    if not isinstance(session_id, str) or not session_id:
        raise BadSyncData("sessionID must be a non-empty string")
    if "\x00" in session_id:
        raise BadSyncData("sessionID must not contain NUL characters")


class ChangeWaiters:
    """The tasks of this process waiting for a share to change, woken by whoever learns of a
    change (the writer itself, or a notification from another process)."""

    def __init__(self) -> None:
        self._events: defaultdict[str, set[asyncio.Event]] = defaultdict(set)

    @contextlib.contextmanager
    def watching(self, share_id: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._events[share_id].add(event)
        try:
            yield event
        finally:
            self._events[share_id].discard(event)
            if not self._events[share_id]:
                del self._events[share_id]

    def wake(self, share_id: str | None = None) -> None:
        """Wake the waiters on `share_id`, or every waiter (changes may have been missed)."""
        groups = self._events.values() if share_id is None else [self._events.get(share_id, set())]
        for events in groups:
            for event in events:
                event.set()


class ArchiveStore(ABC):
    """Shares and their merged content. Every method is safe to call concurrently."""

    # How often a waiter re-reads the share's sequence number even without a wake-up: writes
    # by a process that cannot wake this one (another process on the same SQLite file).
    change_poll_interval = 1.0

    def __init__(self) -> None:
        self.waiters = ChangeWaiters()

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def create_share(self, session_id: str, base_url: str) -> Share:
        """A new share of `session_id`. Its id is the session id's last 8 characters, as on
        opencode's server, or a random one when another share holds that id already."""

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

    @abstractmethod
    async def seq(self, share_id: str) -> int:
        """The share's newest sequence number (0 before its first item); ShareNotFound."""

    async def wait_for_change(self, share_id: str, after: int, timeout: float) -> bool:
        """Wait until the share's sequence number passes `after`, for at most `timeout`
        seconds; True when it did. ShareNotFound when the share is (or becomes) gone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self.waiters.watching(share_id) as woken:
            while True:
                woken.clear()  # before reading: a wake-up after the read is not lost
                if await self.seq(share_id) > after:
                    return True
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(remaining, self.change_poll_interval))

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
