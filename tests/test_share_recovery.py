"""How syncd recovers shares against opencode's real share server semantics
(tests/node/opencode_share_server.mjs), found by a hostile review: a storage hiccup on sync is
waited out, a richer server's 500 never makes a second share, a session unshared in opencode is
not published again, a share lost twice is re-created twice, an unknown thrown error is retried
before it is refused, and opencode's own https share urls match a plain-http server."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.commands.dead_letters import retry
from syncd.commands.sync import sync_once
from syncd.config import Config
from syncd.errors import UserError
from tests.support.archive_check import expected_state, make_config
from tests.support.fake_opencode import FakeOpencode
from tests.support.node_share_rpc import OpencodeShareServer, opencode_share_server
from tests.support.share_server_check import TRANSPORTS, config_for, held, pending_and_dead


@pytest.fixture
def server() -> Iterator[OpencodeShareServer]:
    with opencode_share_server() as running:
        yield running


async def sync_reason(config: Config) -> str | None:
    """None when sync exits 0, else the dead-letter reasons (for the assertion message)."""
    try:
        assert await sync_once(config, give_up_after=60) == 0
        return None
    except UserError:
        _, dead = await pending_and_dead(config)
        return " | ".join(sorted({d["reason"] for d in dead}))


async def test_sync_only_storage_failure_does_not_drop_the_share(
    tmp_path: Path, fixtures_dir: Path, server: OpencodeShareServer
) -> None:
    """Three syncs in a row fail (the server's bucket write fails for a few seconds) while
    GET /api/share/syncd-probe/data answers: syncd must wait it out, not decide that
    the share belongs to someone else."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user", "time": {"created": 1}})
    config = config_for(tmp_path, writer.path, server, "http")
    assert await sync_once(config, give_up_after=60) == 0

    writer.part(sid, mid, {"type": "text", "text": "during a storage hiccup"})
    server.fail_next_syncs(4)
    assert await sync_reason(config) is None
    assert await pending_and_dead(config) == ({}, [])
    assert server.state()["creates"] == 1
    assert held(server) == expected_state(writer.path)
    writer.close()


async def test_after_a_sync_only_failure_a_retry_delivers(
    tmp_path: Path, fixtures_dir: Path, server: OpencodeShareServer
) -> None:
    """Whatever the hiccup led to, `dead-letters retry --all` once the server is healthy
    delivers: the share and its secret are syncd's own and stay in its state."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user", "time": {"created": 1}})
    config = config_for(tmp_path, writer.path, server, "http")
    assert await sync_once(config, give_up_after=60) == 0

    writer.part(sid, mid, {"type": "text", "text": "during a storage hiccup"})
    server.fail_next_syncs(4)
    await sync_reason(config)  # whatever happens during the hiccup
    server.fail_next_syncs(0)  # healthy again
    await retry(config, [], every=True)
    assert await sync_reason(config) is None
    assert await pending_and_dead(config) == ({}, [])
    assert held(server) == expected_state(writer.path)
    writer.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_share_lost_twice_is_recreated_twice(
    tmp_path: Path, fixtures_dir: Path, server: OpencodeShareServer, transport: str
) -> None:
    """The `recreated` flag is never cleared after a successful delivery, so a second loss
    (days later) is dead-lettered as "lost again"; over REST the probe's create made a new
    share whose secret is then thrown away, and the session is stuck for good."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user", "time": {"created": 1}})
    config = config_for(tmp_path, writer.path, server, transport)
    assert await sync_once(config, give_up_after=60) == 0

    for n in range(2):
        server.remove(sid[-8:])
        writer.part(sid, mid, {"type": "text", "text": f"after loss {n}"})
        assert await sync_reason(config) is None, f"loss {n}"
        writer.part(sid, mid, {"type": "text", "text": f"normal traffic {n}"})
        assert await sync_reason(config) is None, f"after loss {n}"
    assert await pending_and_dead(config) == ({}, [])
    assert held(server) == expected_state(writer.path)
    writer.close()


@pytest.mark.parametrize("transport", ["capnweb-batch", "capnweb-ws"])
async def test_capnweb_a_passing_thrown_failure_is_retried(
    tmp_path: Path, fixtures_dir: Path, server: OpencodeShareServer, transport: str
) -> None:
    """A method wrapping opencode's share functions throws for every failure, passing ones
    (a storage error) included; `thrown()` turns any message but the three known ones into a
    RejectedError, so one hiccup dead-letters the batch and the session waits for a person."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user", "time": {"created": 1}})
    config = config_for(tmp_path, writer.path, server, transport)
    assert await sync_once(config, give_up_after=60) == 0

    writer.part(sid, mid, {"type": "text", "text": "during a storage hiccup"})
    server.fail_next_syncs(1)
    assert await sync_reason(config) is None
    assert await pending_and_dead(config) == ({}, [])
    writer.close()


async def test_opencodes_own_share_on_a_plain_http_server_is_continued(
    tmp_path: Path, fixtures_dir: Path, server: OpencodeShareServer
) -> None:
    """opencode shared the session itself on the same server (enterprise.url = syncd's url,
    plain http, no proxy): the server built the share url with https (x-forwarded-proto
    absent), so origin_of(url) never equals syncd's http origin, and syncd dead-letters the
    session as "shared on the server by someone else" although it holds the credentials."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user", "time": {"created": 1}})
    writer.part(sid, mid, {"type": "text", "text": "hello"})
    made = await asyncio.to_thread(_create_as_opencode_does, server, sid)
    assert made["url"].startswith("https://")  # what the real server answers
    writer.share(sid, made["id"], made["secret"], made["url"])

    config = config_for(tmp_path, writer.path, server, "http")
    assert await sync_reason(config) is None
    assert await pending_and_dead(config) == ({}, [])
    assert server.state()["creates"] == 1
    assert held(server) == expected_state(writer.path)
    writer.close()


def _create_as_opencode_does(
    server: OpencodeShareServer, session_id: str, headers: dict[str, str] | None = None
) -> dict:
    """POST /api/share as opencode's own share makes it: no proxy headers unless given."""
    request = urllib.request.Request(
        f"{server.url}/api/share",
        data=json.dumps({"sessionID": session_id}).encode(),
        method="POST",
        headers={"content-type": "application/json", **(headers or {})},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


async def test_syncd_serve_a_locked_archive_makes_no_second_share(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """`syncd serve` answers an archive error (sqlite 'database is locked' after its busy
    timeout: a backup, a long admin write) with Starlette's bare 500 while GET answers. The
    probe treats three of them as a share problem and creates the share again: serve gives
    a new random id, so the session gets a second share (or, when create fails too, syncd
    drops its share and dead-letters the session as "shared by someone else")."""
    import sqlite3
    from typing import Any

    from tests.support.receiver import running_receiver

    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user", "time": {"created": 1}})
    async with running_receiver(tmp_path) as receiver:
        config = make_config(
            tmp_path, writer.path, url=receiver.url, transport="http", sessions="all"
        )
        assert await sync_once(config, give_up_after=60) == 0

        store_sync = receiver.store.sync
        locked = 4

        async def locked_archive(
            share_id: str, secret: str, data: list[Any], dedup_key: str | None = None
        ) -> int:
            nonlocal locked
            if locked > 0:
                locked -= 1
                raise sqlite3.OperationalError("database is locked")
            return await store_sync(share_id, secret, data, dedup_key)

        receiver.store.sync = locked_archive  # type: ignore[method-assign]
        writer.part(sid, mid, {"type": "text", "text": "while the archive is locked"})
        assert await sync_reason(config) is None
        assert await pending_and_dead(config) == ({}, [])
        assert [s["session_id"] for s in await receiver.store.list_shares()] == [sid]
        assert receiver.create_count == 1
    writer.close()


@pytest.mark.parametrize("transport", ["http", "capnweb-batch"])
async def test_a_session_unshared_in_opencode_is_not_shared_again(
    tmp_path: Path, fixtures_dir: Path, server: OpencodeShareServer, transport: str
) -> None:
    """sessions = "shared": syncd continues opencode's own share. The user unshares in
    opencode (its share is deleted on the server, its session_share row goes) while items
    captured before are still pending (here: held back by an outage). The lost share is then
    re-created (capnweb: at once; REST: by the probe's create) and the whole session is
    published again under a new public share the user never asked for."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user", "time": {"created": 1}})
    made = await asyncio.to_thread(
        _create_as_opencode_does, server, sid, {"x-forwarded-proto": "http"}
    )
    writer.share(sid, made["id"], made["secret"], made["url"])
    config = make_config(
        tmp_path, writer.path, url=server.url, transport=transport, sessions="shared"
    )
    assert await sync_once(config, give_up_after=60) == 0
    assert server.state()["creates"] == 1

    writer.part(sid, mid, {"type": "text", "text": "typed just before unsharing"})
    server.fail(True)
    with pytest.raises(UserError):
        await sync_once(config, give_up_after=3)  # captured, held back by the outage
    server.fail(False)
    # /unshare in opencode: the share is deleted on the server and its row goes.
    server.remove(made["id"])
    writer.conn.execute("DELETE FROM session_share WHERE session_id = ?", (sid,))
    writer.conn.execute("UPDATE session SET share_url = NULL WHERE id = ?", (sid,))

    await sync_reason(config)
    assert server.state()["shares"] == {}, "the unshared session was published again"
    assert server.state()["creates"] == 1
    writer.close()
