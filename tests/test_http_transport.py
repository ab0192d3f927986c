"""HttpTransport against a real HTTP server on 127.0.0.1: the REST calls opencode's share makes,
and how every kind of answer maps to ok / retry / reject / share-not-found."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncd import jsontext
from syncd.errors import UserError
from syncd.model import Batch, Share
from syncd.transports.base import (
    RejectedError,
    RetryableError,
    SecretRefusedError,
    ShareNotFoundError,
)
from syncd.transports.http import HttpTransport
from syncd.transports.tls import verify_setting
from tests.support.scripted_server import Answer, Server

SECRET = "s3cr3t-7f1e9c2a-share-secret"
SHARE = Share(id="shr_1", secret=SECRET, url="http://127.0.0.1/share/shr_1")
BATCH = Batch(session_id="ses_1", items=[{"type": "session", "data": {"id": "ses_1"}}])


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    yield running
    running.close()


@pytest.fixture
async def transport(server: Server) -> Any:
    http = HttpTransport(server.url + "/", timeout=5.0, verify=True)
    yield http
    await http.aclose()


def assert_secret_hidden(error: BaseException) -> None:
    assert SECRET not in str(error)
    assert SECRET not in repr(error)
    assert SECRET not in repr(error.args)


async def test_create_sync_delete_speak_opencodes_share_api(
    server: Server, transport: HttpTransport
) -> None:
    def answer(method: str, path: str) -> Answer:
        if path == "/api/share":
            return Answer(body={"id": "shr_1", "secret": SECRET, "url": "http://x/share/shr_1"})
        if path.endswith("/sync"):
            return Answer(body={"success": True, "syncCount": 3})
        return Answer()

    server.answer = answer
    created = await transport.create("ses_1", BATCH)
    assert created.synced is False  # REST cannot carry data with create
    assert (created.share.id, created.share.secret) == ("shr_1", SECRET)
    await transport.sync(created.share, BATCH)
    await transport.delete(created.share)
    assert [(r.method, r.path, r.body) for r in server.requests] == [
        ("POST", "/api/share", {"sessionID": "ses_1"}),
        ("POST", "/api/share/shr_1/sync", {"secret": SECRET, "data": BATCH.items}),
        ("DELETE", "/api/share/shr_1", {"secret": SECRET}),
    ]


async def test_share_id_cannot_escape_its_path(server: Server, transport: HttpTransport) -> None:
    await transport.sync(Share(id="../x?y", secret=SECRET, url=""), BATCH)
    assert server.requests[0].path == "/api/share/..%2Fx%3Fy/sync"


async def test_unknown_share_on_sync_is_share_not_found(
    server: Server, transport: HttpTransport
) -> None:
    server.answer = lambda method, path: Answer(404, "Share not found")
    with pytest.raises(ShareNotFoundError) as info:
        await transport.sync(SHARE, BATCH)
    assert "Share not found" in str(info.value)
    await transport.delete(SHARE)  # already gone is what delete wants


async def test_404_on_create_is_a_plain_rejection(server: Server, transport: HttpTransport) -> None:
    server.answer = lambda method, path: Answer(404, "<html>no such route</html>")
    with pytest.raises(RejectedError) as info:
        await transport.create("ses_1", None)
    assert not isinstance(info.value, ShareNotFoundError)


async def test_403_on_a_share_is_a_refused_secret(server: Server, transport: HttpTransport) -> None:
    server.answer = lambda method, path: Answer(403, {"error": "Invalid secret"})
    with pytest.raises(SecretRefusedError):
        await transport.sync(SHARE, BATCH)


async def test_other_4xx_is_rejected_with_the_servers_message_and_no_secret(
    server: Server, transport: HttpTransport
) -> None:
    echo = f"Invalid batch {SECRET} for share shr_1 " + "x" * 1000
    server.answer = lambda method, path: Answer(422, echo)
    with pytest.raises(RejectedError) as info:
        await transport.sync(SHARE, BATCH)
    message = str(info.value)
    assert "422" in message and "Invalid batch *** for share shr_1" in message
    assert len(message) < 400
    assert_secret_hidden(info.value)


@pytest.mark.parametrize("status", [429, 500, 502, 503])
async def test_429_and_5xx_are_retryable_with_retry_after_seconds(
    server: Server, transport: HttpTransport, status: int
) -> None:
    server.answer = lambda method, path: Answer(status, "busy", {"Retry-After": "7"})
    with pytest.raises(RetryableError) as info:
        await transport.sync(SHARE, BATCH)
    assert info.value.retry_after == 7.0
    assert str(status) in str(info.value)


@pytest.mark.parametrize(
    ("header", "low", "high"),
    [
        (3600.0, 3500.0, 3601.0),  # an HTTP date an hour from when the test runs
        (-3600.0, 0.0, 0.0),  # an HTTP date an hour ago
        ("1.5", 1.5, 1.5),
        ("-3", 0.0, 0.0),
    ],
)
async def test_retry_after_http_date_and_edge_values(
    server: Server, transport: HttpTransport, header: str | float, low: float, high: float
) -> None:
    if isinstance(header, float):
        header = email.utils.formatdate(time.time() + header, usegmt=True)
    server.answer = lambda method, path: Answer(503, "", {"Retry-After": header})
    with pytest.raises(RetryableError) as info:
        await transport.sync(SHARE, BATCH)
    assert info.value.retry_after is not None
    assert low <= info.value.retry_after <= high


@pytest.mark.parametrize("header", [None, "soon", "inf"])
async def test_missing_or_garbage_retry_after_is_none(
    server: Server, transport: HttpTransport, header: str | None
) -> None:
    headers = {"Retry-After": header} if header else {}
    server.answer = lambda method, path: Answer(500, "", headers)
    with pytest.raises(RetryableError) as info:
        await transport.sync(SHARE, BATCH)
    assert info.value.retry_after is None


@pytest.mark.parametrize(
    "answer",
    [
        Answer(200, {}),  # opencode's own share server
        Answer(200, {"success": True, "syncCount": 3}),  # older share workers, syncd serve
        Answer(200, "[]"),
        Answer(200, "null"),
        Answer(204, ""),
    ],
)
async def test_any_2xx_acknowledges_sync_and_delete(
    server: Server, transport: HttpTransport, answer: Answer
) -> None:
    server.answer = lambda method, path: answer
    await transport.sync(SHARE, BATCH)
    await transport.delete(SHARE)
    assert [r.method for r in server.requests] == ["POST", "DELETE"]


@pytest.mark.parametrize(
    "answer",
    [
        Answer(200, "<html><body>Service unavailable</body></html>", {"content-type": "text/html"}),
        Answer(200, '{"success": tr'),  # cut short with a correct length
        Answer(200, {"success": False}),
        Answer(200, {"success": "true"}),
    ],
)
async def test_a_2xx_that_is_no_share_servers_answer_acknowledges_nothing(
    server: Server, transport: HttpTransport, answer: Answer
) -> None:
    server.answer = lambda method, path: answer
    with pytest.raises(RetryableError, match="not acknowledged"):
        await transport.sync(SHARE, BATCH)


async def test_an_answer_cut_short_is_not_acknowledged(
    server: Server, transport: HttpTransport
) -> None:
    server.answer = lambda method, path: Answer(200, "{}", content_length=200)
    with pytest.raises(RetryableError) as info:
        await transport.sync(SHARE, BATCH)
    assert_secret_hidden(info.value)


@pytest.mark.parametrize(
    "answer",
    [
        Answer(200, "<html><body>Welcome to nginx</body></html>", {"content-type": "text/html"}),
        Answer(200, '{"id": "shr_1", "secret": "s", "url": '),  # cut short, correct length
        Answer(200, {}),
        Answer(204, ""),
    ],
)
async def test_create_needs_the_share_in_its_answer(
    server: Server, transport: HttpTransport, answer: Answer
) -> None:
    server.answer = lambda method, path: answer
    with pytest.raises(RetryableError, match="not acknowledged"):
        await transport.create("ses_1", None)


async def test_create_answer_without_secret_is_not_acknowledged(
    server: Server, transport: HttpTransport
) -> None:
    server.answer = lambda method, path: Answer(200, {"id": "shr_1", "url": "u"})
    with pytest.raises(RetryableError, match="lacks id, secret or url"):
        await transport.create("ses_1", None)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirect_is_never_followed(
    server: Server, transport: HttpTransport, status: int
) -> None:
    elsewhere = Server()
    try:
        location = f"{elsewhere.url}/api/share/shr_1/sync"
        server.answer = lambda method, path: Answer(status, "", {"Location": location})
        with pytest.raises(RetryableError) as info:
            await transport.sync(SHARE, BATCH)
        assert elsewhere.requests == []
        assert len(server.requests) == 1
        assert "redirect" in str(info.value) and location in str(info.value)
        assert_secret_hidden(info.value)
    finally:
        elsewhere.close()


async def test_refused_connection_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    http = HttpTransport(f"http://127.0.0.1:{port}", timeout=5.0, verify=True)
    try:
        with pytest.raises(RetryableError) as info:
            await http.sync(SHARE, BATCH)
        assert "ConnectError" in str(info.value)
        assert_secret_hidden(info.value)
    finally:
        await http.aclose()


async def test_timeout_is_retryable(server: Server) -> None:
    server.answer = lambda method, path: Answer(delay=1.0)
    http = HttpTransport(server.url, timeout=0.1, verify=True)
    try:
        with pytest.raises(RetryableError) as info:
            await http.sync(SHARE, BATCH)
        assert "Timeout" in str(info.value)
    finally:
        await http.aclose()


async def test_concurrent_calls_share_one_client(server: Server) -> None:
    async with httpx.AsyncClient(follow_redirects=False) as client:
        http = HttpTransport(server.url, timeout=5.0, verify=True, client=client)
        shares = [Share(id=f"shr_{i}", secret=SECRET, url="") for i in range(20)]
        await asyncio.gather(*(http.sync(share, BATCH) for share in shares))
        await http.aclose()
        assert not client.is_closed  # a client passed in belongs to the caller
    assert sorted(r.path for r in server.requests) == sorted(
        f"/api/share/shr_{i}/sync" for i in range(20)
    )


def test_ca_bundle_must_be_a_pem_file(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("this is not a certificate")
    with pytest.raises(UserError, match="ca_bundle"):
        verify_setting(str(not_pem))
    assert isinstance(verify_setting(tmp_path), ssl.SSLContext)  # a certificate directory
    assert verify_setting(False) is False


async def test_a_planned_batch_travels_as_the_same_json_as_an_unplanned_one() -> None:
    """The planner's texts make the sync body (no item encoded twice), byte for byte the body
    the transport encodes from the items themselves, non-ASCII text and numbers of every kind
    included."""
    items = [
        {"type": "session", "data": {"id": "ses_1", "title": "café ☕", "cost": 0.1 + 0.2}},
        {"type": "part", "data": {"id": "p", "messageID": "m", "n": -(2**70), "x": [1.5, None]}},
        {"type": "session_diff", "data": [{"file": "a\nb", "additions": 1}]},
    ]
    texts = [jsontext.dumps(item["data"]) for item in items]
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"success": True, "syncCount": 1})

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    async with client:
        transport = HttpTransport("http://receiver", timeout=5, verify=True, client=client)
        await transport.sync(SHARE, Batch("ses_1", items, texts=texts))
        await transport.sync(SHARE, Batch("ses_1", items))
    planned, unplanned = sent
    assert (
        planned.content == unplanned.content == jsontext.encode({"secret": SECRET, "data": items})
    )
    assert planned.headers["content-type"] == "application/json"
