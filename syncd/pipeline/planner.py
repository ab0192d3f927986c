"""The batch planner: what was loaded for a session, split into bounded batches, each with its
manifest (the pending items it acknowledges, and the items it carries)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import jsontext
from ..model import Batch, PendingItem, SyncItem, digest
from ..source.loader import Loaded
from ..source.syncdata import diff_item, model_item, user_model_ref


@dataclass(frozen=True)
class PlannedBatch:
    """One batch and its manifest: what it carries and what its acknowledgement settles."""

    batch: Batch
    # Parallel to batch.items: the pending item each was read for; None for the items derived
    # from the session as a whole (its diffs, the models of its messages).
    carried: list[PendingItem | None]
    # The pending items that leave the state when the receiver acknowledges the batch.
    acknowledges: list[PendingItem]
    diff_hash: str | None  # the session_diff this batch carries, if any
    sizes: list[int]  # bytes of each item's JSON, parallel to batch.items
    # Of `acknowledges`, the items the derived ones come from: acknowledged only together
    # with the last derived item (see plan_batches).
    deferred: list[PendingItem] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def halves(self) -> list[PlannedBatch]:
        """The batch in two, for a receiver that refused it whole (the first half goes first).
        Each half acknowledges the pending items it carries; the deferred ones go with the half
        that carries the last derived item, and what is neither carried nor deferred with the
        second half. [] for one item."""
        count = len(self.batch.items)
        if count < 2:
            return []
        cut = count // 2
        derived = [index for index, pending in enumerate(self.carried) if pending is None]
        deferred_first = bool(derived) and derived[-1] < cut
        first_carries = {pending for pending in self.carried[:cut] if pending is not None}

        def in_first(pending: PendingItem) -> bool:
            if pending in self.deferred:
                return deferred_first
            return pending in first_carries

        halves = []
        for part in (slice(0, cut), slice(cut, count)):
            first = part.start == 0
            items = self.batch.items[part]
            carries_diff = any(item["type"] == "session_diff" for item in items)
            texts = None if self.batch.texts is None else self.batch.texts[part]
            halves.append(
                PlannedBatch(
                    Batch(self.batch.session_id, items, texts),
                    self.carried[part],
                    [p for p in self.acknowledges if in_first(p) == first],
                    self.diff_hash if carries_diff else None,
                    self.sizes[part],
                    [p for p in self.deferred if deferred_first == first],
                )
            )
        return halves

    def refused(self) -> list[tuple[PendingItem, SyncItem | None]]:
        """What a refusal dead-letters: every item carried, under its own pending item (a
        derived one under the session, so that a retry derives it again), and every pending
        item the batch would have acknowledged."""
        session_id = self.batch.session_id
        letters: dict[PendingItem, SyncItem | None] = {}
        for item, pending in zip(self.batch.items, self.carried, strict=True):
            letters[pending or PendingItem(session_id, item["type"], session_id, 0)] = item
        for pending in self.acknowledges:
            letters.setdefault(pending, None)
        return list(letters.items())


# `{"type":"","data":}` around an item's type and data.
ENVELOPE_BYTES = 19


def _text(item: SyncItem) -> str | None:
    """The item's data as JSON text; None when it cannot be written as JSON."""
    try:
        return jsontext.dumps(item["data"])
    except jsontext.JsonTextError:
        return None


def diff_hash(diffs: list) -> str:
    return digest(diffs)


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

    deferred: list[PendingItem] = []
    planned: list[PlannedBatch] = []
    items: list[SyncItem] = []
    texts: list[str] | None = []
    carried: list[PendingItem | None] = []
    acknowledges: list[PendingItem] = []
    sizes: list[int] = []
    size = 0
    carries_diff = False
    released: list[PendingItem] = []  # the deferred items this batch acknowledges

    def close() -> None:
        nonlocal items, texts, carried, acknowledges, sizes, size, carries_diff, released
        if items:
            digest = new_diff_hash if carries_diff else None
            batch = Batch(session_id, items, texts)
            planned.append(PlannedBatch(batch, carried, acknowledges, digest, sizes, released))
        items, texts, carried, acknowledges, sizes, size, carries_diff = (
            [],
            [],
            [],
            [],
            [],
            0,
            False,
        )
        released = []

    for item, pending in entries:
        # Each item encoded once: its size here, its text for the key and the receiver.
        text = _text(item)
        if text is None:  # it travels alone, where the transport's refusal dead-letters it alone
            item_size = max_bytes + 1
        else:
            item_size = len(text.encode()) + len(item["type"]) + ENVELOPE_BYTES
        if items and (len(items) >= max_items or size + item_size > max_bytes):
            close()
        items.append(item)
        if texts is not None and text is not None:
            texts.append(text)
        else:
            texts = None  # not plain JSON: the batch goes without texts, the receiver judges it
        carried.append(pending)
        sizes.append(item_size)
        size += item_size
        if pending is not None:
            (deferred if is_source(item) else acknowledges).append(pending)
            continue
        carries_diff = carries_diff or item["type"] == "session_diff"
        derived_left -= 1
        if derived_left == 0:
            acknowledges.extend(deferred)
            released = list(deferred)
    close()
    return planned
