"""Batches respect their bounds, diffs go only when they changed, windows gather changes."""

from __future__ import annotations

import asyncio
import json

from syncd.model import PendingItem
from syncd.pipeline.planner import diff_hash, plan_batches
from syncd.pipeline.window import Window
from syncd.source.loader import Loaded
from tests.support.env import wait_until


def loaded_parts(count: int, text: str = "x") -> Loaded:
    loaded = Loaded()
    for i in range(count):
        item = {"type": "part", "data": {"id": f"p{i}", "text": text}}
        loaded.items.append((PendingItem("s", "part", f"p{i}", 1), item))
    return loaded


def test_item_bound_splits_a_backlog() -> None:
    planned = plan_batches("s", loaded_parts(25), None, max_items=10, max_bytes=10**9)
    assert [len(p.batch.items) for p in planned] == [10, 10, 5]
    covered = [p.item_id for b in planned for p in b.acknowledges]
    assert covered == [f"p{i}" for i in range(25)]


def test_byte_bound_splits_and_a_huge_item_travels_alone() -> None:
    loaded = loaded_parts(3, text="y" * 1000)
    loaded.items.insert(
        1, (PendingItem("s", "part", "big", 1), {"type": "part", "data": {"text": "z" * 5000}})
    )
    planned = plan_batches("s", loaded, None, max_items=100, max_bytes=2500)
    sizes = [len(json.dumps(p.batch.items)) for p in planned]
    assert [len(p.batch.items) for p in planned] == [1, 1, 2]
    assert sizes[1] > 2500 and all(size <= 2500 for i, size in enumerate(sizes) if i != 1)


def test_diff_only_when_changed_and_models_follow() -> None:
    loaded = loaded_parts(1)
    loaded.diffs = [{"file": "a", "additions": 1}]
    loaded.models = [{"id": "m", "providerID": "p", "name": "M"}]
    fresh = plan_batches("s", loaded, None, max_items=10, max_bytes=10**6)
    assert [i["type"] for i in fresh[0].batch.items] == ["part", "session_diff", "model"]
    assert fresh[0].diff_hash == diff_hash(loaded.diffs)
    same = plan_batches("s", loaded, diff_hash(loaded.diffs), max_items=10, max_bytes=10**6)
    assert [i["type"] for i in same[0].batch.items] == ["part", "model"]
    assert same[0].diff_hash is None


def test_batch_key_is_deterministic() -> None:
    one = plan_batches("s", loaded_parts(3), None, max_items=10, max_bytes=10**6)[0].batch
    two = plan_batches("s", loaded_parts(3), None, max_items=10, max_bytes=10**6)[0].batch
    other = plan_batches("s", loaded_parts(3, "changed"), None, max_items=10, max_bytes=10**6)[0]
    assert one.key == two.key != other.batch.key


def test_halves_split_the_manifest_and_keep_deferred_acknowledgements_last() -> None:
    """A refused batch goes again in halves: each acknowledges what it carries, except the
    session row its diffs come from, acknowledged only with the half carrying the diff."""
    loaded = loaded_parts(4)
    session = PendingItem("s", "session", "s", 1)
    loaded.items.insert(0, (session, {"type": "session", "data": {"id": "s"}}))
    loaded.diffs = [{"file": "a", "additions": 1}]
    [planned] = plan_batches("s", loaded, None, max_items=10, max_bytes=10**6)
    assert session in planned.acknowledges
    first, second = planned.halves()
    assert first.batch.items + second.batch.items == planned.batch.items
    assert first.carried + second.carried == planned.carried
    assert first.size + second.size == planned.size
    assert set(first.acknowledges) | set(second.acknowledges) == set(planned.acknowledges)
    assert session in first.carried and session in second.acknowledges
    assert session not in first.acknowledges and second.deferred == [session]
    assert set(first.acknowledges) <= set(first.carried)
    assert (first.diff_hash, second.diff_hash) == (None, planned.diff_hash)
    # Halved again, the deferred session row stays with the diff.
    third, fourth = second.halves()
    assert "session_diff" in [i["type"] for i in fourth.batch.items]
    assert session in fourth.acknowledges and session not in third.acknowledges
    [one] = plan_batches("s", loaded_parts(1), None, max_items=10, max_bytes=10**6)
    assert one.halves() == []


async def test_window_gathers_touches_into_one_delivery() -> None:
    calls: list[str] = []

    async def deliver(session_id: str) -> None:
        calls.append(session_id)

    window = Window(0.2, deliver)
    for _ in range(5):
        window.touch("a")
        await asyncio.sleep(0.01)
    window.touch("b")
    await wait_until(lambda: window.busy == 0, "both windows to close")
    assert sorted(calls) == ["a", "b"]  # five touches of "a", one delivery


async def test_a_stuck_session_does_not_hold_up_another() -> None:
    release = asyncio.Event()
    done: list[str] = []

    async def deliver(session_id: str) -> None:
        if session_id == "stuck":
            await release.wait()
        done.append(session_id)

    window = Window(0.01, deliver)
    window.touch("stuck")
    window.touch("fine")
    await wait_until(lambda: done == ["fine"], "the other session's delivery")
    release.set()
    await window.drain()
    assert done == ["fine", "stuck"]
