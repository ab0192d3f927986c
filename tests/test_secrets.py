"""Credentials syncd holds (share secrets, the RPC key): files holding them are private, and
they never show in logs, `syncd status` (text or JSON) or error messages, even when a receiver
echoes them back; the key header never follows a redirect to another host."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest
from starlette.types import Receive, Scope, Send

from syncd.model import Batch, Share
from syncd.transports.base import RetryableError
from syncd.transports.capnweb import CapnwebBatchTransport
from tests.support.fake_opencode import one_session_db
from tests.support.receiver import running_receiver
from tests.support.scripted_server import Answer, Server
from tests.support.syncd_process import run_syncd

SHARE_SECRET = "0f1e2d3c-share-secret-4b5a6978"
KEY = "k-right-share-key-5f0c1a"
WRONG_KEY = "k-wrong-share-key-93b2e7"


def private_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "syncd.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


async def test_files_syncd_writes_are_private(tmp_path: Path, fixtures_dir: Path) -> None:
    db = one_session_db(tmp_path / "opencode.db", fixtures_dir)
    home = tmp_path / "syncd"
    old = os.umask(0o022)  # a usual umask: files are world-readable unless syncd says not
    try:
        code, output = await run_syncd("sync", "--db", str(db), "--state", str(home / "state.db"),
                                   "--archive", str(home / "archive.db"))  # fmt: skip
    finally:
        os.umask(old)
    assert code == 0, output
    written = sorted(home.iterdir())
    assert {p.name for p in written} >= {"state.db", "archive.db", "state.db.lock"}
    for path in written:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path.name} is {oct(mode)}"


async def test_a_secret_echoed_by_the_receiver_shows_nowhere(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    db = one_session_db(tmp_path / "opencode.db", fixtures_dir)
    server = Server()
    share = {"id": "shr_1", "secret": SHARE_SECRET, "url": f"{server.url}/share/shr_1"}

    def answer(method: str, path: str) -> Answer:
        if path == "/api/share":
            return Answer(body=share)
        # The worst receiver: it refuses the batch quoting the request, secret included.
        return Answer(400, {"error": f"bad batch from secret {SHARE_SECRET}"})

    server.answer = answer
    state = tmp_path / "state.db"
    common = ["--db", str(db), "--state", str(state), "--url", server.url,
              "--transport", "http", "--sessions", "all"]  # fmt: skip
    try:
        code, sync_output = await run_syncd("sync", *common)
    finally:
        server.close()
    assert code == 1 and "dead-lettered" in sync_output
    assert any(r.body and r.body.get("secret") == SHARE_SECRET for r in server.requests)
    _, status_text = await run_syncd("status", *common)
    _, status_json = await run_syncd("status", "--json", *common)
    assert "bad batch from secret" in status_text  # the reason is shown, masked
    for output in (sync_output, status_text, status_json):
        assert SHARE_SECRET not in output
        assert "***" in output


async def test_the_key_never_shows_when_the_receiver_refuses_it(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    db = one_session_db(tmp_path / "opencode.db", fixtures_dir)
    config = private_config(tmp_path, f'key = "{WRONG_KEY}"\n')
    async with running_receiver(tmp_path, key=KEY) as receiver:
        common = ["--db", str(db), "--state", str(tmp_path / "state.db"), "--url", receiver.url,
                  "--transport", "a2a", "--sessions", "all", "--config", str(config)]  # fmt: skip
        code, sync_output = await run_syncd("sync", *common)
        _, status_json = await run_syncd("status", "--json", *common)
    assert code == 1 and "x-opencode-share-key" in sync_output
    for output in (sync_output, status_json):
        assert WRONG_KEY not in output


async def test_a_key_in_a_readable_config_file_warns(tmp_path: Path, fixtures_dir: Path) -> None:
    db = one_session_db(tmp_path / "opencode.db", fixtures_dir)
    config = private_config(tmp_path, f'key = "{KEY}"\n')
    config.chmod(0o644)
    code, output = await run_syncd("status", "--db", str(db), "--state", str(tmp_path / "none.db"),
                               "--config", str(config))  # fmt: skip
    assert "chmod 600" in output and str(config) in output
    assert KEY not in output
    assert code != 0  # no state yet: status says so, once


async def test_capnweb_key_never_follows_a_redirect(tmp_path: Path) -> None:
    async with (
        running_receiver(tmp_path / "a", key=KEY) as receiver,
        running_receiver(tmp_path / "b") as elsewhere,
    ):
        location = f"{elsewhere.url}/rpc/share".encode()

        async def redirect(scope: Scope, receive: Receive, send: Send) -> None:
            headers = [(b"location", location), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 307, "headers": headers})
            await send({"type": "http.response.body", "body": b""})

        receiver._app = redirect
        transport = CapnwebBatchTransport(receiver.url, key=KEY, timeout=5.0, verify=True)
        try:
            batch = Batch("ses_1", [{"type": "session", "data": {"id": "ses_1"}}])
            with pytest.raises(RetryableError, match="redirect") as refused:
                await transport.sync(Share("shr_1", SHARE_SECRET, "u"), batch)
            assert SHARE_SECRET not in str(refused.value) and KEY not in str(refused.value)
        finally:
            await transport.aclose()
        assert [a[2] for a in receiver.answers] == [307]
        assert elsewhere.answers == []


def test_tls_verification_is_on_unless_a_ca_bundle_is_given(tmp_path: Path) -> None:
    from syncd.config import load_config
    from syncd.transports import make_transport

    config = load_config({"url": "https://share.example", "transport": "http",
                          "state": str(tmp_path / "s.db")}, {"HOME": str(tmp_path)})  # fmt: skip
    assert config.ca_bundle is None
    transport = make_transport(config)
    client = transport._client  # type: ignore[attr-defined]
    ssl_context = client._transport._pool._ssl_context
    assert ssl_context.verify_mode.name == "CERT_REQUIRED" and ssl_context.check_hostname
    asyncio.run(transport.aclose())
