"""syncd against opencode's real share server semantics (tests/node/opencode_share_server.mjs):
sync answers `{}` (capnweb: nothing), every thrown error is a bare 500 over REST, create
derives the share id from the session id and refuses a second create. Over REST and both
capnweb transports: everything is acknowledged, a lost share is re-created, a lost create
answer or a lost state ends in an explained dead letter, a passing outage is waited out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.commands.dead_letters import retry
from syncd.commands.sync import sync_once
from syncd.errors import UserError
from tests.support.archive_check import expected_state
from tests.support.fake_opencode import FakeOpencode
from tests.support.node_share_rpc import OpencodeShareServer, opencode_share_server
from tests.support.share_server_check import TRANSPORTS, config_for, held, pending_and_dead


@pytest.fixture
def server() -> Iterator[OpencodeShareServer]:
    with opencode_share_server() as running:
        yield running


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_whole_database_is_acknowledged(
    tmp_path: Path, sample_db: Path, server: OpencodeShareServer, transport: str
) -> None:
    config = config_for(tmp_path, sample_db, server, transport)
    assert await sync_once(config, give_up_after=60) == 0
    assert await pending_and_dead(config) == ({}, [])
    expected = expected_state(sample_db)
    assert held(server) == expected
    assert server.state()["creates"] == len(expected)  # one share per session, never two


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_share_removed_on_the_server_is_recreated_with_everything(
    tmp_path: Path, fixtures_dir: Path, server: OpencodeShareServer, transport: str
) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user", "time": {"created": 1}})
    writer.part(sid, mid, {"type": "text", "text": "first"})
    config = config_for(tmp_path, writer.path, server, transport)
    assert await sync_once(config, give_up_after=60) == 0

    server.remove(sid[-8:])  # the server lost it (a bucket wiped, a share deleted by hand)
    second = writer.part(sid, mid, {"type": "text", "text": "second"})
    assert await sync_once(config, give_up_after=60) == 0

    assert await pending_and_dead(config) == ({}, [])
    assert held(server) == expected_state(writer.path)  # the first part came back too
    assert second in held(server)[sid]["parts"]
    assert server.state()["creates"] == 2
    writer.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_lost_state_ends_in_an_explained_dead_letter(
    tmp_path: Path, fixtures_dir: Path, server: OpencodeShareServer, transport: str
) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    writer.message(sid, {"role": "user", "time": {"created": 1}})
    config = config_for(tmp_path, writer.path, server, transport)
    assert await sync_once(config, give_up_after=60) == 0
    for path in tmp_path.glob("state.db*"):
        path.unlink()  # syncd's state is lost; the share stays on the server

    started = time.monotonic()
    with pytest.raises(UserError, match="dead-lettered") as refused:
        await sync_once(config, give_up_after=60)
    assert refused.value.exit_code == 1
    assert time.monotonic() - started < 45  # bounded: no endless retry of the create
    pending, dead = await pending_and_dead(config)
    assert pending == {}
    assert dead and all("shared on the server by someone else" in d["reason"] for d in dead)
    assert server.state()["creates"] == 1
    writer.close()


async def test_a_lost_create_answer_is_recovered_with_opencodes_own_credentials(
    tmp_path: Path, fixtures_dir: Path, server: OpencodeShareServer
) -> None:
    """The share exists (opencode made it), syncd never saw its secret, opencode's own
    session_share row has it: syncd continues that share and sends the whole session."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user", "time": {"created": 1}})
    writer.part(sid, mid, {"type": "text", "text": "hello"})
    config = config_for(tmp_path, writer.path, server, "http")
    server.drop_next_create_answer()  # the create is applied, its answer never arrives
    with pytest.raises(UserError):
        await sync_once(config, give_up_after=60)
    assert server.state()["creates"] == 1

    # opencode's own share of the session, on the same server, under the same id.
    server.remove(sid[-8:])
    made = await asyncio.to_thread(_create_directly, server, sid)
    writer.share(sid, made["id"], made["secret"], made["url"])
    await retry(config, [], every=True)
    assert await sync_once(config, give_up_after=60) == 0
    assert await pending_and_dead(config) == ({}, [])
    assert held(server) == expected_state(writer.path)
    writer.close()


async def test_a_passing_outage_is_waited_out_not_taken_for_a_lost_share(
    tmp_path: Path, fixtures_dir: Path, server: OpencodeShareServer
) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user", "time": {"created": 1}})
    config = config_for(tmp_path, writer.path, server, "http")
    assert await sync_once(config, give_up_after=60) == 0

    writer.part(sid, mid, {"type": "text", "text": "during the outage"})
    server.fail(True)  # every request answers a bare 500, reads included
    sync = asyncio.create_task(sync_once(config, give_up_after=90))
    await asyncio.sleep(12)  # long enough for several retries, and the probe, to fail
    assert not sync.done()
    server.fail(False)
    assert await sync == 0
    assert await pending_and_dead(config) == ({}, [])
    assert server.state()["creates"] == 1  # not re-created: the share was never lost
    assert held(server) == expected_state(writer.path)
    writer.close()


def _create_directly(server: OpencodeShareServer, session_id: str) -> dict:
    import json
    import urllib.request

    request = urllib.request.Request(
        f"{server.url}/api/share",
        data=json.dumps({"sessionID": session_id}).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())
