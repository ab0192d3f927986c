"""Transport `a2a` against `syncd serve`'s own A2A agent (real a2a-sdk on both ends, in-process
uvicorn on 127.0.0.1), both bindings."""

from __future__ import annotations

import copy
import json
import logging
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.client import A2ACardResolver
from a2a.utils.errors import InternalError, InvalidParamsError

from syncd.archive import ShareNotFound
from syncd.errors import UserError
from syncd.model import Batch, Share
from syncd.transports.a2a import A2aTransport
from syncd.transports.base import KeyRefusedError, RejectedError, RetryableError
from syncd.wire.a2a import item_part, part_item
from tests.support import FIXTURES
from tests.support.receiver import Receiver, running_receiver

BINDINGS = ["jsonrpc", "http+json"]
SESSION = "ses_ded3f60c6ffeY2PHYjxlwlNfGw"


def examples() -> list[dict[str, Any]]:
    """opencode's own SyncData items (captured from 1.18.33), in send order."""
    path = FIXTURES / "opencode" / "share-sync-examples-1.18.33.json"
    loaded = json.loads(path.read_text())
    return [item for name, item in loaded.items() if name != "create-request"]


def assert_same_json(sent: Any, got: Any, where: str = "$") -> None:
    """Equal values of the same JSON type at every depth (1 and 1.0 differ here)."""
    assert type(got) is type(sent), f"{where}: sent {sent!r} ({type(sent).__name__}), got {got!r}"
    if isinstance(sent, dict):
        assert got.keys() == sent.keys(), where
        for key in sent:
            assert_same_json(sent[key], got[key], f"{where}.{key}")
    elif isinstance(sent, list):
        assert len(got) == len(sent), where
        for index, (a, b) in enumerate(zip(sent, got, strict=True)):
            assert_same_json(a, b, f"{where}[{index}]")
    else:
        assert got == sent, where


async def items_of(receiver: Receiver, share: Share) -> dict[str, Any]:
    return await receiver.store.read_share(share.id)


async def test_lifecycle_reads_back_like_rest(tmp_path: Path, binding: str, store_url: str) -> None:
    sent = examples()
    async with running_receiver(tmp_path, store=store_url) as receiver:
        transport = A2aTransport(receiver.url, binding=binding)
        try:
            created = await transport.create(SESSION, Batch(SESSION, sent))
            assert created.synced is False
            assert created.share.id == SESSION[-8:] and created.share.secret
            assert created.share.url == f"{receiver.url}/share/{SESSION[-8:]}"
            for item in sent:
                await transport.sync(created.share, Batch(SESSION, [item]))
            assert receiver.create_count == 1
            document = await items_of(receiver, created.share)
            shares = await receiver.store.list_shares()
            assert [(s["id"], s["session_id"]) for s in shares] == [(created.share.id, SESSION)]

            await transport.delete(created.share)
            with pytest.raises(ShareNotFound):
                await receiver.store.read_share(shares[0]["id"])
        finally:
            await transport.aclose()
    assert_same_json(sent[0]["data"], document["session"])
    assert_same_json([sent[3]["data"]], document["messages"])
    assert_same_json([sent[4]["data"]], document["parts"])


async def test_numbers_keep_their_json_types(tmp_path: Path, binding: str, store_url: str) -> None:
    session = copy.deepcopy(examples()[0])
    session["data"]["numbers"] = {
        "timestamp": 1795610943290,
        "zero": 0,
        "negative": -42,
        "largest_exact": 2**53,
        "beyond_double": 2**60 + 1,
        "fraction": 0.1,
        "whole_float": 2.0,
        "tiny": 5e-324,
        "nested": [[1, 1.5], {"n": 7}],
        "flags": [True, False, None],
    }
    message = examples()[3]
    async with running_receiver(tmp_path, store=store_url) as receiver:
        transport = A2aTransport(receiver.url, binding=binding)
        try:
            share = (await transport.create(SESSION, None)).share
            await transport.sync(share, Batch(SESSION, [session, message]))
        finally:
            await transport.aclose()
        document = await items_of(receiver, share)
    assert_same_json(session["data"], document["session"])
    assert_same_json([message["data"]], document["messages"])


async def test_retried_batch_is_applied_once(tmp_path: Path, binding: str, store_url: str) -> None:
    first = Batch(SESSION, examples()[:2])
    second = Batch(SESSION, examples()[3:4])
    async with running_receiver(tmp_path, store=store_url) as receiver:
        transport = A2aTransport(receiver.url, binding=binding)
        try:
            share = (await transport.create(SESSION, None)).share
        finally:
            await transport.aclose()
        # Two transports: the daemon crashed after sending and sends the batch again.
        for _ in range(2):
            transport = A2aTransport(receiver.url, binding=binding)
            try:
                await transport.sync(share, first)
                await transport.sync(share, first)
            finally:
                await transport.aclose()
        transport = A2aTransport(receiver.url, binding=binding)
        try:
            await transport.sync(share, second)
        finally:
            await transport.aclose()
        # Offering the first batch's key again applies nothing and reports the count.
        count = await receiver.store.sync(share.id, share.secret, [], dedup_key=first.key)
    assert count == 2


async def test_invalid_batch_is_refused_and_nothing_applied(
    tmp_path: Path, binding: str, store_url: str
) -> None:
    good = examples()[0]
    bad = {"type": "part", "data": {"id": "prt_1"}}  # no messageID
    async with running_receiver(tmp_path, store=store_url) as receiver:
        transport = A2aTransport(receiver.url, binding=binding)
        try:
            share = (await transport.create(SESSION, None)).share
            with pytest.raises(RejectedError, match=r"item 1 \(part\): data.messageID"):
                await transport.sync(share, Batch(SESSION, [good, bad]))
        finally:
            await transport.aclose()
        document = await items_of(receiver, share)
    assert document["session"] is None


async def test_agent_card_served_and_parsed_by_the_sdk(tmp_path: Path) -> None:
    async with running_receiver(tmp_path, key="k-secret") as receiver, httpx.AsyncClient() as http:
        card = await A2ACardResolver(http, receiver.url).get_agent_card()
    interfaces = {i.protocol_binding: i.url for i in card.supported_interfaces}
    assert interfaces == {
        "JSONRPC": f"{receiver.url}/a2a/jsonrpc",
        "HTTP+JSON": f"{receiver.url}/a2a/rest",
    }
    scheme = card.security_schemes["shareKey"].api_key_security_scheme
    assert (scheme.location, scheme.name) == ("header", "x-opencode-share-key")
    assert "shareKey" in card.security_requirements[0].schemes
    assert "k-secret" not in str(card)


@pytest.mark.parametrize("status", [503, 429])
async def test_overload_is_retryable_with_retry_after(
    tmp_path: Path, binding: str, status: int
) -> None:
    async with running_receiver(tmp_path) as receiver:
        transport = A2aTransport(receiver.url, binding=binding)
        try:
            share = (await transport.create(SESSION, None)).share
            await transport.sync(share, Batch(SESSION, examples()[:1]))  # card resolved
            await receiver.faults.status(status, retry_after=7)
            with pytest.raises(RetryableError) as raised:
                await transport.sync(share, Batch(SESSION, examples()[3:4]))
            assert raised.value.retry_after == 7
            assert f": {status}: " in str(raised.value)
        finally:
            await transport.aclose()


async def test_unreachable_receiver_is_retryable(tmp_path: Path, binding: str) -> None:
    async with running_receiver(tmp_path) as receiver:
        await receiver.faults.stop()
        transport = A2aTransport(receiver.url, binding=binding)
        try:
            with pytest.raises(RetryableError):
                await transport.create(SESSION, None)
            with pytest.raises(RetryableError):
                await transport.sync(Share("shr_1", "s", "u"), Batch(SESSION, examples()[:1]))
        finally:
            await transport.aclose()


@pytest.mark.parametrize("sent_key", [None, "wrong-key-value"])
async def test_key_refusal_names_the_header_not_the_key(
    tmp_path: Path, binding: str, sent_key: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the SDK logs whole requests (secrets too) at debug
    async with running_receiver(tmp_path, key="right-key-value") as receiver:
        transport = A2aTransport(receiver.url, key=sent_key, binding=binding)
        try:
            with pytest.raises(KeyRefusedError, match="x-opencode-share-key") as raised:
                await transport.create(SESSION, None)
        finally:
            await transport.aclose()
        assert await receiver.store.list_shares() == []
    assert "key-value" not in str(raised.value)

    async with running_receiver(tmp_path / "keyed", key="right-key-value") as receiver:
        transport = A2aTransport(receiver.url, key="right-key-value", binding=binding)
        try:
            share = (await transport.create(SESSION, None)).share
            await transport.sync(share, Batch(SESSION, examples()[:1]))
        finally:
            await transport.aclose()
        assert len(await receiver.store.list_shares()) == 1
    # aiosqlite logs its SQL parameters at debug: syncd never hands stdlib debug records to
    # a handler; the SDK's are silenced even when someone does.
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name != "aiosqlite")
    assert "key-value" not in logged and share.secret not in logged
    assert not [r for r in caplog.records if r.name.startswith("a2a") and r.levelno < logging.INFO]


async def test_timeout_is_retryable(tmp_path: Path, binding: str) -> None:
    async with running_receiver(tmp_path) as receiver:
        transport = A2aTransport(receiver.url, binding=binding, timeout=0.2)
        try:
            share = (await transport.create(SESSION, None)).share
            await transport.sync(share, Batch(SESSION, examples()[:1]))
            await receiver.faults.slow(1)
            with pytest.raises(RetryableError, match="timed out"):
                await transport.sync(share, Batch(SESSION, examples()[3:4]))
        finally:
            await transport.aclose()


async def test_a2a_error_answers_are_mapped() -> None:
    transport = A2aTransport("http://127.0.0.1:9")
    try:

        async def failing(error: Exception) -> None:
            raise error

        with pytest.raises(RejectedError, match="Context x does not match"):
            await transport._call(
                "sync", failing(InvalidParamsError("Context x does not match")), secret=None
            )
        with pytest.raises(RetryableError, match="database is locked"):
            await transport._call("sync", failing(InternalError("database is locked")), secret=None)
    finally:
        await transport.aclose()


def test_unknown_binding_is_a_user_error() -> None:
    with pytest.raises(UserError, match="a2a_binding 'grpc'"):
        A2aTransport("http://127.0.0.1:9", binding="grpc")


def test_missing_sdk_is_a_one_line_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "a2a.client", None)  # import a2a.client -> ImportError
    with pytest.raises(UserError, match=r"scripts/install --extras a2a") as raised:
        A2aTransport("http://127.0.0.1:9")
    assert "\n" not in str(raised.value)


@pytest.fixture(params=BINDINGS)
def binding(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize("shape", ["objects", "arrays", "mixed"])
def test_a_deeply_nested_item_is_carried_by_a_part_protobuf_reads_back(shape: str) -> None:
    """Every nesting up to the JSON text's own limit reaches the receiver unchanged: protobuf
    refuses a data part nested too deep when it reads the message (objects nested 33 deep
    were; hypothesis found one in tests/test_poison_items.py), so those go as text parts."""
    from a2a.types.a2a_pb2 import Message

    wrap = {
        "objects": lambda value: {"k": value},
        "arrays": lambda value: [value],
        "mixed": lambda value: {"k": [value]},
    }[shape]
    for levels in (1, 10, 23, 24, 40, 200):
        value: Any = 1
        for _ in range(levels):
            value = wrap(value)
        item = {"type": "part", "data": {"id": "prt_1", "deep": value}}
        sent = Message(parts=[item_part(item)])
        [part] = Message.FromString(sent.SerializeToString()).parts
        assert part_item(part) == item, (shape, levels)
