"""Retry-After, however a receiver writes it (nan, inf, negative, huge, a date), ends in a
bounded, finite wait on every transport: `asyncio.sleep(nan)` never returns."""

from __future__ import annotations

import math
import sys

import pytest
from tenacity import RetryCallState

from syncd.model import Batch, Share
from syncd.pipeline.deliver import RetryPolicy
from syncd.transports.a2a import A2aTransport
from syncd.transports.base import RetryableError, Transport
from syncd.transports.capnweb import CapnwebBatchTransport, CapnwebWsTransport
from syncd.transports.http import HttpTransport
from syncd.transports.outcome import retry_after
from tests.support.scripted_server import Answer, Server

SESSION = "ses_retryafter000000000000001"
BACKOFF_MAX = 30.0
SHARE = Share(id="shr_1", secret="s3cr3t", url="http://127.0.0.1/share/shr_1")


def transport(name: str, url: str) -> Transport:
    if name == "http":
        return HttpTransport(url, timeout=5.0, verify=True)
    if name == "capnweb-batch":
        return CapnwebBatchTransport(url, key=None, timeout=5.0, verify=True)
    if name == "capnweb-ws":
        return CapnwebWsTransport(url, key=None, timeout=5.0, verify=True)
    return A2aTransport(url, timeout=5.0, verify=True, binding="jsonrpc")


def policy_wait(error: BaseException, attempt: int = 1) -> float:
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    state.set_exception((type(error), error, None))
    return RetryPolicy(backoff_max=BACKOFF_MAX).wait(state)


@pytest.mark.parametrize(
    ("header", "expected"),
    [("nan", None), ("inf", None), ("-inf", None), ("1e400", None), ("-5", 0.0),
     ("1e12", 1e12), ("soon", None), ("", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
)  # fmt: skip
def test_the_header_is_read_as_a_finite_number_or_not_at_all(
    header: str, expected: float | None
) -> None:
    assert retry_after({"retry-after": header}) == expected


@pytest.mark.parametrize("value", [math.nan, math.inf, -5.0, 1e12, sys.float_info.max])
def test_the_policy_never_waits_past_its_bound(value: float) -> None:
    wait = policy_wait(RetryableError("503", retry_after=value))
    assert math.isfinite(wait) and 0.0 <= wait <= BACKOFF_MAX


@pytest.mark.parametrize("name", ["http", "capnweb-batch", "capnweb-ws", "a2a"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -5.0, 1e12])
async def test_every_transport_hands_the_policy_a_bounded_wait(name: str, value: float) -> None:
    server = Server()  # every request, the WebSocket upgrade included, answers this 503
    server.answer = lambda method, path: Answer(503, "busy", {"Retry-After": f"{value:g}"})
    client = transport(name, server.url)
    try:
        with pytest.raises(RetryableError) as failed:
            await client.sync(SHARE, Batch(SESSION, [{"type": "session", "data": {}}]))
    finally:
        await client.aclose()
        server.close()
    assert server.requests  # the answer came from the server, not from a refused connection
    asked = failed.value.retry_after
    assert asked is None or (math.isfinite(asked) and asked >= 0)
    wait = policy_wait(failed.value, attempt=3)
    assert math.isfinite(wait) and 0.0 <= wait <= BACKOFF_MAX
