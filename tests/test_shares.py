"""Share lifecycle against a real receiver over REST: opencode's own share on the same server
is continued, not duplicated; one on another server is not ours; a share the receiver lost is
re-created with the whole session, each time it is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.commands.sync import sync_once
from syncd.state.store import StateStore
from syncd.urls import same_server
from tests.support.archive_check import make_config
from tests.support.fake_opencode import FakeOpencode
from tests.support.receiver import running_receiver


async def test_opencode_share_on_the_same_server_is_continued(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    ours, theirs = writer.session(), writer.session()
    async with running_receiver(tmp_path) as receiver:
        # opencode shared `ours` on this receiver itself (and `theirs` somewhere else).
        made = await receiver.store.create_share(ours, receiver.url)
        writer.share(ours, made.id, made.secret, made.url)
        writer.share(theirs, "abc", "other-secret", "http://127.0.0.1:9/share/abc")
        mid = writer.message(ours, {"role": "user", "time": {"created": 1}})
        config = make_config(tmp_path, writer.path, url=receiver.url, transport="http")
        assert config.sessions == "shared"  # the default for a remote receiver
        creates_before = receiver.create_count
        assert await sync_once(config) == 0

        # No second share for `ours`: its data went into opencode's share.
        assert receiver.create_count - creates_before == 1  # only `theirs` got one of ours
        shared = await receiver.store.read_share(made.id)
        assert [m["id"] for m in shared["messages"]] == [mid]
        sessions = [s["session_id"] for s in await receiver.store.list_shares()]
        assert sorted(sessions) == sorted([ours, theirs])
    writer.close()


async def test_a_lost_share_is_recreated_once_with_the_whole_session(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user", "time": {"created": 1}})
    part = writer.part(sid, mid, {"type": "text", "text": "first"})
    async with running_receiver(tmp_path) as receiver:
        config = make_config(
            tmp_path, writer.path, url=receiver.url, transport="http", sessions="all"
        )
        target = f"share:{config.origin}"
        assert await sync_once(config) == 0
        state = await StateStore.open(config.state)
        first, _ = await state.share(sid, target)  # type: ignore[misc]
        await state.close()

        await receiver.store.delete_share(first.id, first.secret)  # the server lost it
        writer.part(sid, mid, {"type": "text", "text": "second"}, part_id=part)
        assert await sync_once(config) == 0
        state = await StateStore.open(config.state)
        second, recreated = await state.share(sid, target)  # type: ignore[misc]
        await state.close()
        # Created anew (the receiver may hand out the same id, as opencode's derives it), and
        # delivered to: the next loss is a new one.
        assert not recreated and receiver.create_count == 2
        again = await receiver.store.read_share(second.id)
        # The whole session, not only the part that changed.
        assert again["session"]["id"] == sid
        assert [m["id"] for m in again["messages"]] == [mid]
        assert [p["text"] for p in again["parts"]] == ["second"]

        await receiver.store.delete_share(second.id, second.secret)  # lost a second time
        writer.part(sid, mid, {"type": "text", "text": "third"}, part_id=part)
        assert await sync_once(config) == 0
        assert receiver.create_count == 3
        state = await StateStore.open(config.state)
        third, _ = await state.share(sid, target)  # type: ignore[misc]
        assert await state.dead_letters() == []
        await state.close()
        assert [p["text"] for p in (await receiver.store.read_share(third.id))["parts"]] == [
            "third"
        ]
    writer.close()


async def test_an_unparseable_opencode_share_url_is_another_server(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """opencode stores the url its share server answered; one that does not parse
    (`https://[oops/...`) once stopped the session's delivery on every run, for ever."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    writer.share(sid, "abc", "other-secret", "https://[oops/share/abc")
    mid = writer.message(sid, {"role": "user", "time": {"created": 1}})
    async with running_receiver(tmp_path) as receiver:
        config = make_config(tmp_path, writer.path, url=receiver.url, transport="http")
        assert await sync_once(config) == 0
        (listed,) = await receiver.store.list_shares()
        assert listed["session_id"] == sid
        shared = await receiver.store.read_share(listed["id"])
        assert [m["id"] for m in shared["messages"]] == [mid]
    writer.close()


@pytest.mark.parametrize("port", ["99999", "65536", "0", "-1", "port"])
def test_an_opencode_share_url_whose_port_is_not_a_port_is_another_server(port: str) -> None:
    """opencode's share on `https://share.example.test:99999` was taken for one on
    share.example.test's 443 (an unreadable port counted as the default one), so syncd would
    have continued it there, with its secret."""
    assert same_server("https://share.example.test:443/share/abc", "https://share.example.test")
    opencode_url = f"https://share.example.test:{port}/share/abc"
    assert not same_server(opencode_url, "https://share.example.test")
    assert not same_server("https://share.example.test", opencode_url)
