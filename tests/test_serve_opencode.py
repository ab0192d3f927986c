"""opencode's own share client (1.18.33, `"share": "auto"`) against `syncd serve`'s REST API."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from tests.support.fake_llm import FakeLlm
from tests.support.opencode_driver import Opencode
from tests.support.receiver import running_receiver

pytestmark = pytest.mark.e2e


async def test_opencode_shares_into_the_receiver(
    tmp_path: Path, fake_llm: FakeLlm, opencode_cache: Path
) -> None:
    async with running_receiver(tmp_path) as r:
        opencode = Opencode(
            tmp_path / "opencode", fake_llm.url, cache_dir=opencode_cache, share_url=r.url
        )
        await asyncio.to_thread(opencode.init_db)
        await asyncio.to_thread(opencode.run, "please write the file f0.txt")

        answers = r.answers
        assert answers, "opencode never called the receiver"
        assert all(status == 200 for _, _, status in answers), answers
        assert ("POST", "/api/share", 200) in answers
        synced = {path.split("/")[3] for _, path, _ in answers if path.endswith("/sync")}
        assert synced, answers
        with sqlite3.connect(opencode.db_path) as db:
            session_ids = {row[0] for row in db.execute("SELECT id FROM session")}
            message_ids = {row[0] for row in db.execute("SELECT id FROM message")}
        for share_id in synced:
            doc = await r.store.read_share(share_id)
            assert doc["session"]["id"] in session_ids
            assert {m["id"] for m in doc["messages"]} <= message_ids
            assert all(p["messageID"] in message_ids for p in doc["parts"])
