"""`syncd serve`'s `/rpc/share` (Cap'n Web over HTTP batch and WebSocket): syncd's own client
in both modes, and npm capnweb's client (tests/node/share_rpc_client.mjs)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from syncd.model import Batch, Share
from syncd.receiver import rpc
from syncd.receiver.capnweb_session import MAX_EXPORTS, ProtocolError, ServerSession
from syncd.transports.base import (
    KeyRefusedError,
    RejectedError,
    SecretRefusedError,
    ShareNotFoundError,
)
from syncd.transports.capnweb import CapnwebBatchTransport, CapnwebWsTransport
from syncd.transports.capnweb.share import CapnwebTransport
from syncd.wire.capnweb.codec import JsError, dumps
from syncd.wire.capnweb.protocol import Call, frame_calls, parse_answer, release
from tests.support.node_share_rpc import run_node_client
from tests.support.receiver import Receiver, running_receiver

KEY = "serve-key-31d"
TRANSPORTS = {"batch": CapnwebBatchTransport, "ws": CapnwebWsTransport}


@pytest.fixture
async def receiver(tmp_path: Path, store_url: str) -> AsyncIterator[Receiver]:
    async with running_receiver(tmp_path, key=KEY, store=store_url) as running:
        yield running


@pytest.fixture(params=sorted(TRANSPORTS))
async def transport(request: pytest.FixtureRequest, receiver: Receiver) -> AsyncIterator[Any]:
    made = TRANSPORTS[request.param](receiver.url, key=KEY, timeout=10, verify=True)
    yield made
    await made.aclose()


def session_items(session_id: str) -> list[dict[str, Any]]:
    return [
        {"type": "session", "data": {"id": session_id, "title": "t", "tags": ["date", 5]}},
        {"type": "message", "data": {"id": "msg_1", "sessionID": session_id, "role": "user"}},
        {"type": "part", "data": {"id": "prt_1", "messageID": "msg_1", "text": "héllo"}},
        {"type": "session_diff", "data": [{"file": "a.txt", "additions": 1}]},
        {"type": "model", "data": [{"id": "m1", "providerID": "p"}]},
    ]


async def test_create_sync_delete_against_syncd_serve(
    transport: CapnwebTransport, receiver: Receiver
) -> None:
    session_id = f"ses_serve_{transport.name}"
    first = Batch(session_id, session_items(session_id))
    created = await transport.create(session_id, first)
    assert created.synced
    assert created.share.url == f"{receiver.url}/share/{created.share.id}"
    stored = await receiver.store.read_share(created.share.id)
    assert stored["session"]["tags"] == ["date", 5]
    assert stored["diffs"] == [{"file": "a.txt", "additions": 1}]

    more = Batch(session_id, [{"type": "session_diff", "data": [{"file": "b.txt"}]}])
    await transport.sync(created.share, more)
    assert (await receiver.store.read_share(created.share.id))["diffs"] == [{"file": "b.txt"}]
    share = created.share
    again = Call("syncShare", (share.id, share.secret, more.items, more.key))
    other = Call("syncShare", (share.id, share.secret, more.items, "another-batch"))
    # The batch re-sent after a lost answer is applied once; another batch counts.
    answers = await transport.round_trip([again, again, other])
    assert [answer["syncCount"] for answer in answers] == [2, 2, 3]

    wrong = Share(created.share.id, "wrong-secret", created.share.url)
    with pytest.raises(SecretRefusedError, match="Invalid secret"):
        await transport.sync(wrong, more)
    await transport.delete(created.share)
    with pytest.raises(ShareNotFoundError):
        await transport.sync(created.share, more)


async def test_create_and_sync_take_one_post(receiver: Receiver) -> None:
    transport = CapnwebBatchTransport(receiver.url, key=KEY, timeout=10, verify=True)
    try:
        before = len(receiver.answers)
        created = await transport.create("ses_one_post", Batch("ses_one_post", session_items("x")))
    finally:
        await transport.aclose()
    assert created.synced
    assert receiver.answers[before:] == [("POST", "/rpc/share", 200)]
    assert receiver.create_count == 1


async def test_bad_first_batch_keeps_the_share_and_is_refused_on_sync(
    transport: CapnwebTransport, receiver: Receiver
) -> None:
    bad = Batch("ses_bad", [{"type": "no-such-type", "data": {}}])
    created = await transport.create("ses_bad", bad)
    assert not created.synced  # the share stands; the batch is refused when sync() sends it
    with pytest.raises(RejectedError, match=r"TypeError.*no-such-type"):
        await transport.sync(created.share, bad)
    # opencode's form, createShare(sessionID, initialData), refuses bad data before creating.
    [answer] = await transport.round_trip([Call("createShare", ("ses_bad_2", bad.items))])
    assert isinstance(answer, JsError) and answer.name == "TypeError"
    assert [s["session_id"] for s in await receiver.store.list_shares()] == ["ses_bad"]


async def test_the_key_is_required_on_both_modes(receiver: Receiver) -> None:
    for kind in TRANSPORTS.values():
        for key in (None, "wrong-key-123"):
            bare = kind(receiver.url, key=key, timeout=10, verify=True)
            try:
                with pytest.raises(KeyRefusedError, match=r"401.*x-opencode-share-key") as refused:
                    await bare.create("ses_nokey", None)
            finally:
                await bare.aclose()
            assert KEY not in str(refused.value) and "wrong-key-123" not in str(refused.value)
    assert receiver.create_count == 0


@pytest.mark.parametrize("mode", ["batch", "ws"])
async def test_npm_capnweb_client_against_syncd_serve(receiver: Receiver, mode: str) -> None:
    session_id = f"ses_node_{mode}"
    out = await run_node_client(receiver.url, mode, session_id, KEY)
    assert "error" not in out, out
    assert out["synced"] == {"success": True, "syncCount": 2}
    assert out["secondSynced"] == {"success": True, "syncCount": 1}
    assert out["wrongSecret"] == {"name": "Error", "message": "Invalid secret"}
    assert out["deleted"] == {"success": True}
    assert out["afterDelete"] == {"name": "Error", "message": "Share not found"}
    stored = await receiver.store.read_share(out["created"]["id"])
    assert stored["session"]["title"] == "from node"
    assert stored["messages"][0]["tags"] == ["date", 5] and stored["messages"][0]["empty"] == []
    assert stored["parts"][0]["text"] == "héllo ✓"
    without_key = await run_node_client(receiver.url, mode, "ses_node_nokey", None)
    assert "error" in without_key


async def test_results_are_kept_until_released() -> None:
    async def dispatch(method: str, args: list[Any]) -> Any:
        return {"method": method, "args": args}

    sent: list[str] = []
    session = ServerSession(dispatch, sent.append)
    try:
        for message in frame_calls([Call("echo", (n,)) for n in range(50)], first_id=1):
            session.receive(dumps(message))
        await session.settled()
        assert len(sent) == 50 and session.retained == 50
        for answer in map(parse_answer, sent):
            session.receive(dumps(release(answer.import_id)))  # type: ignore[arg-type]
        assert session.retained == 0
    finally:
        await session.close()


async def test_calls_released_before_they_ran_still_count_against_the_limit() -> None:
    """A caller releasing each call at once, faster than they run, cannot queue without end."""
    blocked = asyncio.Event()

    async def dispatch(method: str, args: list[Any]) -> Any:
        await blocked.wait()  # the store is slow: every call waits in the queue

    session = ServerSession(dispatch, lambda _text: None)
    try:
        with pytest.raises(ProtocolError, match="unreleased"):
            for export_id in range(1, MAX_EXPORTS + 2):
                session.receive(dumps(["push", ["import", 0, ["syncShare"], []]]))
                session.receive(dumps(release(export_id)))
        assert session.retained == MAX_EXPORTS
        blocked.set()
        await session.settled()
        assert session.retained == 0  # each released call is let go once it has run
    finally:
        await session.close()


def _masked_text_frame(text: str) -> bytes:
    """A client's WebSocket text frame (masked with a zero key, so the payload reads as is)."""
    data = text.encode()
    if len(data) < 126:
        length = bytes([0x80 | len(data)])
    else:
        length = bytes([0x80 | 126]) + struct.pack("!H", len(data))
    return b"\x81" + length + b"\0\0\0\0" + data


async def test_a_caller_not_reading_its_answers_is_held_back(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls sent over a WebSocket by a caller that never reads the answers stop being read
    (TCP holds the caller back) instead of piling up answers in the receiver."""
    monkeypatch.setattr(rpc, "MAX_AHEAD", 10)
    host, port = receiver.url.removeprefix("http://").split(":")
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no room to absorb answers
    raw.connect((host, int(port)))
    raw.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=raw)
    try:
        writer.write(
            f"GET /rpc/share HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nx-opencode-share-key: {KEY}\r\n\r\n".encode()
        )
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(
            b"HTTP/1.1 101"
        )
        method = "m" * 8192  # each answer names it: 4,000 answers are 32 MB, never read

        async def send_all() -> None:
            for export_id in range(1, 4001):
                push = dumps(["push", ["import", 0, [method], []]])
                writer.write(
                    _masked_text_frame(push)
                    + _masked_text_frame(dumps(["pull", export_id]))
                    + _masked_text_frame(dumps(release(export_id)))
                )
                await writer.drain()

        sending = asyncio.create_task(send_all())
        done, _ = await asyncio.wait({sending}, timeout=5)
        assert not done, "the receiver kept reading calls whose answers were not read"
        sending.cancel()
        async with httpx.AsyncClient() as client:  # others are served meanwhile
            assert (await client.get(receiver.url + "/api/share/nope")).status_code == 404
    finally:
        writer.transport.abort()


async def test_a_protocol_violation_aborts_the_socket(receiver: Receiver) -> None:
    url = receiver.url.replace("http", "ws") + "/rpc/share"
    async with connect(url, additional_headers={"x-opencode-share-key": KEY}) as socket:
        await socket.send('["no-such-message"]')
        abort = parse_answer(await asyncio.wait_for(socket.recv(), 10))
        assert abort.kind == "abort" and "bad RPC message" in abort.value.message
        await asyncio.wait_for(socket.wait_closed(), 10)
    assert socket.close_code == 3000


async def test_a_bad_batch_body_is_a_400(receiver: Receiver) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            receiver.url + "/rpc/share", content=b"not json", headers={"x-opencode-share-key": KEY}
        )
    assert answer.status_code == 400
    assert "bad capnweb batch" in answer.text
    assert json.dumps(answer.text)  # a readable message, not a traceback


@pytest.mark.parametrize("transport_name", ["capnweb-batch", "capnweb-ws"])
async def test_the_sample_database_arrives_whole_over_capnweb(
    tmp_path: Path, sample_db: Path, receiver: Receiver, transport_name: str
) -> None:
    from syncd.commands.sync import sync_once
    from syncd.config import load_config
    from tests.support.archive_check import expected_state

    flags = {"db": str(sample_db), "state": str(tmp_path / "state.db"),
             "transport": transport_name, "url": receiver.url}  # fmt: skip
    env = {"HOME": str(tmp_path / "home"), "OPENCODE_SHARE_RPC_KEY": KEY}
    assert await sync_once(load_config(flags, env)) == 0
    expected = expected_state(sample_db)
    shares = await receiver.store.list_shares()
    assert sorted(share["session_id"] for share in shares) == sorted(expected)
    for share in shares:
        stored = await receiver.store.read_share(share["id"])
        want = expected[share["session_id"]]
        assert {m["id"]: m for m in stored["messages"]} == want["messages"]
        assert {p["id"]: p for p in stored["parts"]} == want["parts"]
    assert receiver.create_count == len(expected)
