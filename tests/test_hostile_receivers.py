"""Receivers that answer wrongly: wrong JSON types, an answer about another share or context,
redirects, an agent card pointing elsewhere. Nothing may be marked delivered unless the
receiver acknowledged that exact batch, and nothing (key included) may go to another host."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from syncd.model import Batch, Share
from syncd.pipeline.deliver import RetryPolicy
from syncd.pipeline.pipeline import Pipeline
from syncd.transports.a2a import A2aTransport
from syncd.transports.base import KeyRefusedError, RejectedError, RetryableError
from tests.support.archive_check import make_config
from tests.support.fake_opencode import FakeOpencode
from tests.support.receiver import running_receiver
from tests.support.scripted_server import Answer, Server

SHARE_ANSWER = {"id": "shr_1", "secret": "s3cr3t-share-secret", "url": "http://x/share/shr_1"}


def create_then(sync_answer: Answer) -> Any:
    def answer(method: str, path: str) -> Answer:
        return Answer(body=SHARE_ANSWER) if path == "/api/share" else sync_answer

    return answer


@pytest.mark.parametrize(
    ("name", "answer"),
    [
        ("create id is a number", lambda m, p: Answer(body={**SHARE_ANSWER, "id": 7})),
        (
            "create answer is a list",
            lambda m, p: Answer(body=json.dumps(list(SHARE_ANSWER.values()))),
        ),
        ("create secret missing", lambda m, p: Answer(body={"id": "shr_1", "url": "u"})),
        ("sync success is a string", create_then(Answer(body={"success": "true"}))),
        ("sync success is 1", create_then(Answer(body={"success": 1}))),
        ("sync answer is HTML", create_then(Answer(body="<html>ok</html>"))),
    ],
)
async def test_wrong_answers_acknowledge_nothing(
    tmp_path: Path, fixtures_dir: Path, name: str, answer: Any
) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    writer.part(sid, writer.message(sid, {"role": "user"}), {"type": "text", "text": "hi"})
    server = Server()
    server.answer = answer
    config = make_config(tmp_path, writer.path, url=server.url, transport="http", sessions="all")
    pipeline = await Pipeline.open(config, RetryPolicy(backoff_max=0.05, give_up_after=0.3))
    try:
        await pipeline.capture(deep=True)
        await pipeline.window.cancel()
        pending_before = await pipeline.state.pending(sid, 100)
        assert len(pending_before) == 3  # session, message, part
        await pipeline.deliver(sid)
        assert await pipeline.state.pending(sid, 100) == pending_before, name
        assert await pipeline.state.dead_letters() == []
        [row] = await pipeline.state.session_report()
        assert "not acknowledged" in row["last_error"]
        if "create" in name:
            assert await pipeline.state.share(sid, f"share:{config.origin}") is None
    finally:
        await pipeline.close()
        server.close()
        writer.close()


async def test_redirect_to_another_host_sends_nothing_there(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    server, elsewhere = Server(), Server()
    server.answer = lambda m, p: Answer(307, "", {"Location": f"{elsewhere.url}{p}"})
    config = make_config(tmp_path, writer.path, url=server.url, transport="http", sessions="all")
    pipeline = await Pipeline.open(config, RetryPolicy(backoff_max=0.05, give_up_after=0.3))
    try:
        await pipeline.capture(deep=True)
        await pipeline.window.cancel()
        await pipeline.deliver(sid)
        assert elsewhere.requests == []
        assert await pipeline.state.share(sid, f"share:{config.origin}") is None
        # Not delivered: still pending (retried until url is fixed), the reason on show.
        assert await pipeline.state.dead_letters() == []
        [row] = [r for r in await pipeline.state.session_report() if r["session_id"] == sid]
        assert row["pending"] > 0 and "redirects" in row["last_error"]
    finally:
        await pipeline.close()
        server.close()
        elsewhere.close()
        writer.close()


class Rewrite:
    """ASGI wrapper: replaces `old` by `new` in the bodies of answers to `method` requests."""

    def __init__(self, app: ASGIApp, method: str, old: bytes, new: bytes) -> None:
        self.app, self.method, self.old, self.new = app, method, old, new

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != self.method:
            await self.app(scope, receive, send)
            return
        start: Message = {}
        body = b""

        async def keep(message: Message) -> None:
            nonlocal start, body
            if message["type"] == "http.response.start":
                start = message
            else:
                body += message.get("body", b"")

        await self.app(scope, receive, keep)
        body = body.replace(self.old, self.new)
        headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


SESSION = "ses_hostile000000000000000001"
BATCH = Batch(SESSION, [{"type": "session", "data": {"id": SESSION, "title": "t"}}])


@pytest.mark.parametrize("binding", ["jsonrpc", "http+json"])
async def test_a2a_answer_about_another_context_is_not_an_acknowledgement(
    tmp_path: Path, binding: str
) -> None:
    async with running_receiver(tmp_path) as receiver:
        other = SESSION.replace("1", "2").encode()
        transport = A2aTransport(receiver.url, binding=binding)
        try:
            share = (await transport.create(SESSION, None)).share
            receiver._app = Rewrite(receiver._app, "POST", SESSION.encode(), other)
            with pytest.raises(RetryableError, match="not acknowledged"):
                await transport.sync(share, BATCH)
        finally:
            await transport.aclose()


@pytest.mark.parametrize("binding", ["jsonrpc", "http+json"])
async def test_a2a_task_asking_for_credentials_pauses_delivery_like_a_refused_key(
    tmp_path: Path, binding: str
) -> None:
    """A task in state auth-required: the receiver wants credentials, the batch is not at
    fault; dead-lettered, every batch would follow it."""
    async with running_receiver(tmp_path) as receiver:
        transport = A2aTransport(receiver.url, binding=binding)
        try:
            share = (await transport.create(SESSION, None)).share
            receiver._app = Rewrite(
                receiver._app, "POST", b"TASK_STATE_FAILED", b"TASK_STATE_AUTH_REQUIRED"
            )
            refused_batch = Batch(SESSION, [{"type": "part", "data": {}}])
            with pytest.raises(KeyRefusedError, match="auth_required") as refused:
                await transport.sync(share, refused_batch)
            assert share.secret not in str(refused.value)
        finally:
            await transport.aclose()


async def test_a2a_card_pointing_elsewhere_gets_neither_batch_nor_key(tmp_path: Path) -> None:
    key = "k-very-secret-share-key"
    async with (
        running_receiver(tmp_path / "a", key=key) as receiver,
        running_receiver(tmp_path / "b") as elsewhere,
    ):
        own = f"127.0.0.1:{receiver.port}".encode()
        receiver._app = Rewrite(receiver._app, "GET", own, f"127.0.0.1:{elsewhere.port}".encode())
        transport = A2aTransport(receiver.url, key=key)
        try:
            with pytest.raises(RejectedError, match="another origin") as refused:
                await transport.create(SESSION, None)
            with pytest.raises(RejectedError, match="another origin"):
                await transport.sync(Share("shr_1", "s3cret-value", "u"), BATCH)
            assert key not in str(refused.value)
        finally:
            await transport.aclose()
        assert elsewhere.answers == []
