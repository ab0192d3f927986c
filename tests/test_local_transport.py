"""The embedded archive transport: delivery into a local ShareStore, errors in transport terms."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from syncd.archive.sqlite import SqliteArchive as ShareStore
from syncd.model import Batch, Share, SyncItem
from syncd.transports.base import RejectedError, SecretRefusedError, ShareNotFoundError
from syncd.transports.local import LocalTransport, page_url

SESSION_ID = "ses_ded3f60c6ffeY2PHYjxlwlNfGw"
SERVE_URL = "http://127.0.0.1:4788"


@pytest.fixture
def examples(fixtures_dir: Path) -> dict[str, Any]:
    """Real SyncData captured from opencode 1.18.33, by name."""
    return json.loads((fixtures_dir / "opencode/share-sync-examples-1.18.33.json").read_text())


def items_of(examples: dict[str, Any]) -> list[SyncItem]:
    return [value for name, value in examples.items() if name != "create-request"]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ShareStore]:
    opened = await ShareStore.open(tmp_path / "archive.db")
    yield opened
    await opened.close()


async def test_create_and_sync_land_in_the_archive(
    store: ShareStore, examples: dict[str, Any]
) -> None:
    transport = LocalTransport(store, SERVE_URL)
    assert transport.name == "local"
    assert examples["create-request"]["sessionID"] == SESSION_ID
    batch = Batch(SESSION_ID, items_of(examples))
    # The share and its first batch are one write.
    created = await transport.create(SESSION_ID, batch)
    assert created.synced is True
    # The share url is the page `syncd serve` shows this archive's share at.
    assert created.share.url == f"{SERVE_URL}/share/{created.share.id}"
    doc = await store.read_share(created.share.id)
    assert doc["session"] == examples["session"]["data"]
    assert doc["parts"] == [examples["part:text"]["data"]]
    assert doc["messages"] == [examples["message"]["data"]]
    # The batch carried its key: sent again after a lost acknowledgement, it changes nothing.
    assert await store.sync(created.share.id, created.share.secret, []) == 2
    await transport.sync(created.share, batch)
    assert await store.sync(created.share.id, created.share.secret, []) == 3


async def test_a_refused_first_batch_leaves_the_share_alone_for_sync_to_judge(
    store: ShareStore, examples: dict[str, Any]
) -> None:
    """As a receiver's pipelined create: the share stands, nothing of the batch is stored, and
    sync() refuses the batch with the item named (so delivery splits it there)."""
    transport = LocalTransport(store, SERVE_URL)
    good = items_of(examples)[0]
    batch = Batch(SESSION_ID, [good, {"type": "part", "data": {}}])
    created = await transport.create(SESSION_ID, batch)
    assert created.synced is False
    assert [share["id"] for share in await store.list_shares()] == [created.share.id]
    assert (await store.read_items(created.share.id)) == []
    with pytest.raises(RejectedError, match=r"item 1 \(part\)"):
        await transport.sync(created.share, batch)
    await transport.sync(created.share, Batch(SESSION_ID, [good]))
    assert (await store.read_items(created.share.id)) == [good]


async def test_the_same_batch_is_applied_once(store: ShareStore) -> None:
    transport = LocalTransport(store, SERVE_URL)
    share = (await transport.create(SESSION_ID, None)).share
    first = Batch(SESSION_ID, [{"type": "message", "data": {"id": "m", "v": 1}}])
    newer = Batch(SESSION_ID, [{"type": "message", "data": {"id": "m", "v": 2}}])
    await transport.sync(share, first)
    await transport.sync(share, newer)
    await transport.sync(share, first)  # re-sent after a lost acknowledgement
    assert (await store.read_share(share.id))["messages"] == [{"id": "m", "v": 2}]
    assert await store.sync(share.id, share.secret, []) == 3  # two applied syncs before


async def test_errors_in_transport_terms(store: ShareStore, examples: dict[str, Any]) -> None:
    transport = LocalTransport(store, SERVE_URL)
    share = (await transport.create(SESSION_ID, None)).share
    items = items_of(examples)
    batch = Batch(SESSION_ID, items)
    with pytest.raises(ShareNotFoundError, match="Share not found"):
        await transport.sync(Share(id="missing", secret=share.secret, url=SERVE_URL), batch)
    with pytest.raises(SecretRefusedError, match="Invalid secret"):
        await transport.sync(Share(id=share.id, secret="wrong", url=share.url), batch)
    with pytest.raises(RejectedError, match=r"item 1 \(part\)"):
        await transport.sync(share, Batch(SESSION_ID, [items[0], {"type": "part", "data": {}}]))
    assert (await store.read_share(share.id))["session"] is None
    await transport.delete(share)
    with pytest.raises(ShareNotFoundError):
        await transport.sync(share, batch)
    with pytest.raises(ShareNotFoundError):
        await transport.delete(share)


def test_legacy_archive_urls_open_as_pages() -> None:
    assert page_url("archive:/share/abcd1234", SERVE_URL) == f"{SERVE_URL}/share/abcd1234"
    assert page_url("https://opncd.ai/share/abcd1234", SERVE_URL) == (
        "https://opncd.ai/share/abcd1234"
    )
