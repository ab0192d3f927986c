"""The archive store: shares and their merged content, the one interface the receiver and the
embedded archive (the local transport) both write through. Implementations: `sqlite`
(one file; the default and the embedded archive) and `postgres` (a team's receiver).

Merge rules follow opencode's share server (packages/enterprise/src/core/share.ts): every item
has a key (`session`, `message/<id>`, `part/<messageID>/<id>`, `session_diff`, `model`) and the
newest item with a key replaces the older one, so `session_diff` and `model` arrays are
replaced whole. A sync batch is checked completely before anything is written and applied in
one transaction, so a bad item leaves the share as it was. Items are stored as the JSON text
they arrived as, so numbers keep their type.

The change feed (live share pages read it): each write gives the items it stores the share's
next sequence numbers, so `changes(share_id, after)` returns the newest state of everything
written after `after`, in order, with no gaps across restarts or processes. An item written
again moves to its new number, so a reader that resumes from the last number it saw gets every
change once. A store must make numbers visible in order: a writer holds the share (its row
lock, or SQLite's write lock) from taking numbers until it commits, so no reader can see
number 12 before 11 is committed. `wait_for_change(share_id, after)` returns as soon as the
share moves past `after`, whichever process (or replica) wrote it (the daemon writes the
embedded archive while `syncd serve` reads it).

The session list (the front page): every sync that carries the session or a message keeps the
share's summary current (`SessionSummary`: title, directory, update time, message count, cost,
tokens), so listing tens of thousands of sessions is an indexed range read, never a scan of
their items. The fields come from the session item by one rule, `SessionFields.of`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
import secrets
import time
import uuid
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class SessionCursor:
    """A place in the session list, which runs newest first: by the session's update time,
    then by share id."""

    updated: int
    share_id: str


@dataclass(frozen=True)
class SessionSummary:
    """One archived session as the session list shows it."""

    share_id: str
    session_id: str
    url: str
    title: str
    directory: str
    updated: int  # the session's own time.updated (ms), else when its share was created
    messages: int
    cost: float
    tokens: int

    @property
    def cursor(self) -> SessionCursor:
        return SessionCursor(self.updated, self.share_id)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class SessionFields:
    """The summary fields a session item gives: opencode keeps the session's cost and token
    counts on the session itself (`cost`, `tokens.{input,output,reasoning,cache.{read,write}}`);
    the tokens shown are all five added up. Anything of the wrong type counts as absent."""

    title: str = ""
    directory: str = ""
    updated: int | None = None
    cost: float = 0.0
    tokens: int = 0

    @classmethod
    def of(cls, session: Any) -> SessionFields:
        session = _object(session)
        updated = _object(session.get("time")).get("updated")
        tokens = _object(session.get("tokens"))
        cache = _object(tokens.get("cache"))
        counts = [tokens.get("input"), tokens.get("output"), tokens.get("reasoning")]
        counts += [cache.get("read"), cache.get("write")]
        title, directory = session.get("title"), session.get("directory")
        return cls(
            title=title if isinstance(title, str) else "",
            directory=directory if isinstance(directory, str) else "",
            updated=updated if isinstance(updated, int) and not isinstance(updated, bool) else None,
            cost=_number(session.get("cost")),
            tokens=int(sum(_number(count) for count in counts)),
        )


# The summary columns of `share`, in the order `summary_of_row` reads them.
SUMMARY_COLUMNS = (
    "id, session_id, url, title, directory, session_updated, message_count, cost, tokens"
)
# Message items, as a range of the (share_id, item_key) primary key: counted without a scan.
MESSAGE_KEYS = "item_key >= 'message/' AND item_key < 'message0'"
# What the session list's filter looks in.
SEARCHED_COLUMNS = ("title", "directory", "session_id")


def summary_of_row(row: Iterable[Any]) -> SessionSummary:
    share_id, session_id, url, title, directory, updated, messages, cost, tokens = row
    return SessionSummary(
        share_id=share_id,
        session_id=session_id,
        url=url,
        title=title,
        directory=directory,
        updated=updated or 0,
        messages=messages,
        cost=cost,
        tokens=tokens,
    )


def summary_update(share_id: str, session_text: str | None, *, mark: str) -> tuple[str, list[Any]]:
    """The UPDATE (in a store's dialect, `mark` its parameter placeholder) that brings the
    share's summary columns up to date with its items, given its session item's JSON text
    (None when it has none yet), and its parameters."""
    fields = SessionFields.of(json.loads(session_text) if session_text is not None else None)
    sql = (
        f"UPDATE share SET title = {mark}, directory = {mark}, "
        f"session_updated = coalesce({mark}, time_created), cost = {mark}, tokens = {mark}, "
        f"message_count = (SELECT count(*) FROM share_item WHERE share_id = {mark} "
        f"AND {MESSAGE_KEYS}) WHERE id = {mark}"
    )
    values = [fields.title, fields.directory, fields.updated, fields.cost, fields.tokens]
    return sql, [*values, share_id, share_id]


def session_list_query(
    query: str,
    before: SessionCursor | None,
    after: SessionCursor | None,
    limit: int,
    *,
    mark: str,
    like: str,
) -> tuple[str, list[Any], bool]:
    """The SELECT of one page of the session list in a store's dialect (`mark`: its parameter
    placeholder, `like`: its case-ignoring LIKE), its parameters, and whether the rows come
    oldest first (the page before `after`) and must be reversed."""
    conditions: list[str] = []
    params: list[Any] = []
    if query:
        # The query taken literally: its own %, _ and \ escaped.
        escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        matches = (f"{column} {like} {mark} ESCAPE '\\'" for column in SEARCHED_COLUMNS)
        conditions.append(f"({' OR '.join(matches)})")
        params += [f"%{escaped}%"] * len(SEARCHED_COLUMNS)
    # Keyset pagination: a page starts where the last one ended, read along the
    # (session_updated, id) index, whatever the page number.
    if before is not None:
        conditions.append(f"(session_updated, id) < ({mark}, {mark})")
        params += [before.updated, before.share_id]
    elif after is not None:
        conditions.append(f"(session_updated, id) > ({mark}, {mark})")
        params += [after.updated, after.share_id]
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    oldest_first = before is None and after is not None
    order = "ASC" if oldest_first else "DESC"
    sql = (
        f"SELECT {SUMMARY_COLUMNS} FROM share {where} "
        f"ORDER BY session_updated {order}, id {order} LIMIT {mark}"
    )
    return sql, [*params, limit], oldest_first


class StoreUnavailable(Exception):
    """The store cannot be reached now (database down, restarting, out of connections); the
    request may succeed later. Whether an interrupted write landed is unknown: a retry of the
    same batch (same dedup key) settles it. The message never holds a password."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def now_ms() -> int:
    return int(time.time() * 1000)


def text_problem(value: Any) -> str | None:
    """What keeps `value` from being a non-empty string both stores can keep as text (an id,
    a secret, a batch key): a UTF-8 form (no lone surrogate), and no NUL (PostgreSQL text
    holds none); None when nothing does."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if not value.isascii() and not jsontext.is_text(value):  # ASCII has a UTF-8 form
        return "holds a lone surrogate, which is not text"
    if "\x00" in value:
        return "must not contain NUL characters"
    return None


def require_text(value: Any, name: str) -> str:
    """`value` when it is text both stores can keep (`text_problem`); BadSyncData naming
    `name` otherwise."""
    problem = text_problem(value)
    if problem is not None:
        raise BadSyncData(f"{name} {problem}")
    return value


def _where(index: int, kind: str) -> str:
    return f"item {index} ({kind})"


def _item_id(data: dict[str, Any], field: str, index: int, kind: str) -> str:
    value: Any = data.get(field)
    problem = text_problem(value)
    if problem is not None:
        raise BadSyncData(f"{_where(index, kind)}: data.{field} {problem}")
    return value


_MISSING = object()


def item_key(index: int, item: Any, text: str | None = None) -> tuple[str, str, str]:
    """(merge key, kind, JSON text) of one SyncData item; BadSyncData names what is wrong.
    `text`: the item's data as syncd encoded it already (not encoded again). Runs for every
    item a receiver takes, so it is written for the common case: a part whose ids
    are plain ASCII (the full checks run for anything else), and a message naming a problem
    is made only when there is one."""
    if not isinstance(item, dict):
        raise BadSyncData(f"item {index}: must be an object with 'type' and 'data'")
    kind = item.get("type")
    data = item.get("data", _MISSING)
    if kind == "part" and isinstance(data, dict):
        message_id, part_id = data.get("messageID"), data.get("id")
        if not (_plain_id(message_id) and _plain_id(part_id)):
            message_id = _item_id(data, "messageID", index, kind)
            part_id = _item_id(data, "id", index, kind)
        key = f"part/{message_id}/{part_id}"
    elif kind not in SYNC_KINDS:
        kinds = ", ".join(SYNC_KINDS)
        raise BadSyncData(f"item {index}: type {_shown(kind)} is not one of {kinds}")
    elif data is _MISSING:
        raise BadSyncData(f"{_where(index, kind)}: 'data' is missing")
    elif kind in ("session_diff", "model"):
        if not isinstance(data, list):
            raise BadSyncData(f"{_where(index, kind)}: data must be an array")
        key = kind
    elif not isinstance(data, dict):
        raise BadSyncData(f"{_where(index, kind)}: data must be an object")
    elif kind == "message":
        key = f"message/{_item_id(data, 'id', index, kind)}"
    else:
        key = "session"
    if text is None:
        try:
            text = jsontext.dumps_within(data)
        except jsontext.JsonTextError as exc:
            raise BadSyncData(f"{_where(index, kind)}: data {exc}") from exc
    return key, kind, text


def _shown(value: Any) -> str:
    """`value` (a scalar) as a message quotes it; an array or object by its kind only: its
    depth is not checked yet, and quoting it whole would recurse through it."""
    if isinstance(value, list | dict):
        return "an array" if isinstance(value, list) else "an object"
    return repr(value)


def _plain_id(value: Any) -> bool:
    """Whether `value` is an id `text_problem` surely passes: non-empty ASCII without NUL."""
    return type(value) is str and value.isascii() and value != "" and "\x00" not in value


def merged_items(data: Any, texts: list[str] | None) -> list[tuple[str, str, str]]:
    """(merge key, kind, JSON text) of every item of a sync, all checked before anything is
    written; `texts`: the items' data already encoded (see `ArchiveStore.sync`)."""
    if not isinstance(data, list):
        raise BadSyncData("data must be an array of SyncData items")
    if texts is None:
        return [item_key(index, item) for index, item in enumerate(data)]
    return [item_key(i, item, text) for i, (item, text) in enumerate(zip(data, texts, strict=True))]


def share_ids(session_id: str) -> Iterator[str]:
    """The ids to try, in order, for a new share of `session_id`: the session id's last
    characters, as on opencode's server (unless they cannot name a share in a url path as
    they are), then random ones (another share holds it)."""
    derived = session_id[-SHARE_ID_LENGTH:]
    if SHARE_ID_CHARACTERS.fullmatch(derived):
        yield derived
    while True:
        yield secrets.token_hex(SHARE_ID_LENGTH // 2)


def new_secret() -> str:
    return str(uuid.uuid4())


def secret_matches(stored: str, given: Any) -> bool:
    """Whether `given` is the share's secret, compared in constant time (a given secret with
    a lone surrogate is simply not it)."""
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(stored.encode(), given.encode("utf-8", "surrogatepass"))


def check_session_id(session_id: Any) -> None:
    """BadSyncData unless a share can be made for `session_id` (`require_text`: both stores
    refuse alike)."""
    require_text(session_id, "sessionID")


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
        opencode's server, or a random one when another share holds that id already or those
        characters cannot name a share in a url (`share_ids`)."""

    @abstractmethod
    async def create_share_with(
        self,
        session_id: str,
        base_url: str,
        data: list[Any],
        dedup_key: str | None = None,
        texts: list[str] | None = None,
    ) -> Share:
        """`create_share` and the first `sync` of `data`, in one transaction: both or neither
        (BadSyncData: the items are refused and no share was made)."""

    @abstractmethod
    async def delete_share(self, share_id: str, secret: str) -> None: ...

    @abstractmethod
    async def list_shares(self) -> list[dict[str, Any]]:
        """Every share: id, session_id, url, time_updated; newest first."""

    @abstractmethod
    async def sync(
        self,
        share_id: str,
        secret: str,
        data: list[Any],
        dedup_key: str | None = None,
        texts: list[str] | None = None,
    ) -> int:
        """Merge `data` into the share; returns how many syncs the share has taken. A batch
        whose `dedup_key` was applied already changes nothing. `texts`, parallel to `data`:
        each item's data as syncd.jsontext encoded it already (the embedded archive's caller
        has them, from opencode rows read within jsontext's limits), stored as they are."""

    @abstractmethod
    async def read_items(self, share_id: str) -> list[SyncItem]:
        """The merged share as opencode's `GET /api/share/{id}/data` answers it: SyncData
        items ordered by merge key."""

    @abstractmethod
    async def changes(
        self, share_id: str, after: int, limit: int = 500
    ) -> list[tuple[int, SyncItem]]:
        """(seq, item) of the items written after sequence `after`, oldest first; at most
        `limit` of them. ShareNotFound when the share does not exist (or was deleted)."""

    @abstractmethod
    async def list_sessions(
        self,
        query: str = "",
        *,
        before: SessionCursor | None = None,
        after: SessionCursor | None = None,
        limit: int = 50,
    ) -> list[SessionSummary]:
        """Up to `limit` archived sessions, newest first: those older than `before`, or the
        ones just newer than `after` (the page before), or the newest. `query` keeps those
        whose title, directory or session id holds it, ignoring case."""

    @abstractmethod
    async def session_summary(self, share_id: str) -> SessionSummary:
        """The share's session as the list shows it; ShareNotFound when there is none."""

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
