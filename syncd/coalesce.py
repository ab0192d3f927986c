"""Per-session coalescing: a window that gathers changes, and bounded batches.

A session's first change opens its window; everything captured before the window closes goes
out together, and because entities are read at send time, the latest state of each wins.
Each session has its own worker, so a slow or failing session never holds up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .source.loader import Loaded
from .source.syncdata import diff_item, model_item, user_model_ref
from .state.store import PendingItem
from .transports.base import Batch, SyncItem


@dataclass(frozen=True)
class PlannedBatch:
    batch: Batch
    covers: list[tuple[PendingItem, SyncItem]]  # pending items acknowledged with the batch
    diff_hash: str | None  # the session_diff this batch carries, if any
    size: int  # bytes of the items' JSON

    @property
    def pending(self) -> list[PendingItem]:
        return [item for item, _ in self.covers]


def diff_hash(diffs: list) -> str:
    canonical = json.dumps(diffs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def plan_batches(
    session_id: str,
    loaded: Loaded,
    delivered_diff_hash: str | None,
    *,
    max_items: int,
    max_bytes: int,
) -> list[PlannedBatch]:
    """Split what was loaded into batches of at most `max_items` items and about `max_bytes`
    bytes (an item larger than that travels alone). A server may append diffs (opencode's
    replaces them), so the session_diff goes only when its content changed since the last
    delivered one."""
    entries: list[tuple[SyncItem, PendingItem | None]] = [(it, p) for p, it in loaded.items]
    new_diff_hash = None
    if loaded.diffs and diff_hash(loaded.diffs) != delivered_diff_hash:
        new_diff_hash = diff_hash(loaded.diffs)
        entries.append((diff_item(loaded.diffs), None))
    if loaded.models:
        entries.append((model_item(loaded.models), None))

    # The items the derived ones come from (the session row for its diffs, user messages for
    # models) are acknowledged only with the batch carrying the last derived item: acknowledged
    # earlier, an interruption before that batch (a crash, a stopped backfill) would leave
    # nothing pending to derive them from again, and the diffs or models would never arrive.
    derived_left = (new_diff_hash is not None) + bool(loaded.models)

    def is_source(item: SyncItem) -> bool:
        if item["type"] == "session":
            return new_diff_hash is not None
        return bool(loaded.models) and item["type"] == "message" and bool(user_model_ref(item))

    deferred: list[tuple[PendingItem, SyncItem]] = []
    planned: list[PlannedBatch] = []
    items: list[SyncItem] = []
    covers: list[tuple[PendingItem, SyncItem]] = []
    size = 0
    carries_diff = False

    def close() -> None:
        nonlocal items, covers, size, carries_diff
        if items:
            digest = new_diff_hash if carries_diff else None
            planned.append(PlannedBatch(Batch(session_id, items), covers, digest, size))
        items, covers, size, carries_diff = [], [], 0, False

    for item, pending in entries:
        item_size = len(json.dumps(item, ensure_ascii=False).encode())
        if items and (len(items) >= max_items or size + item_size > max_bytes):
            close()
        items.append(item)
        size += item_size
        if pending is not None:
            (deferred if is_source(item) else covers).append((pending, item))
            continue
        carries_diff = carries_diff or item["type"] == "session_diff"
        derived_left -= 1
        if derived_left == 0:
            covers.extend(deferred)
    close()
    return planned


class Coalescer:
    """Runs `deliver(session_id)` for each touched session once its window has passed."""

    def __init__(self, window: float, deliver: Callable[[str], Awaitable[None]]) -> None:
        self.window = window
        self._deliver = deliver
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._dirty: dict[str, asyncio.Event] = {}
        self._flush = asyncio.Event()

    def touch(self, session_id: str) -> None:
        self._dirty.setdefault(session_id, asyncio.Event()).set()
        if session_id not in self._workers:
            task = asyncio.create_task(self._worker(session_id), name=f"session {session_id}")
            self._workers[session_id] = task

    @property
    def busy(self) -> int:
        return len(self._workers)

    async def _worker(self, session_id: str) -> None:
        dirty = self._dirty[session_id]
        try:
            while dirty.is_set():
                if not self._flush.is_set():
                    # The window: wait for it to pass, or for a flush (shutdown, sync).
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._flush.wait(), self.window)
                dirty.clear()
                await self._deliver(session_id)
        finally:
            del self._workers[session_id]
            self._dirty.pop(session_id, None)

    async def drain(self) -> None:
        """Close every window now and wait for the deliveries in flight."""
        self._flush.set()
        while self._workers:
            await asyncio.gather(*list(self._workers.values()), return_exceptions=True)

    async def cancel(self) -> None:
        for task in list(self._workers.values()):
            task.cancel()
        await asyncio.gather(*list(self._workers.values()), return_exceptions=True)
