"""A refused batch dead-letters exactly what it carried and would have acknowledged, so that a
retry after the receiver is fixed brings every item: the user message whose acknowledgement
waits for its `model` item included (it was dead-lettered under the session's id and lost for
good when refusals picked items by object identity)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from syncd.archive import BadSyncData
from syncd.commands.dead_letters import retry
from syncd.commands.sync import sync_once
from syncd.errors import UserError
from syncd.model import Batch, PendingItem
from syncd.pipeline.planner import PlannedBatch
from syncd.state.store import StateStore
from tests.support.archive_check import expected_state, make_config
from tests.support.fake_opencode import FakeOpencode
from tests.support.receiver import running_receiver

MODEL = {"providerID": "fake", "modelID": "fake-model"}


async def test_a_refused_message_batch_is_delivered_after_the_retry(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sessions = []
    for n in range(2):
        sid = writer.session(f"session {n}")
        user = writer.message(sid, {"role": "user", "time": {"created": 1}, "model": MODEL})
        writer.part(sid, user, {"type": "text", "text": f"question {n}"})
        reply = writer.message(sid, {"role": "assistant", "time": {"created": 2}})
        writer.part(sid, reply, {"type": "text", "text": f"answer {n}"})
        sessions.append(sid)

    async with running_receiver(tmp_path) as receiver:
        store_sync = receiver.store.sync
        refusing = True

        async def refuse_messages(
            share_id: str, secret: str, data: list[Any], dedup_key: str | None = None
        ) -> int:
            if refusing and any(item.get("type") == "message" for item in data):
                raise BadSyncData("this receiver refuses messages today")
            return await store_sync(share_id, secret, data, dedup_key)

        receiver.store.sync = refuse_messages  # type: ignore[method-assign]
        config = make_config(
            tmp_path, writer.path, url=receiver.url, transport="http", sessions="all",
            batch_max_items=2,
        )  # fmt: skip
        try:
            await sync_once(config, give_up_after=30)
        except UserError as refused:
            assert "dead-lettered" in str(refused)

        refusing = False  # the receiver is fixed
        await retry(config, [], every=True)
        assert await sync_once(config, give_up_after=30) == 0

        state = await StateStore.open(config.state)
        try:
            assert await state.dead_letters() == []
            assert await state.pending_sessions() == {}
        finally:
            await state.close()
        expected = expected_state(writer.path)
        for share in await receiver.store.list_shares():
            got = await receiver.store.read_share(share["id"])
            want = expected[share["session_id"]]
            assert {m["id"]: m for m in got["messages"]} == want["messages"]
            assert {p["id"]: p for p in got["parts"]} == want["parts"]
            assert [m["id"] for m in got["models"]] == ["fake-model"]
        assert sorted(s["session_id"] for s in await receiver.store.list_shares()) == sorted(
            sessions
        )
    writer.close()


def test_refused_lists_every_carried_item_under_its_own_pending_item() -> None:
    user = PendingItem("s", "message", "m1", 3)
    part = PendingItem("s", "part", "p1", 1)
    session = PendingItem("s", "session", "s", 2)
    items = [
        {"type": "message", "data": {"id": "m1"}},
        {"type": "part", "data": {"id": "p1"}},
        {"type": "model", "data": []},
    ]
    planned = PlannedBatch(Batch("s", items), [user, part, None], [part, session], None, 0)
    letters = dict(planned.refused())
    assert letters[user] == items[0]  # the held-back message, under its own id
    assert letters[part] == items[1]
    assert letters[PendingItem("s", "model", "s", 0)] == items[2]
    assert letters[session] is None  # acknowledged by this batch, carried by an earlier one
    assert len(letters) == 4
