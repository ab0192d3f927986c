"""Whatever one item does to a transport stays that item's: an exception nobody expected while
sending it ends in its own dead letter, with the error as the reason, and the rest of its
session is delivered."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.errors import UserError
from syncd.model import Batch, Created, Share
from syncd.pipeline.deliver import RetryPolicy
from syncd.pipeline.pipeline import Pipeline, capture_and_drain
from syncd.transports import target_of
from syncd.transports.local import LocalTransport
from tests.support.archive_check import archived, make_config
from tests.support.fake_opencode import FakeOpencode


class Breaks(LocalTransport):
    """The local archive, except that a batch holding the word "boom" raises (a bug, say),
    whether it travels with the share's creation or after it."""

    async def create(self, session_id: str, batch: Batch | None) -> Created:
        _break_on_boom(batch)
        return await super().create(session_id, batch)

    async def sync(self, share: Share, batch: Batch) -> None:
        _break_on_boom(batch)
        await super().sync(share, batch)


def _break_on_boom(batch: Batch | None) -> None:
    if batch is not None and any("boom" in str(item["data"]) for item in batch.items):
        raise TypeError("unexpected: cannot handle this item")


async def test_an_unexpected_exception_dead_letters_only_its_item(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user"})
    fine = [writer.part(sid, mid, {"type": "text", "text": f"fine {n}"}) for n in range(5)]
    boom = writer.part(sid, mid, {"type": "text", "text": "boom"})
    fine.append(writer.part(sid, mid, {"type": "text", "text": "after"}))
    writer.close()
    config = make_config(tmp_path, writer.path)
    pipeline = await Pipeline.open(config, RetryPolicy(give_up_after=20))
    try:
        assert pipeline.archive is not None
        await pipeline.delivery.replace_transport(
            Breaks(pipeline.archive, config.serve_url), target_of(config), config.origin
        )
        await capture_and_drain(pipeline, deep=True)
        [letter] = await pipeline.state.dead_letters()
        assert await pipeline.state.pending_sessions() == {}
    finally:
        await pipeline.close()
    assert letter["item_id"] == boom
    assert "TypeError: unexpected: cannot handle this item" in letter["reason"]
    assert set(fine) <= set((await archived(config))[sid]["parts"])
    with pytest.raises(UserError, match=r"1 item\(s\) dead-lettered"):
        from syncd.commands.sync import sync_once

        await sync_once(config)
