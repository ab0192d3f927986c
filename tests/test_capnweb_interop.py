"""syncd's capnweb transports against the reference implementation: npm capnweb 0.12.0's own
HTTP batch and WebSocket server sides (tests/node/share_rpc_server.mjs) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from syncd.model import Batch, Share
from syncd.transports.base import (
    KeyRefusedError,
    RetryableError,
    SecretRefusedError,
    ShareNotFoundError,
)
from syncd.transports.capnweb import CapnwebBatchTransport, CapnwebWsTransport
from syncd.transports.capnweb.share import CapnwebTransport
from syncd.wire.capnweb.codec import UNDEFINED, BigInt, JsError, dumps
from syncd.wire.capnweb.protocol import Call, frame_calls, parse_answer
from tests.support.node_share_rpc import node_share_server

KEY = "test-key-9f8e"
TRANSPORTS = {"batch": CapnwebBatchTransport, "ws": CapnwebWsTransport}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with node_share_server() as url:
        yield url


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[str]:
    with node_share_server(key=KEY) as url:
        yield url


@pytest.fixture(params=sorted(TRANSPORTS))
async def transport(request: pytest.FixtureRequest, server: str) -> AsyncIterator[Any]:
    made = TRANSPORTS[request.param](server, key=None, timeout=10, verify=True)
    yield made
    await made.aclose()


async def call(transport: CapnwebTransport, method: str, *args: Any) -> Any:
    [answer] = await transport.round_trip([Call(method, args)])
    return answer


def batch(session_id: str, *items: dict[str, Any]) -> Batch:
    return Batch(session_id, list(items))


ROUND_TRIP_VALUES = [
    [],
    [[]],
    [[[[[]]]]],
    ["date", 5],
    ["bytes", "AQID"],
    ["undefined"],
    "date",
    {"type": "session_diff", "data": [[], [["nested"]], {"x": []}]},
    "unicode: héllo ✓ 😀 \u2028 \x00",
    {"": "", "emoji 😀": [None, True, False, 0, -0.5, 1e300, 2**53 - 1]},
    UNDEFINED,
    {"a": UNDEFINED},
    math.inf,
    -math.inf,
    BigInt(2**70),
    BigInt(-5),
    datetime(2025, 6, 8, 12, 30, 1, 234000, tzinfo=UTC),
    b"\x00\x01\xfe\xff",
    b"",
    JsError("TypeError", "boom"),
]


async def test_codec_round_trips_through_the_reference_echo(transport: CapnwebTransport) -> None:
    answers = await transport.round_trip([Call("echo", (value,)) for value in ROUND_TRIP_VALUES])
    assert answers == ROUND_TRIP_VALUES
    assert math.isnan(await call(transport, "echo", math.nan))


async def test_the_reference_sees_each_special_value_as_its_javascript_type(
    transport: CapnwebTransport,
) -> None:
    values = [["date", 5], datetime(2025, 1, 1, tzinfo=UTC), b"x", BigInt(1), UNDEFINED, "date"]
    types = await call(transport, "types", *values)
    assert types == ["array", "Date", "Uint8Array", "bigint", "undefined", "string"]


async def test_deep_nesting_round_trips_and_a_large_payload_goes_but_never_comes_back(
    transport: CapnwebTransport,
) -> None:
    deep: Any = ["bottom"]
    for _ in range(200):
        deep = [deep, {}]
    assert await call(transport, "echo", deep) == deep
    big = {"type": "part", "data": {"id": "prt_big", "text": "é" * (1024 * 1024)}}
    assert await call(transport, "types", big) == ["object"]
    # syncd reads no answer past MAX_ANSWER: an echo of 2 MB is refused, not buffered.
    with pytest.raises(RetryableError, match=r"larger than|1009"):
        await call(transport, "echo", big)


async def test_create_sync_delete_with_the_reference_share_server(
    transport: CapnwebTransport, server: str
) -> None:
    session_id = f"ses_{transport.name}_life"
    first = batch(session_id, {"type": "session", "data": {"id": session_id, "title": "t"}})
    created = await transport.create(session_id, first)
    assert created.synced
    megabyte = {"id": "prt_1", "messageID": "msg_1", "text": "x" * (1024 * 1024)}
    await transport.sync(created.share, batch(session_id, {"type": "part", "data": megabyte}))
    # Reading the megabyte back takes a reader that accepts answers that large.
    reader = type(transport)(server, key=None, timeout=10, verify=True, max_answer=4 << 20)
    try:
        stored = await call(reader, "readShare", created.share.id)
    finally:
        await reader.aclose()
    assert stored["session"] == {"id": session_id, "title": "t"}
    assert stored["parts"] == [megabyte]
    assert stored["syncCount"] == 2

    wrong = Share(created.share.id, "not-the-secret", created.share.url)
    with pytest.raises(SecretRefusedError, match="Invalid secret") as refused:
        await transport.sync(wrong, first)
    assert not isinstance(refused.value, ShareNotFoundError)
    await transport.delete(created.share)
    with pytest.raises(ShareNotFoundError, match="Share not found"):
        await transport.sync(created.share, first)
    await transport.delete(created.share)  # already gone is what delete wants


async def test_thrown_errors_reach_python_with_their_message(transport: CapnwebTransport) -> None:
    assert await call(transport, "fail", "it broke") == JsError("Error", "it broke")
    assert await call(transport, "fail", "bad arg", "RangeError") == JsError(
        "RangeError", "bad arg"
    )
    answers = await transport.round_trip([Call("fail", ("first",)), Call("echo", (1,))])
    assert answers == [JsError("Error", "first"), 1]  # one throw spoils nothing else


async def test_create_and_sync_travel_pipelined_in_one_post(server: str) -> None:
    sent: list[bytes] = []
    transport = CapnwebBatchTransport(server, key=None, timeout=10, verify=True)

    async def record(request: Any) -> None:
        sent.append(request.content)

    transport._client.event_hooks["request"].append(record)
    try:
        before = await call(transport, "stats")
        session_id = "ses_pipelined_1"
        first = batch(session_id, {"type": "message", "data": {"id": "msg_1", "tags": []}})
        sent.clear()
        created = await transport.create(session_id, first)
        create_posts = list(sent)
        after = await call(transport, "stats")
    finally:
        await transport.aclose()
    assert created.synced
    assert len(create_posts) == 1
    assert after["requests"] - before["requests"] == 2  # the create+sync POST and this stats
    assert after["batches"][-2] == ["createShare", "syncShare"]
    lines = create_posts[0].decode().split("\n")
    size, items = len(create_posts[0]), len(dumps(first.items))
    print(f"create+sync: 1 POST, {size} bytes for a {items}-byte batch")
    assert [line[:7] for line in lines] == ['["push"', '["pull"', '["push"', '["pull"']
    assert '["pipeline",1,["secret"]]' in lines[2]


async def test_the_key_header_is_sent_and_its_absence_named(keyed_server: str) -> None:
    for kind in TRANSPORTS.values():
        keyed = kind(keyed_server, key=KEY, timeout=10, verify=True)
        try:
            created = await keyed.create("ses_keyed_1", None)
            assert created.share.id == "_keyed_1"
        finally:
            await keyed.aclose()
        for key, named in (
            (None, "none is configured"),
            ("wrong-key-77", "refuses the key"),
        ):
            bare = kind(keyed_server, key=key, timeout=10, verify=True)
            try:
                with pytest.raises(KeyRefusedError, match="401") as refused:
                    await bare.create("ses_keyed_2", None)
            finally:
                await bare.aclose()
            assert "x-opencode-share-key" in str(refused.value)
            assert named in str(refused.value)
            assert KEY not in str(refused.value) and "wrong-key-77" not in str(refused.value)


async def test_ten_thousand_calls_on_one_socket_leave_nothing_retained(server: str) -> None:
    transport = CapnwebWsTransport(server, key=None, timeout=30, verify=True)
    try:
        warm = await call(transport, "stats")
        for start in range(0, 10_000, 500):
            calls = [Call("echo", ({"n": n, "pad": "x" * 100},)) for n in range(start, start + 500)]
            answers = await asyncio.gather(*(transport.round_trip([c]) for c in calls))
            assert [a[0]["n"] for a in answers] == list(range(start, start + 500))
        await call(transport, "echo", 0)  # lets the last releases arrive before stats
        done = await call(transport, "stats")
    finally:
        await transport.aclose()
    assert transport.sessions_opened == 1
    [session] = done["open"]
    # main object + the stats call in flight; each call was released after its answer.
    assert session["exports"] <= 3
    growth = done["heapUsed"] - warm["heapUsed"]
    print(f"server heap {warm['heapUsed']} -> {done['heapUsed']} after 10,000 calls ({growth:+})")
    assert growth < 4 * 1024 * 1024


async def test_retention_is_what_the_stats_would_show_without_release(server: str) -> None:
    """The control for the test above: the same server keeps every unreleased result."""
    from websockets.asyncio.client import connect

    async with connect(server.replace("http", "ws") + "/rpc/share") as socket:
        calls = [Call("echo", (n,)) for n in range(200)] + [Call("stats", ())]
        for message in frame_calls(calls, first_id=1):
            await socket.send(dumps(message))
        answers = [await socket.recv() for _ in calls]
    stats = next(parse_answer(a).value for a in answers if a.startswith('["resolve",201,'))
    [session] = stats["open"]
    assert session["exports"] >= 200  # every unreleased echo is still held


@pytest.mark.parametrize("how", ["abort", "close", "terminate"])
async def test_a_broken_socket_fails_calls_in_flight_and_the_next_call_reconnects(
    server: str, how: str
) -> None:
    transport = CapnwebWsTransport(server, key=None, timeout=20, verify=True)
    breaker = CapnwebBatchTransport(server, key=None, timeout=10, verify=True)
    try:
        assert await call(transport, "echo", "before") == "before"
        hanging = asyncio.create_task(call(transport, "hang"))
        await asyncio.sleep(0.2)
        assert await call(breaker, "breakSockets", how) >= 1
        with pytest.raises(RetryableError, match="session broken"):
            await hanging
        assert await call(transport, "echo", "after") == "after"
        assert transport.sessions_opened == 2
    finally:
        await transport.aclose()
        await breaker.aclose()


async def test_silence_past_the_deadline_breaks_the_session(server: str) -> None:
    transport = CapnwebWsTransport(server, key=None, timeout=1, verify=True)
    try:
        with pytest.raises(RetryableError, match="no answer within 1 s"):
            await call(transport, "hang")
        assert await call(transport, "echo", 1) == 1
        assert transport.sessions_opened == 2
        # A server that stops reading answers no ping: the idle session breaks by itself.
        breaker = CapnwebBatchTransport(server, key=None, timeout=10, verify=True)
        try:
            assert await call(breaker, "breakSockets", "pause") >= 1
        finally:
            await breaker.aclose()
        session = transport._session
        assert session is not None
        for _ in range(100):
            if session.broken:
                break
            await asyncio.sleep(0.1)
        assert session.broken is not None
        assert await call(transport, "echo", 2) == 2
        assert transport.sessions_opened == 3
    finally:
        await transport.aclose()


async def test_a_dead_server_is_retryable(server: str) -> None:
    for kind in TRANSPORTS.values():
        transport = kind("http://127.0.0.1:9", key=None, timeout=2, verify=True)
        try:
            with pytest.raises(RetryableError):
                await transport.create("ses_x", None)
        finally:
            await transport.aclose()
