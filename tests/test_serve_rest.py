"""opencode's share REST API as `syncd serve` answers it, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncd.config import Config, load_config
from syncd.errors import UserError
from syncd.receiver.app import serve
from tests.support.receiver import running_receiver

SESSION_ID = "ses_ded3f60c6ffeY2PHYjxlwlNfGw"


def message(id: str, **fields: Any) -> dict[str, Any]:
    return {"type": "message", "data": {"id": id, "sessionID": SESSION_ID, **fields}}


async def create(client: httpx.AsyncClient, **headers: str) -> dict[str, Any]:
    answer = await client.post("/api/share", json={"sessionID": SESSION_ID}, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture
async def client(tmp_path: Path, store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        running_receiver(tmp_path, store=store_url) as r,
        httpx.AsyncClient(base_url=r.url) as c,
    ):
        yield c


async def test_create_sync_read_delete(client: httpx.AsyncClient) -> None:
    share = await create(client)
    assert set(share) == {"id", "secret", "url"}
    assert share["url"] == f"{client.base_url}/share/{share['id']}"
    sync = await client.post(
        f"/api/share/{share['id']}/sync",
        json={"secret": share["secret"], "data": [message("msg_1", role="user")]},
    )
    assert sync.status_code == 200
    assert sync.json() == {"success": True, "syncCount": 1}
    doc = (await client.get(f"/api/share/{share['id']}")).json()
    assert doc["messages"] == [message("msg_1", role="user")["data"]]
    assert set(doc) == {"session", "messages", "parts", "diffs", "models"}
    items = (await client.get(f"/api/share/{share['id']}/data")).json()
    assert items == [message("msg_1", role="user")]
    listing = (await client.get("/api/share")).json()["shares"]
    assert [row["id"] for row in listing] == [share["id"]]
    assert "secret" not in json.dumps(listing)
    front = await client.get("/")  # the page listing the sessions, the JSON stays above
    assert front.headers["content-type"].startswith("text/html")
    assert f'href="/share/{share["id"]}"' in front.text
    deleted = await client.request(
        "DELETE", f"/api/share/{share['id']}", json={"secret": share["secret"]}
    )
    assert deleted.json() == {"success": True}
    gone = await client.get(f"/api/share/{share['id']}")
    assert (gone.status_code, gone.json()) == (404, {"error": "Share not found"})


async def test_not_found_and_invalid_secret(client: httpx.AsyncClient) -> None:
    share = await create(client)
    unknown = await client.post("/api/share/nope/sync", json={"secret": "s", "data": []})
    assert (unknown.status_code, unknown.json()["error"]) == (404, "Share not found")
    wrong = await client.post(
        f"/api/share/{share['id']}/sync", json={"secret": "wrong", "data": [message("m")]}
    )
    assert (wrong.status_code, wrong.json()["error"]) == (403, "Invalid secret")
    wrong_delete = await client.request(
        "DELETE", f"/api/share/{share['id']}", json={"secret": "wrong"}
    )
    assert wrong_delete.status_code == 403
    assert (await client.get(f"/api/share/{share['id']}")).json()["messages"] == []
    assert (await client.get("/api/share/nope/data")).status_code == 404


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"secret": "s", "data": [NaN]}', "NaN is not a JSON number"),
        (b'["secret"]', "must be a JSON object"),
        (b'{"data": []}', "'secret' as a string"),
        (b'{"secret": 5, "data": []}', "'secret' as a string"),
        (b'{"secret": "S", "data": {}}', "'data' as an array"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
async def test_malformed_sync_is_400(client: httpx.AsyncClient, body: bytes, expected: str) -> None:
    share = await create(client)
    answer = await client.post(
        f"/api/share/{share['id']}/sync",
        content=body.replace(b'"S"', json.dumps(share["secret"]).encode()),
    )
    assert answer.status_code == 400
    assert expected in answer.json()["error"]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        # A sync body's depth is not checked as a whole: each item's is, by what names it.
        ('{"type": ' + nested(1000) + ', "data": []}', "item 0: type an array is not one of"),
        ('{"type": "model", "data": ' + nested(600) + "}", "item 0 (model): data is nested deep"),
        ('{"type": "model", "data": ' + nested(5000) + "}", "request body is nested too deep"),
    ],
)
async def test_items_nested_too_deep_are_400_naming_them(
    client: httpx.AsyncClient, item: str, expected: str
) -> None:
    share = await create(client)
    body = f'{{"secret": {json.dumps(share["secret"])}, "data": [{item}]}}'
    answer = await client.post(f"/api/share/{share['id']}/sync", content=body)
    assert (answer.status_code, expected in answer.json()["error"]) == (400, True), answer.text
    assert (await client.get(f"/api/share/{share['id']}/data")).json() == []


async def test_a_deep_value_the_receiver_does_not_keep_is_not_refused(
    client: httpx.AsyncClient,
) -> None:
    share = await create(client)
    secret, item = json.dumps(share["secret"]), json.dumps(message("msg_1"))
    body = f'{{"secret": {secret}, "data": [{item}], "note": {nested(1000)}}}'
    answer = await client.post(f"/api/share/{share['id']}/sync", content=body)
    assert answer.status_code == 200, answer.text
    assert (await client.get(f"/api/share/{share['id']}/data")).json() == [message("msg_1")]


async def test_batch_with_one_bad_item_changes_nothing(client: httpx.AsyncClient) -> None:
    share = await create(client)
    url = f"/api/share/{share['id']}/sync"
    await client.post(url, json={"secret": share["secret"], "data": [message("msg_1", v=1)]})
    bad = await client.post(
        url,
        json={
            "secret": share["secret"],
            "data": [message("msg_1", v=2), message("msg_2"), {"type": "part", "data": {}}],
        },
    )
    assert bad.status_code == 400
    assert "item 2 (part)" in bad.json()["error"]
    doc = (await client.get(f"/api/share/{share['id']}")).json()
    assert doc["messages"] == [message("msg_1", v=1)["data"]]


async def test_create_needs_a_session_id(client: httpx.AsyncClient) -> None:
    for body in ({}, {"sessionID": 7}, {"sessionID": ""}):
        answer = await client.post("/api/share", json=body)
        assert answer.status_code == 400, body
        assert "sessionID" in answer.json()["error"]


async def test_merge_rules_over_http(client: httpx.AsyncClient) -> None:
    share = await create(client)
    url = f"/api/share/{share['id']}/sync"
    diff = {"file": "a", "patch": "@@", "additions": 1, "deletions": 0, "status": "added"}
    for title in ("one", "two"):
        await client.post(
            url,
            json={
                "secret": share["secret"],
                "data": [
                    {"type": "session", "data": {"id": SESSION_ID, "title": title}},
                    {"type": "session_diff", "data": [diff]},
                ],
            },
        )
    doc = (await client.get(f"/api/share/{share['id']}")).json()
    assert doc["session"]["title"] == "two"
    assert doc["diffs"] == [diff]  # replaced, as opencode's server does, not appended


async def test_json_types_preserved_on_the_wire(client: httpx.AsyncClient) -> None:
    share = await create(client)
    item = (
        '{"type": "message", "data": {"id": "m", "int": 1, "float": 1.0, '
        '"big": 123456789012345678901234567890, "nested": [[], {}, null, true], '
        '"text": "\\u00e9\\ud83d\\ude00"}}'
    )
    raw = f'{{"secret": {json.dumps(share["secret"])}, "data": [{item}]}}'
    assert (await client.post(f"/api/share/{share['id']}/sync", content=raw)).status_code == 200
    text = (await client.get(f"/api/share/{share['id']}")).text
    stored = json.loads(text)["messages"][0]
    assert '"int":1,' in text and '"float":1.0' in text
    assert stored["big"] == 123456789012345678901234567890
    assert stored["nested"] == [[], {}, None, True]
    assert stored["text"] == "é😀"


async def test_idempotency_key_applies_a_batch_once(client: httpx.AsyncClient) -> None:
    share = await create(client)
    url = f"/api/share/{share['id']}/sync"
    headers = {"idempotency-key": "batch-1"}
    body = {"secret": share["secret"], "data": [message("m")]}
    first = await client.post(url, json=body, headers=headers)
    second = await client.post(url, json=body, headers=headers)
    assert first.json()["syncCount"] == second.json()["syncCount"] == 1


async def test_body_limit_is_413(tmp_path: Path) -> None:
    async with (
        running_receiver(tmp_path, max_body=2000) as r,
        httpx.AsyncClient(base_url=r.url) as client,
    ):
        share = await create(client)
        url = f"/api/share/{share['id']}/sync"
        big = {"secret": share["secret"], "data": [message("m", text="x" * 5000)]}
        assert (await client.post(url, json=big)).status_code == 413

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length
            yield json.dumps(big).encode()

        refused = await client.post(url, content=chunked())
        assert refused.status_code == 413
        assert "2000 bytes" in refused.json()["error"]
        small = {"secret": share["secret"], "data": [message("m", text="x")]}
        assert (await client.post(url, json=small)).status_code == 200
        assert [m["text"] for m in (await r.store.read_share(share["id"]))["messages"]] == ["x"]


async def test_key_is_required_to_create(tmp_path: Path) -> None:
    async with (
        running_receiver(tmp_path, key="k-123") as r,
        httpx.AsyncClient(base_url=r.url) as client,
    ):
        missing = await client.post("/api/share", json={"sessionID": SESSION_ID})
        assert missing.status_code == 401
        assert "missing x-opencode-share-key" in missing.json()["error"]
        wrong = await client.post(
            "/api/share", json={"sessionID": SESSION_ID}, headers={"x-opencode-share-key": "k"}
        )
        assert wrong.status_code == 401
        assert "wrong x-opencode-share-key" in wrong.json()["error"]
        assert "k-123" not in wrong.text
        assert (await client.get("/api/share")).status_code == 401
        assert r.create_count == 0
        await create(client, **{"x-opencode-share-key": "k-123"})
        assert r.create_count == 1


async def test_faults_status_slow_stopped(tmp_path: Path) -> None:
    async with running_receiver(tmp_path) as r:
        async with httpx.AsyncClient(base_url=r.url) as client:
            await r.faults.status(503, retry_after=2)
            answer = await client.post("/api/share", json={"sessionID": SESSION_ID})
            assert (answer.status_code, answer.headers["retry-after"]) == (503, "2")
            await r.faults.status(429)
            assert (await client.get("/api/share")).status_code == 429
            assert r.create_count == 0
            await r.faults.slow(30)
            with pytest.raises(httpx.ReadTimeout):
                await client.get("/api/share", timeout=0.2)
            await r.faults.ok()
            share = await create(client)
            assert r.create_count == 1
        port = r.port
        await r.faults.stop()
        async with httpx.AsyncClient(base_url=r.url) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get("/api/share")
        await r.faults.ok()
        assert r.port == port
        async with httpx.AsyncClient(base_url=r.url) as client:
            listing = (await client.get("/api/share")).json()["shares"]
            assert [row["id"] for row in listing] == [share["id"]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve_config(tmp_path: Path, port: int, **flags: object) -> Config:
    flags = {"archive": str(tmp_path / "archive.db"), "serve_port": port, **flags}
    return load_config(flags, {"HOME": str(tmp_path)})


async def test_serve_runs_on_the_configured_address(tmp_path: Path, store_url: str) -> None:
    port = free_port()
    archive = str(tmp_path / "unused.db")
    config = serve_config(tmp_path, port, archive=archive, store=store_url, store_pool_size=2)
    task = asyncio.create_task(serve(config))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(200):
                try:
                    answer = await client.post("/api/share", json={"sessionID": SESSION_ID})
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.02)
            assert answer.json()["url"] == f"http://127.0.0.1:{port}/share/{SESSION_ID[-8:]}"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    if "://" not in store_url:
        assert (tmp_path / "archive.db").stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "unused.db").exists()


async def test_serve_names_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = serve_config(tmp_path, taken.getsockname()[1])
        with pytest.raises(UserError, match=r"cannot listen on 127\.0\.0\.1"):
            await serve(config)
