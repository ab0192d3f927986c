"""No one gets in: `syncd serve` attacked over loopback as someone on the same network would,
keyed and unkeyed; syncd's transports led to another origin or echoed their own secrets;
syncd's files laid out by another user; slow clients, and visitors of live share pages,
holding the receiver's connections.

Every refused attack is also shown to be refused for the right reason: the same request with
the share's own credentials goes through (so a malformed attack cannot pass for a refused one).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import socket
import sqlite3
import stat
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from websockets.asyncio.client import connect as websocket_connect

from syncd.config import load_config
from syncd.log import configure_logging
from syncd.model import Batch, Share
from syncd.receiver.app import STOP_GRACE_SECONDS
from syncd.state.store import StateStore
from syncd.transports import make_transport
from syncd.transports.a2a import A2aTransport
from syncd.transports.base import RetryableError, SecretRefusedError, Transport
from syncd.transports.capnweb import CapnwebBatchTransport, CapnwebWsTransport
from syncd.transports.http import HttpTransport
from syncd.wire.capnweb.protocol import PATH as CAPNWEB_PATH
from syncd.wire.keys import KEY_HEADER
from tests.support import FIXTURES
from tests.support.env import free_port, isolated_env
from tests.support.fake_opencode import one_session_db
from tests.support.receiver import running_receiver
from tests.support.scripted_server import Answer, Server
from tests.support.served import Served, SlowClient, serving
from tests.support.syncd_process import run_syncd

KEY = "k-attack-suite-key-3f9c2e71"
TOKEN = "tok-3b8f0c2d9e7a6b5c4d3e2f1a"
REST_VICTIM = "ses_restvictim0000000000000001"
A2A_VICTIM = "ses_a2avictim00000000000000001"
A2A_VERSION = {"A2A-Version": "1.0"}


# -- attacks on a running `syncd serve` ------------------------------------------------------


def snapshot(archive: Path) -> list[tuple[Any, ...]]:
    """Every stored row of every share, in a fixed order."""
    with contextlib.closing(sqlite3.connect(f"{archive.as_uri()}?mode=ro", uri=True)) as conn:
        return [
            (table, *row)
            for table in ("share", "share_item", "share_sync")
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2")
        ]


# -- what the attacker sends -------------------------------------------------------------------


def session_item(session_id: str, title: str) -> dict[str, Any]:
    return {"type": "session", "data": {"id": session_id, "title": title}}


def a2a_message(
    context_id: str, metadata: dict[str, Any], items: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    parts = [{"data": item} for item in items or [session_item(context_id, "pwned")]]
    return {
        "messageId": uuid.uuid4().hex,
        "contextId": context_id,
        "role": "ROLE_USER",
        "parts": parts,
        "metadata": metadata,
    }


async def a2a_jsonrpc(
    client: httpx.AsyncClient, served: Served, method: str, params: dict[str, Any], key: bool
) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": uuid.uuid4().hex, "method": method, "params": params}
    headers = {**A2A_VERSION, **(served.headers() if key else {})}
    return await client.post(f"{served.url}/a2a/jsonrpc", json=body, headers=headers)


def a2a_outcome(answer: httpx.Response) -> str:
    """ "applied" (a reply message), "refused" (a failed task, an error, a 401), or the
    unexpected answer itself."""
    if answer.status_code == 401:
        return "refused"
    if answer.status_code != 200:
        return f"HTTP {answer.status_code}: {answer.text}"
    body = answer.json()
    result = body.get("result", {})
    if "message" in result:
        return "applied"
    if result.get("task", {}).get("status", {}).get("state") == "TASK_STATE_FAILED":
        return "refused"
    return f"unexpected: {body}"


async def victims(served: Served) -> tuple[Share, Share]:
    """A session shared over REST and one shared over A2A, by syncd's own transports."""
    rest = HttpTransport(served.url, key=served.key, timeout=10.0, verify=True)
    a2a = A2aTransport(served.url, key=served.key)
    try:
        rest_share = (await rest.create(REST_VICTIM, None)).share
        await rest.sync(rest_share, Batch(REST_VICTIM, [session_item(REST_VICTIM, "mine")]))
        a2a_share = (await a2a.create(A2A_VICTIM, None)).share
        await a2a.sync(a2a_share, Batch(A2A_VICTIM, [session_item(A2A_VICTIM, "mine")]))
    finally:
        await rest.aclose()
        await a2a.aclose()
    return rest_share, a2a_share


@pytest.mark.parametrize("key", [None, KEY], ids=["unkeyed", "keyed"])
async def test_a2a_and_rest_writes_need_the_shares_own_secret(tmp_path: Path, key: str) -> None:
    async with serving(tmp_path, key=key) as served, httpx.AsyncClient() as client:
        rest_share, a2a_share = await victims(served)
        # The attacker's own share: a secret that is valid, but for another share.
        created = await client.post(
            f"{served.url}/api/share", json={"sessionID": "ses_attacker"}, headers=served.headers()
        )
        own_secret = created.json()["secret"]
        before = snapshot(served.archive)

        attempts: dict[str, tuple[dict[str, Any], bool]] = {}
        for victim, share in ((REST_VICTIM, rest_share), (A2A_VICTIM, a2a_share)):
            for name, metadata in {
                "overwrite by contextId": {},
                "overwrite by share id": {"syncd.shareId": share.id},
                "overwrite, guessed secret": {"syncd.shareId": share.id, "syncd.secret": "guess"},
                "overwrite, empty secret": {"syncd.shareId": share.id, "syncd.secret": ""},
                "overwrite, own secret": {"syncd.shareId": share.id, "syncd.secret": own_secret},
                "delete by contextId": {"syncd.operation": "delete"},
                "delete, guessed secret": {
                    "syncd.operation": "delete", "syncd.shareId": share.id, "syncd.secret": "x"
                },
                "delete, own secret": {
                    "syncd.operation": "delete", "syncd.shareId": share.id,
                    "syncd.secret": own_secret,
                },
            }.items():  # fmt: skip
                attempts[f"{victim}: {name}"] = (a2a_message(victim, metadata), True)
            # Holding the secret is not enough without the key, when there is one.
            right = {"syncd.shareId": share.id, "syncd.secret": share.secret}
            if key is not None:
                attempts[f"{victim}: keyless, right secret"] = (a2a_message(victim, right), False)
        for what, (message, with_key) in attempts.items():
            answer = await a2a_jsonrpc(
                client, served, "SendMessage", {"message": message}, with_key
            )
            assert a2a_outcome(answer) == "refused", what
        # The HTTP+JSON binding is the same agent.
        rest_binding = await client.post(
            f"{served.url}/a2a/rest/message:send",
            json={"message": a2a_message(A2A_VICTIM, {})},
            headers={**A2A_VERSION, **served.headers()},
        )
        assert rest_binding.json()["task"]["status"]["state"] == "TASK_STATE_FAILED"

        for share in (rest_share, a2a_share):
            path = f"{served.url}/api/share/{share.id}"
            data = [session_item(REST_VICTIM, "pwned")]
            for body, status in (
                ({"secret": "guess", "data": data}, 403),
                ({"secret": own_secret, "data": data}, 403),
                ({"data": data}, 400),
            ):
                answer = await client.post(f"{path}/sync", json=body, headers=served.headers())
                assert answer.status_code == status, answer.text
            for body, status in (({"secret": "guess"}, 403), ({}, 400)):
                answer = await client.request("DELETE", path, json=body, headers=served.headers())
                assert answer.status_code == status, answer.text
            capnweb = CapnwebBatchTransport(served.url, key=key, timeout=10.0, verify=True)
            try:
                with pytest.raises(SecretRefusedError):
                    await capnweb.sync(Share(share.id, own_secret, ""), Batch("s", data))
                with pytest.raises(SecretRefusedError):
                    await capnweb.delete(Share(share.id, "guess", ""))
            finally:
                await capnweb.aclose()

        assert snapshot(served.archive) == before

        # The same call with the share's own credentials is applied: the refusals above were
        # about the credentials, not about a malformed request.
        right = {"syncd.shareId": a2a_share.id, "syncd.secret": a2a_share.secret}
        answer = await a2a_jsonrpc(
            client, served, "SendMessage", {"message": a2a_message(A2A_VICTIM, right)}, True
        )
        assert a2a_outcome(answer) == "applied", answer.text
        assert "pwned" in snapshot_text(served.archive)


def snapshot_text(archive: Path) -> str:
    return json.dumps(snapshot(archive))


@pytest.mark.parametrize("key", [None, KEY], ids=["unkeyed", "keyed"])
async def test_no_one_captures_another_senders_session(tmp_path: Path, key: str) -> None:
    """A share created over REST for a session id, before or after its sender's own, never
    receives that sender's A2A batches; the sender's share never receives the attacker's."""
    async with serving(tmp_path, key=key) as served, httpx.AsyncClient() as client:

        async def attacker_create() -> str:
            answer = await client.post(
                f"{served.url}/api/share", json={"sessionID": A2A_VICTIM}, headers=served.headers()
            )
            assert answer.status_code == 200
            return str(answer.json()["id"])

        pre_empted = await attacker_create()  # before the victim's first batch
        victim = A2aTransport(served.url, key=key)
        try:
            share = (await victim.create(A2A_VICTIM, None)).share
            await victim.sync(share, Batch(A2A_VICTIM, [session_item(A2A_VICTIM, "first")]))
            after = await attacker_create()  # once the victim's share exists
            await victim.sync(share, Batch(A2A_VICTIM, [session_item(A2A_VICTIM, "second")]))
        finally:
            await victim.aclose()
        assert share.id not in (pre_empted, after)
        for attacker_share in (pre_empted, after):
            data = await client.get(f"{served.url}/api/share/{attacker_share}/data")
            assert data.json() == []
        mine = (await client.get(f"{served.url}/api/share/{share.id}/data")).json()
        assert [item["data"]["title"] for item in mine] == ["second"]


async def test_listing_and_tasks_need_the_key(tmp_path: Path) -> None:
    async with serving(tmp_path, key=KEY) as served, httpx.AsyncClient() as client:
        _, a2a_share = await victims(served)
        # A failed task to be listed: the victim's own batch, refused for a bad item.
        right = {"syncd.shareId": a2a_share.id, "syncd.secret": a2a_share.secret}
        bad = a2a_message(A2A_VICTIM, right, [{"type": "part", "data": {"id": "prt_1"}}])
        failed = await a2a_jsonrpc(client, served, "SendMessage", {"message": bad}, True)
        task_id = failed.json()["result"]["task"]["id"]
        for headers in ({}, {KEY_HEADER: "wrong-key"}):
            for path in ("/", "/api/share", "/a2a/rest/tasks", f"/a2a/rest/tasks/{task_id}"):
                answer = await client.get(f"{served.url}{path}", headers={**A2A_VERSION, **headers})
                # The pages' front sends a browser to log in; the APIs refuse.
                assert answer.status_code == (303 if path == "/" else 401), path
                assert A2A_VICTIM not in answer.text and REST_VICTIM not in answer.text
            for method, params in (("ListTasks", {}), ("GetTask", {"id": task_id})):
                body = {"jsonrpc": "2.0", "id": "1", "method": method, "params": params}
                answer = await client.post(
                    f"{served.url}/a2a/jsonrpc", json=body, headers={**A2A_VERSION, **headers}
                )
                assert answer.status_code == 401 and A2A_VICTIM not in answer.text, method
        # With the key, the same requests are answered.
        listed = await client.get(f"{served.url}/api/share", headers=served.headers())
        assert {s["session_id"] for s in listed.json()["shares"]} == {REST_VICTIM, A2A_VICTIM}
        # ...and show the victim's failed task, but never the secret its message carried.
        for path in ("/a2a/rest/tasks", f"/a2a/rest/tasks/{task_id}"):
            answer = await client.get(
                f"{served.url}{path}?historyLength=100&includeArtifacts=true",
                headers={**A2A_VERSION, **served.headers()},
            )
            assert answer.status_code == 200 and A2A_VICTIM in answer.text, path
            assert a2a_share.secret not in answer.text


async def test_serve_refuses_a_public_address_without_a_key(tmp_path: Path) -> None:
    code, text = await run_syncd("serve", "--host", "0.0.0.0", "--port", str(free_port()),
                                 "--archive", str(tmp_path / "archive.db"),
                                 env=isolated_env(tmp_path))  # fmt: skip
    assert code == 2, text
    assert text.count("\n") == 1 and "without a key" in text and "serve_public" in text
    assert not (tmp_path / "archive.db").exists()


# -- the key goes only where it belongs ---------------------------------------------------------


class Capture:
    """A server on another loopback address (another origin) counting who reaches it."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(TimeoutError, OSError):
                self.received.append(await asyncio.wait_for(reader.read(65536), 5))
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.2", 0)
        return f"127.0.0.2:{self.server.sockets[0].getsockname()[1]}"


@contextlib.asynccontextmanager
async def redirecting_to(elsewhere: str) -> AsyncIterator[str]:
    """A server answering every request with 307 to the same path on `elsewhere` (a ws://
    address for a WebSocket upgrade, as a hostile receiver would)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(TimeoutError, OSError, ValueError):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = head.split(b" ", 2)[1].decode()
            scheme = "ws" if b"upgrade: websocket" in head.lower() else "http"
            writer.write(
                b"HTTP/1.1 307 Temporary Redirect\r\n"
                + f"Location: {scheme}://{elsewhere}{path}\r\n".encode()
                + b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def transport_for(name: str, url: str) -> Transport:
    if name == "http":
        return HttpTransport(url, key=KEY, timeout=5.0, verify=True)
    if name == "capnweb-batch":
        return CapnwebBatchTransport(url, key=KEY, timeout=5.0, verify=True)
    if name == "capnweb-ws":
        return CapnwebWsTransport(url, key=KEY, timeout=5.0, verify=True)
    return A2aTransport(url, key=KEY, timeout=5.0)


@pytest.mark.parametrize("name", ["http", "capnweb-batch", "capnweb-ws", "a2a"])
async def test_no_transport_follows_a_redirect_to_another_origin(name: str) -> None:
    capture = Capture()
    elsewhere = await capture.start()
    secret = "share-secret-9d8c7b6a"
    try:
        async with redirecting_to(elsewhere) as url:
            transport = transport_for(name, url)
            try:
                batch = Batch("ses_1", [session_item("ses_1", "t")])
                for call in (
                    transport.create("ses_1", batch),
                    transport.sync(Share("shr_1", secret, "u"), batch),
                ):
                    with pytest.raises(RetryableError, match="redirect") as refused:
                        await call
                    assert KEY not in str(refused.value) and secret not in str(refused.value)
            finally:
                await transport.aclose()
    finally:
        assert capture.server is not None
        capture.server.close()
    assert capture.received == []


@pytest.mark.parametrize(
    ("url", "warned"),
    [("http://192.0.2.7:4788", True), ("https://192.0.2.7", False), ("http://127.0.0.1:9", False)],
)
async def test_plain_http_beyond_loopback_is_warned_at_start_and_in_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, warned: bool
) -> None:
    config = load_config(
        {"url": url, "transport": "http", "state": str(tmp_path / "state.db")},
        {"HOME": str(tmp_path), "OPENCODE_SHARE_RPC_KEY": KEY},
    )
    configure_logging(dataclasses.replace(config, log_format="json"))
    try:
        await make_transport(config).aclose()  # what `run`, `sync` and a reload do first
    finally:
        structlog.reset_defaults()
    await (await StateStore.open(config.state)).close()
    db = one_session_db(tmp_path / "opencode.db", FIXTURES)  # status is unhealthy without one
    flags = ["--url", url, "--transport", "http", "--state", str(config.state), "--db", str(db)]
    code, status = await run_syncd("status", *flags, env=isolated_env(tmp_path))
    started = capsys.readouterr().err
    for output in (started, status):
        assert ("plain http:// to another machine" in output) is warned, output
        assert KEY not in output
    assert code == 0, status  # a warning, not a failure


# -- a receiver echoing the key and the secrets -----------------------------------------------


class Echo:
    """ASGI wrapper: lets `passes` POSTs through, then answers POSTs 503 once and 400 after,
    quoting the request (headers, key included, and body, share secret included) and a
    bearer token of its own."""

    def __init__(self, app: ASGIApp, passes: int) -> None:
        self.app, self.passes, self.echoed = app, passes, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or self.passes:
            if scope["type"] == "http" and scope["method"] == "POST":
                self.passes -= 1
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = "; ".join(f"{k.decode()}: {v.decode()}" for k, v in scope["headers"])
        said = f"refused {headers} for {body.decode()} (Authorization: Bearer {TOKEN})"
        status = 503 if self.echoed == 0 else 400
        self.echoed += 1
        answer = JSONResponse({"error": said}, status, headers={"retry-after": "0"})
        await answer(scope, receive, send)


def state_text(state: Path) -> str:
    """Every value of every row of syncd's state, but the share secrets it must hold."""
    with contextlib.closing(sqlite3.connect(f"{state.as_uri()}?mode=ro", uri=True)) as conn:
        tables = [
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        rows = []
        for table in tables:
            cursor = conn.execute(f"SELECT * FROM {table}")
            names = [column[0] for column in cursor.description]
            for row in cursor:
                rows.append({n: v for n, v in zip(names, row, strict=True) if n != "secret"})
    return json.dumps(rows, default=str)


@pytest.mark.parametrize(("transport", "passes"), [("http", 1), ("capnweb-batch", 0), ("a2a", 1)])
async def test_an_echoing_receiver_never_gets_its_echo_shown(
    tmp_path: Path, fixtures_dir: Path, transport: str, passes: int
) -> None:
    db = one_session_db(tmp_path / "opencode.db", fixtures_dir)
    config = tmp_path / "syncd.toml"
    config.write_text(f'key = "{KEY}"\n')
    config.chmod(0o600)
    state = tmp_path / "state" / "state.db"
    async with running_receiver(tmp_path / "receiver", key=KEY) as receiver:
        receiver._app = Echo(receiver._app, passes)
        common = ["--db", str(db), "--state", str(state), "--url", receiver.url,
                  "--transport", transport, "--sessions", "all",
                  "--config", str(config)]  # fmt: skip
        env = isolated_env(tmp_path)
        code, synced = await run_syncd("sync", *common, env=env)
        secrets = [KEY, TOKEN]
        if passes:  # the share was created: its secret went out with the echoed batch
            [share] = await receiver.store.list_shares()
            secrets.append(share_secret(receiver.store.path, share["id"]))
    assert code == 1 and "dead-lettered" in synced, synced
    outputs = {"sync": synced, "state": state_text(state)}
    for command in (["status"], ["status", "--json"], ["dead-letters", "list"],
                    ["dead-letters", "list", "--json"]):  # fmt: skip
        outputs[" ".join(command)] = (await run_syncd(*command, *common, env=env))[1]
    assert "refused" in outputs["status"] and "***" in outputs["status --json"]  # shown, masked
    assert "***" in outputs["state"]  # last_error and the dead letter's reason, masked
    for where, text in outputs.items():
        for secret in secrets:
            assert secret not in text, f"{secret} in {where}"


# What a receiver may send to a terminal: retitle the window (OSC 0, ended by BEL), clear the
# screen (CSI 2J), a CSI in its 8-bit C1 form, a carriage return to write over the line, a
# link to somewhere else (OSC 8), DEL and NUL.
TERMINAL_ATTACK = "\x1b]0;pwned\x07 \x1b[2J \x9b31m \rforged \x1b]8;;http://evil\x1b\\ \x7f\x00"
# Without blanks, as a url has them: a console log line quotes (and escapes) only values with.
URL_ATTACK = "http://x/share/shr_1\x1b]0;pwned\x07\x1b[2J\x9b31m\x7f\x00"
CONTROL_CHARACTER = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


async def test_a_receiver_never_writes_to_the_terminal_through_what_syncd_shows(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """A refusal's reason and an answered share url are shown by `status`, `dead-letters` and
    `open`; in a pipe (`syncd dead-letters list | less -R`) they were printed as received:
    ESC, C1, DEL and NUL reached the terminal (on one too: rich drops only BEL, BS, CR, VT and
    FF, and a table folds whitespace). Every output is shown here through a pipe."""
    db = one_session_db(tmp_path / "opencode.db", fixtures_dir)
    server = Server()
    share = {"id": "shr_1", "secret": "s3cr3t-share-secret", "url": URL_ATTACK}
    server.answer = lambda m, p: (
        Answer(body=share) if p == "/api/share" else Answer(400, f"refused: {TERMINAL_ATTACK}")
    )
    config = tmp_path / "syncd.toml"
    config.write_text('log_format = "console"\n')  # the human form, wherever it goes
    common = ["--db", str(db), "--state", str(tmp_path / "state.db"), "--url", server.url,
              "--transport", "http", "--sessions", "all", "--config", str(config)]  # fmt: skip
    env = isolated_env(tmp_path)
    try:
        code, synced = await run_syncd("sync", *common, env=env)
    finally:
        server.close()
    assert code == 1 and "dead-lettered" in synced, synced
    state = await StateStore.open_readonly(tmp_path / "state.db")
    [letter, *_] = await state.dead_letters()
    await state.close()
    assert "\x1b[2J" in letter["reason"]  # stored as received: the attack is real
    outputs = {"sync": synced}
    commands = [["status"], ["status", "--wide"], ["status", "ses"], ["status", "--json"],
                ["dead-letters", "list"], ["dead-letters", "list", "--json"],
                ["dead-letters", "show", str(letter["id"])],
                ["open", "ses", "--print"]]  # fmt: skip
    for command in commands:
        outputs[" ".join(command)] = (await run_syncd(*command, *common, env=env))[1]
    for where, text in outputs.items():
        assert not CONTROL_CHARACTER.findall(text), f"{where}: {text!r}"
    # Still shown, as escapes: the reason says what the receiver sent.
    for where in ("status --wide", "dead-letters list"):
        assert r"refused: \x1b]0;pwned" in outputs[where], outputs[where]
    assert r"\u009b31m" in outputs[f"dead-letters show {letter['id']}"]
    assert r"shr_1\x1b]0;pwned\x07\x1b[2J" in outputs["open ses --print"]
    assert r"url=http://x/share/shr_1\x1b]0;pwned" in outputs["sync"]


def share_secret(archive: Path, share_id: str) -> str:
    with contextlib.closing(sqlite3.connect(f"{archive.as_uri()}?mode=ro", uri=True)) as conn:
        return str(conn.execute("SELECT secret FROM share WHERE id = ?", (share_id,)).fetchone()[0])


# -- syncd's own files -----------------------------------------------------------------------


async def test_state_and_archive_directories_are_created_private(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    db = one_session_db(tmp_path / "opencode.db", fixtures_dir)
    state = tmp_path / "new" / "state-dir" / "state.db"
    archive = tmp_path / "new" / "archive-dir" / "archive.db"
    old = os.umask(0o022)  # a usual umask: directories are world-readable unless syncd says
    try:
        code, output = await run_syncd("sync", "--db", str(db), "--state", str(state),
                                       "--archive", str(archive),
                                       env=isolated_env(tmp_path))  # fmt: skip
    finally:
        os.umask(old)
    assert code == 0, output
    for directory in (state.parent, archive.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    for path in (state, archive, state.with_name("state.db.lock")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.mark.parametrize("linked", ["state.db.lock", "state.db", "archive.db", "state.db-wal"])
async def test_a_linked_file_is_refused_and_its_target_untouched(
    tmp_path: Path, fixtures_dir: Path, linked: str
) -> None:
    db = one_session_db(tmp_path / "opencode.db", fixtures_dir)
    home = tmp_path / "syncd"
    home.mkdir(mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    (home / linked).symlink_to(victim)
    code, output = await run_syncd("sync", "--db", str(db), "--state", str(home / "state.db"),
                                   "--archive", str(home / "archive.db"),
                                   env=isolated_env(tmp_path))  # fmt: skip
    assert code == 2, output
    assert output.count("\n") == 1 and "Traceback" not in output
    assert f"{home / linked} is a symbolic link" in output
    assert victim.read_text() == "precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770])
async def test_a_directory_others_can_write_is_refused(
    tmp_path: Path, fixtures_dir: Path, mode: int
) -> None:
    db = one_session_db(tmp_path / "opencode.db", fixtures_dir)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    code, output = await run_syncd("sync", "--db", str(db), "--state", str(shared / "state.db"),
                                   env=isolated_env(tmp_path))  # fmt: skip
    assert code == 2, output
    assert output.count("\n") == 1 and "writable by other users" in output
    assert list(shared.iterdir()) == []


# -- slow clients ------------------------------------------------------------------------------

HEAD_TIMEOUT = 3.0
BODY_TIMEOUT = 3.0


async def test_slow_clients_are_dropped_while_others_are_served(tmp_path: Path) -> None:
    settings = {"serve_header_timeout": HEAD_TIMEOUT, "serve_body_timeout": BODY_TIMEOUT}
    async with serving(tmp_path, **settings) as served, httpx.AsyncClient() as client:
        heads = [
            await SlowClient.open(
                served.port, b"GET /api/share HTTP/1.1\r\nHost: x\r\n", b"X: y\r\n"
            )
            for _ in range(20)
        ]
        body = await SlowClient.open(
            served.port,
            b"POST /api/share HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
            b"x",
        )
        answered = await client.get(f"{served.url}/api/share")
        answered_at = time.monotonic()
        assert answered.status_code == 200
        # Served while every slow client was still connected.
        assert all(not slow.reader.at_eof() for slow in [*heads, body])
        waits = await asyncio.gather(*(s.until_closed(HEAD_TIMEOUT + 20) for s in heads))
        body_wait = await body.until_closed(BODY_TIMEOUT + 20)
        assert all(
            answered_at - slow.opened < wait for slow, wait in zip(heads, waits, strict=True)
        )
        assert min(waits) >= HEAD_TIMEOUT - 0.1, waits  # dropped by the deadline, not before
        assert body_wait >= BODY_TIMEOUT - 0.1
        assert "slow client dropped" in served.process.log()


async def test_a_kept_alive_connection_trickling_its_next_head_is_dropped(tmp_path: Path) -> None:
    # uvicorn's keep-alive timeout stops at the first byte of the next request: the head
    # deadline, counted from the answer, is what closes the connection.
    async with serving(tmp_path, serve_header_timeout=HEAD_TIMEOUT) as served:
        request = b"GET /api/share HTTP/1.1\r\nHost: x\r\n"
        slow = await SlowClient.open(served.port, request + b"\r\n" + request, b"X: y\r\n")
        answer = await asyncio.wait_for(slow.reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        answered_after = time.monotonic() - slow.opened
        assert answer.startswith(b"HTTP/1.1 200 ")
        closed_after = await slow.until_closed(HEAD_TIMEOUT + 20)
        assert closed_after - answered_after >= HEAD_TIMEOUT - 0.1, (answered_after, closed_after)
        assert "slow client dropped" in served.process.log()


async def test_a_websocket_outlives_the_read_deadlines(tmp_path: Path) -> None:
    # Once upgraded the connection is no longer HTTP: neither deadline may close it.
    settings = {"serve_header_timeout": HEAD_TIMEOUT, "serve_body_timeout": BODY_TIMEOUT}
    async with serving(tmp_path, **settings) as served:
        url = f"ws://127.0.0.1:{served.port}{CAPNWEB_PATH}"
        async with websocket_connect(url) as socket:
            slow = await SlowClient.open(served.port, b"GET / HTTP/1.1\r\n", b"X: y\r\n")
            await slow.until_closed(max(HEAD_TIMEOUT, BODY_TIMEOUT) + 20)
            await asyncio.wait_for(await socket.ping(), 5)


async def test_connections_beyond_the_limit_get_503_until_slow_ones_are_dropped(
    tmp_path: Path,
) -> None:
    settings = {"serve_header_timeout": HEAD_TIMEOUT, "serve_max_connections": 8}
    async with serving(tmp_path, **settings) as served, httpx.AsyncClient() as client:
        slow = [
            await SlowClient.open(served.port, b"GET / HTTP/1.1\r\n", b"X: y\r\n") for _ in range(8)
        ]
        refused = await client.get(f"{served.url}/api/share")
        assert refused.status_code == 503
        await asyncio.gather(*(s.until_closed(HEAD_TIMEOUT + 20) for s in slow))
        answered = await client.get(f"{served.url}/api/share")
        assert answered.status_code == 200


def unread_answer(port: int, path: str) -> socket.socket:
    """A connection that asks for `path` and reads nothing of the answer but its status line,
    left in place (peeked), with a receive buffer as small as the kernel allows."""
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    reader.settimeout(30)
    reader.connect(("127.0.0.1", port))
    reader.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert reader.recv(12, socket.MSG_PEEK) == b"HTTP/1.1 200"
    return reader


async def big_share(served: Served) -> tuple[Share, str]:
    """A share of 16 MB and the path of its data, which needs no key (nor does its page)."""
    share, _ = await victims(served)
    text = {"messageID": "msg_1", "type": "text", "text": "x" * 2**20}
    parts = [{"type": "part", "data": {"id": f"prt_{n}", **text}} for n in range(16)]
    big = HttpTransport(served.url, key=KEY, timeout=30.0, verify=True)
    try:
        await big.sync(share, Batch(REST_VICTIM, parts))
    finally:
        await big.aclose()  # its connection would count against a limit
    return share, f"/api/share/{share.id}/data"


async def test_a_client_reading_none_of_its_answer_is_dropped(tmp_path: Path) -> None:
    # An answer bigger than the kernel's buffers, asked for by a client that reads none of it,
    # waited in the server for ever, and its connection with it: closing it waits for the
    # answer to be sent.
    settings = {"serve_body_timeout": BODY_TIMEOUT, "serve_max_connections": 4}
    async with (
        serving(tmp_path, key=KEY, **settings) as served,
        httpx.AsyncClient(headers={"connection": "close"}) as client,
        contextlib.AsyncExitStack() as stack,
    ):
        rest_share, path = await big_share(served)
        await client.get(f"{served.url}/api/share/{rest_share.id}")  # after the close is seen
        for _ in range(3):
            stack.callback(unread_answer(served.port, path).close)
        refused = await client.get(f"{served.url}/api/share/{rest_share.id}")
        assert refused.status_code == 503  # every place but the unread answers' is taken
        for _ in range(int((BODY_TIMEOUT + 20) / 0.2)):
            answered = await client.get(f"{served.url}/api/share/{rest_share.id}")
            if answered.status_code != 503:
                break
            await asyncio.sleep(0.2)
        assert answered.status_code == 200
        rest = HttpTransport(served.url, key=KEY, timeout=10.0, verify=True)
        stack.push_async_callback(rest.aclose)
        await rest.sync(rest_share, Batch(REST_VICTIM, [session_item(REST_VICTIM, "after")]))
        assert "answer to be read" in served.process.log()

        # One that reads, however slowly, keeps its connection: the whole answer comes.
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        stack.callback(writer.close)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
        slowly = 0
        for _ in range(int(3 * BODY_TIMEOUT / 0.1)):  # 160 KB/s
            slowly += len(await reader.read(2**14))
            await asyncio.sleep(0.1)
        assert slowly + len(await reader.read()) == length


async def test_a_client_reading_none_of_its_answer_does_not_hold_up_a_stop(
    tmp_path: Path,
) -> None:
    # Stopping, uvicorn waits for every connection to close: one whose unread answer waits to
    # be sent held SIGTERM for ever.
    async with serving(tmp_path, key=KEY) as served:
        _, path = await big_share(served)
        with contextlib.closing(unread_answer(served.port, path)):
            assert await served.process.terminate(STOP_GRACE_SECONDS + 20) == 0


# -- live share pages --------------------------------------------------------------------------

MAX_CONNECTIONS = 8
LIVE_STREAMS = MAX_CONNECTIONS // 4  # the default share of serve_max_connections


async def test_live_streams_leave_room_for_deliveries(tmp_path: Path) -> None:
    # A share page needs no key and its live stream stays open as long as the reader likes: a
    # visitor opens as many as the receiver takes, and syncd's deliveries still get through.
    async with (
        serving(tmp_path, key=KEY, serve_max_connections=MAX_CONNECTIONS) as served,
        contextlib.AsyncExitStack() as visitor,
    ):
        rest_share, a2a_share = await victims(served)
        client = await visitor.enter_async_context(httpx.AsyncClient(timeout=10.0))
        url = f"{served.url}/share/{rest_share.id}/events"
        streams = [
            await visitor.enter_async_context(client.stream("GET", url))
            for _ in range(MAX_CONNECTIONS)
        ]
        rest = HttpTransport(served.url, key=KEY, timeout=10.0, verify=True)
        capnweb = CapnwebBatchTransport(served.url, key=KEY, timeout=10.0, verify=True)
        a2a = A2aTransport(served.url, key=KEY)
        try:
            await rest.sync(rest_share, Batch(REST_VICTIM, [session_item(REST_VICTIM, "rest")]))
            await a2a.sync(a2a_share, Batch(A2A_VICTIM, [session_item(A2A_VICTIM, "a2a")]))
            await capnweb.sync(rest_share, Batch(REST_VICTIM, [session_item(REST_VICTIM, "rpc")]))
        finally:
            for transport in (rest, capnweb, a2a):
                await transport.aclose()
        statuses = [stream.status_code for stream in streams]
        assert statuses == [200] * LIVE_STREAMS + [503] * (MAX_CONNECTIONS - LIVE_STREAMS)
        for refused in streams[LIVE_STREAMS:]:
            assert refused.headers["retry-after"] == "15"
            assert refused.headers["connection"] == "close"  # no place held after the answer

        async def seen(text: str) -> None:
            async for line in streams[0].aiter_lines():
                if text in line:
                    return

        await asyncio.wait_for(seen("rpc"), 10)  # the streams let in are live
        await streams[1].aclose()
        for _ in range(200):  # once the server has seen it gone, its place is free again
            async with client.stream("GET", url) as again:
                if again.status_code == 200:
                    break
            await asyncio.sleep(0.05)
        assert again.status_code == 200


async def test_a_websocket_without_the_key_is_not_held(tmp_path: Path) -> None:
    # A WebSocket escapes uvicorn's connection limit but counts against it once open: one
    # without the key is refused and closed at once.
    async with serving(tmp_path, key=KEY, serve_max_connections=MAX_CONNECTIONS) as served:
        for path, key in ((CAPNWEB_PATH, None), (CAPNWEB_PATH, "wrong"), ("/share/x/events", None)):
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n".encode()
                + (f"{KEY_HEADER}: {key}\r\n".encode() if key else b"")
                + b"\r\n"
            )
            answer = await asyncio.wait_for(reader.read(), 10)  # to the end: closed
            writer.close()
            assert answer.split(b" ")[1] in (b"401", b"403"), (path, answer)
