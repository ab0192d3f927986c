"""The things that travel from opencode's database to a receiver, shared by every layer.

This module imports nothing of syncd: the source, the state, the pipeline, the transports and
the receiver all speak in these terms.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

SyncItem = dict[str, Any]
"""One SyncData item: {"type": "session"|"message"|"part"|"session_diff"|"model", "data": ...}."""


def digest(value: Any) -> str:
    """sha256 of `value`'s canonical JSON. A lone surrogate (opencode can store one) hashes as
    its code point: the digest never fails on text that has no UTF-8 form."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Share:
    """Credentials of one share on the receiver; the secret is never logged (repr hides it)."""

    id: str
    secret: str = field(repr=False)
    url: str


@dataclass(frozen=True)
class Batch:
    """Coalesced items of one session, sent in one call."""

    session_id: str
    items: list[SyncItem]
    # Each item's `data` as JSON text (syncd.jsontext), when the batch's maker has it already:
    # the planner encodes every item once, to size the batch, and the key, the embedded archive
    # and the REST body use that text instead of encoding again.
    texts: list[str] | None = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def key(self) -> str:
        """Deterministic id: the same batch re-sent after a crash carries the same key (the
        planner makes the same texts from the same rows)."""
        if self.texts is None:
            return digest([self.session_id, self.items])[:32]
        # JSON text holds no NUL character: NUL-joined, the parts cannot run together.
        parts = [self.session_id]
        for item, text in zip(self.items, self.texts, strict=True):
            parts += (item["type"], text)
        return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True)
class Created:
    """Outcome of creating a share: the new share, and whether the batch travelled with it."""

    share: Share
    synced: bool


@dataclass(frozen=True)
class Cursor:
    """How far a session has been captured from the source: its journal sequence, or (without
    a journal) the newest `time_updated` seen."""

    journal_seq: int | None
    time_updated: int | None


@dataclass(frozen=True)
class TableRead:
    """Table mode's last read of a session (a database without a journal), kept with its
    cursor so that a restart neither loses nor re-sends rows: when the read began, by the wall
    clock (`wall`, ms) and by the clock of the boot it ran in (`boot`, `clock`: ms no clock
    correction moves), the stamps it read that the next read can meet again (`seen`:
    (kind, id) -> time_updated), and what it knows of the rows below those (`print`)."""

    wall: int
    boot: str
    clock: int
    seen: dict[tuple[str, str], int]
    print: TablePrint | None = None  # None: a read from before syncd kept one


class TablePrint(NamedTuple):
    """What a table read knows of the session's messages and parts it kept no stamp of (those
    stamped below `below`): how many there were (`rows`) and their stamps added up (`total`,
    each modulo 2**32), with the session's own stamp (`session`). A row rewritten with a stamp
    below the next read's floor changes them, so that read finds it without reading every row
    into Python."""

    below: int | float
    session: int | float | None  # None: the session's row was gone
    rows: int
    total: int


class PendingItem(NamedTuple):
    """One captured entity (session, message or part) waiting for an acknowledgement; the
    version tells a newer capture of the same entity from the one a batch carried. A named
    tuple: a backfill makes one per entity, and a frozen dataclass costs three times as much
    to build."""

    session_id: str
    kind: str
    item_id: str
    version: int
