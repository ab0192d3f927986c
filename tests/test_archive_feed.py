"""The archive's change feed (what live pages read) and its session list (the front page), on
both stores (the `store` fixture, tests/support/stores.py): numbering, waiting across
processes, keyset pages, summaries, upgrades."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import psycopg
import pytest

from syncd.archive import ArchiveStore, ShareNotFound
from syncd.archive import postgres as postgres_store
from syncd.archive.base import SessionCursor, SessionSummary, session_list_query
from syncd.archive.sqlite import MIGRATIONS, SqliteArchive
from syncd.migrate import migrate
from syncd.model import Share
from tests.support.stores import opened_store


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteArchive]:
    opened = await SqliteArchive.open(tmp_path / "archive.db")
    yield opened
    await opened.close()


def session(session_id: str, **fields: Any) -> dict[str, Any]:
    return {"type": "session", "data": {"id": session_id, **fields}}


def message(id: str, **fields: Any) -> dict[str, Any]:
    return {"type": "message", "data": {"id": id, **fields}}


def part(id: str, message_id: str, text: str) -> dict[str, Any]:
    return {"type": "part", "data": {"id": id, "messageID": message_id, "text": text}}


async def test_every_write_is_numbered_and_a_rewrite_moves_to_its_new_number(
    store: ArchiveStore,
) -> None:
    share = await store.create_share("ses_feed0001", "http://x")
    await store.sync(share.id, share.secret, [message("m1"), part("p1", "m1", "a")])
    await store.sync(share.id, share.secret, [part("p1", "m1", "ab"), part("p2", "m1", "c")])
    everything = await store.changes(share.id, 0)
    assert [(seq, item["data"]["id"]) for seq, item in everything] == [
        (1, "m1"),
        (3, "p1"),
        (4, "p2"),
    ]
    assert everything[1][1]["data"]["text"] == "ab"  # the newest state, once
    # A reader that saw up to 1 gets the rest; one that saw 3 gets only what came after.
    assert [seq for seq, _ in await store.changes(share.id, 1)] == [3, 4]
    assert [seq for seq, _ in await store.changes(share.id, 3)] == [4]
    assert await store.changes(share.id, 4) == []
    assert [seq for seq, _ in await store.changes(share.id, 0, limit=2)] == [1, 3]
    # A batch applied again (a lost acknowledgement) is no change.
    await store.sync(share.id, share.secret, [part("p2", "m1", "d")], dedup_key="k")
    await store.sync(share.id, share.secret, [part("p2", "m1", "d")], dedup_key="k")
    assert [seq for seq, _ in await store.changes(share.id, 4)] == [5]


async def test_changes_of_a_missing_or_deleted_share(store: ArchiveStore) -> None:
    with pytest.raises(ShareNotFound):
        await store.changes("nope", 0)
    share = await store.create_share("ses_feed0002", "http://x")
    await store.delete_share(share.id, share.secret)
    with pytest.raises(ShareNotFound):
        await store.changes(share.id, 0)


async def test_waiting_ends_on_a_write_a_deletion_or_the_timeout(store: ArchiveStore) -> None:
    share = await store.create_share("ses_feed0003", "http://x")
    assert await store.wait_for_change(share.id, 0, timeout=0.2) is False
    waiting = asyncio.create_task(store.wait_for_change(share.id, 0, timeout=60))
    await asyncio.sleep(0)
    assert not waiting.done()
    await store.sync(share.id, share.secret, [message("m1")])
    assert await asyncio.wait_for(waiting, 30) is True
    assert await store.wait_for_change(share.id, 0, timeout=60) is True  # already there
    waiting = asyncio.create_task(store.wait_for_change(share.id, 1, timeout=60))
    await store.delete_share(share.id, share.secret)
    with pytest.raises(ShareNotFound):
        await asyncio.wait_for(waiting, 30)
    with pytest.raises(ShareNotFound):
        await store.wait_for_change("nope", 0, timeout=60)


WRITER = """
import asyncio, sys
from syncd.archive import open_archive

async def main():
    store = await open_archive(sys.argv[1], pool_size=1)
    item = {"type": "message", "data": {"id": "from-another-process"}}
    await store.sync(sys.argv[2], sys.argv[3], [item])
    await store.close()

asyncio.run(main())
"""


async def test_a_write_by_another_process_wakes_a_reader(
    store: ArchiveStore, store_url: str
) -> None:
    share = await store.create_share("ses_feed0004", "http://x")
    waiting = asyncio.create_task(store.wait_for_change(share.id, 0, timeout=60))
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, store_url, share.id, share.secret
    )
    assert await asyncio.wait_for(writer.wait(), 60) == 0
    assert await asyncio.wait_for(waiting, 30) is True
    [(seq, item)] = await store.changes(share.id, 0)
    assert (seq, item["data"]["id"]) == (1, "from-another-process")


async def shares_with_sessions(store: ArchiveStore, updated: list[int]) -> list[Share]:
    shares = []
    for n, stamp in enumerate(updated):
        share = await store.create_share(f"ses_list{n:06d}", "http://x")
        title = f"Session {n}" + (" 100%_done" if n == 3 else "")
        items = [
            session(
                f"ses_list{n:06d}", title=title, directory=f"/p/{n % 2}", time={"updated": stamp}
            )
        ]
        await store.sync(share.id, share.secret, items)
        shares.append(share)
    return shares


async def test_the_list_pages_through_every_session_once_newest_first(
    store: ArchiveStore,
) -> None:
    stamps = [1000, 3000, 2000, 3000, 3000, 5000, 4000, 1000, 6000, 2000, 3000]  # with ties
    await shares_with_sessions(store, stamps)
    newest_first = await store.list_sessions(limit=100)
    assert [s.updated for s in newest_first] == sorted(stamps, reverse=True)
    order = [s.share_id for s in newest_first]
    pages: list[list[SessionSummary]] = []
    cursor = None
    while page := await store.list_sessions(before=cursor, limit=3):
        pages.append(page)
        cursor = page[-1].cursor
    assert [s.share_id for page in pages for s in page] == order
    assert [len(page) for page in pages] == [3, 3, 3, 2]
    # And back to the newest, from the oldest page, each page the sessions just newer.
    back = [pages[-1]]
    while page := await store.list_sessions(after=back[0][0].cursor, limit=3):
        back.insert(0, page)
    assert [s.share_id for page in back for s in page] == order
    assert [len(page) for page in back] == [3, 3, 3, 2]


async def test_the_filter_matches_title_directory_or_id_literally(store: ArchiveStore) -> None:
    shares = await shares_with_sessions(store, [1, 2, 3, 4, 5])

    async def found(query: str) -> list[str]:
        return sorted(s.share_id for s in await store.list_sessions(query))

    assert await found("100%_DONE") == [shares[3].id]  # % and _ are not wildcards, case ignored
    assert await found("100%x") == []
    assert await found("/p/1") == sorted([shares[1].id, shares[3].id])
    assert await found("list000004") == [shares[4].id]
    [page] = [await store.list_sessions("/p/0", limit=1)]
    assert [s.share_id for s in page] == [shares[4].id]
    older = await store.list_sessions("/p/0", before=page[0].cursor, limit=10)
    assert [s.share_id for s in older] == [shares[2].id, shares[0].id]


async def test_the_summary_follows_the_session_and_its_messages(store: ArchiveStore) -> None:
    share = await store.create_share("ses_summary01", "http://x")
    created = await store.session_summary(share.id)
    assert (created.title, created.messages, created.tokens) == ("", 0, 0)
    assert created.updated > 0  # listed by when it was shared until its session arrives
    tokens = {"input": 10, "output": 5, "reasoning": 2, "cache": {"read": 100, "write": 1}}
    await store.sync(
        share.id,
        share.secret,
        [
            session(
                "ses_summary01",
                title="T",
                directory="/d",
                time={"updated": 77},
                cost=0.25,
                tokens=tokens,
            ),
            message("m1"),
            message("m2"),
            part("p1", "m1", "x"),
        ],
    )
    await store.sync(share.id, share.secret, [message("m2", role="assistant"), message("m3")])
    assert await store.session_summary(share.id) == SessionSummary(
        share_id=share.id,
        session_id="ses_summary01",
        url=f"http://x/share/{share.id}",
        title="T",
        directory="/d",
        updated=77,
        messages=3,
        cost=0.25,
        tokens=118,
    )
    # Wrong types count as absent rather than breaking the list.
    await store.sync(
        share.id,
        share.secret,
        [session("ses_summary01", title=5, time="now", cost="x", tokens=[1])],
    )
    odd = await store.session_summary(share.id)
    assert (odd.title, odd.updated, odd.cost, odd.tokens) == ("", created.updated, 0.0, 0)
    # Two versions of the session in one batch: the later is stored, and summarised.
    await store.sync(
        share.id,
        share.secret,
        [session("ses_summary01", title="older"), session("ses_summary01", title="newer")],
    )
    assert (await store.read_share(share.id))["session"]["title"] == "newer"
    assert (await store.session_summary(share.id)).title == "newer"
    with pytest.raises(ShareNotFound):
        await store.session_summary("nope")


async def test_a_page_of_the_sqlite_list_is_an_index_range_not_a_scan(
    sqlite_store: SqliteArchive,
) -> None:
    """Keyset pages read along (session_updated, id): no sort of the whole table, no OFFSET."""
    await shares_with_sessions(sqlite_store, [1, 2, 3])
    statements: list[str] = []
    await sqlite_store._conn.set_trace_callback(statements.append)
    await sqlite_store.list_sessions("x", before=SessionCursor(2, "zzz"), limit=2)
    await sqlite_store.list_sessions(after=SessionCursor(2, "aaa"), limit=2)
    await sqlite_store._conn.set_trace_callback(None)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 2
    for statement in selects:
        assert "OFFSET" not in statement.upper()
        async with sqlite_store._conn.execute(f"EXPLAIN QUERY PLAN {statement}") as cursor:
            plan = " / ".join(row[-1] for row in await cursor.fetchall())
        assert "share_session_list_idx" in plan, plan
        assert "TEMP B-TREE" not in plan, plan


async def test_a_page_of_the_postgres_list_is_an_index_range_not_a_scan(
    postgres_url: str,
) -> None:
    """The statements the PostgreSQL store runs for keyset pages can be answered by reading
    along (session_updated, id) without sorting: with sequential scans and sorts priced out
    (a tiny table would otherwise be scanned), the plan still has no Sort node."""
    async with opened_store(postgres_url) as store:
        await shares_with_sessions(store, [1, 2, 3])
    pages = [
        session_list_query("x", SessionCursor(2, "zzz"), None, 2, mark="%s", like="ILIKE"),
        session_list_query("", None, SessionCursor(2, "aaa"), 2, mark="%s", like="ILIKE"),
        session_list_query("", None, None, 2, mark="%s", like="ILIKE"),
    ]
    with psycopg.connect(postgres_url) as conn:
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_sort = off")
        for sql, params, _ in pages:
            assert "OFFSET" not in sql.upper()
            plan = "\n".join(row[0] for row in conn.execute(f"EXPLAIN {sql}", params))
            assert "share_session_list_idx" in plan, plan
            assert "Sort" not in plan, plan


async def test_an_archive_from_before_the_feed_and_the_list_is_brought_up(tmp_path: Path) -> None:
    """Items stored before the change feed (seq 0) are numbered, shares get their summary."""
    old_migrations = tmp_path / "old-migrations"
    for folder in sorted(MIGRATIONS.iterdir())[:2]:
        if folder.is_dir() and folder.name[0].isdigit():
            shutil.copytree(folder, old_migrations / folder.name)
    path = tmp_path / "archive.db"
    async with aiosqlite.connect(path, isolation_level=None) as db:
        await migrate(db, old_migrations)
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO share (id, session_id, secret, url, time_created, time_updated) "
            "VALUES ('old1', 'ses_old1', 's', 'archive:/share/old1', 10, 20)"
        )
        for key, kind, data in [
            ("session", "session", '{"id":"ses_old1","title":"Old","time":{"updated":15}}'),
            ("message/m1", "message", '{"id":"m1"}'),
            ("part/m1/p1", "part", '{"id":"p1","messageID":"m1"}'),
        ]:
            db.execute(
                "INSERT INTO share_item (share_id, item_key, kind, data, time_updated) "
                "VALUES ('old1', ?, ?, ?, 20)",
                (key, kind, data),
            )
    store = await SqliteArchive.open(path)
    try:
        assert [(seq, item["type"]) for seq, item in await store.changes("old1", 0)] == [
            (1, "session"),
            (2, "message"),
            (3, "part"),
        ]
        summary = await store.session_summary("old1")
        assert (summary.title, summary.updated, summary.messages) == ("Old", 15, 1)
        await store.sync("old1", "s", [part("p2", "m1", "new")])
        assert [seq for seq, _ in await store.changes("old1", 3)] == [4]
    finally:
        await store.close()


async def test_a_postgres_archive_from_before_the_list_is_brought_up(postgres_url: str) -> None:
    """Shares stored before the PostgreSQL store kept summaries get theirs when it opens."""
    first = sorted(p for p in postgres_store.MIGRATIONS.iterdir() if p.is_dir())[0]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE migration (id text PRIMARY KEY, time_completed bigint NOT NULL)")
        conn.execute((first / "migration.sql").read_text())
        conn.execute("INSERT INTO migration VALUES (%s, 0)", (first.name,))
        conn.execute(
            "INSERT INTO share (id, session_id, secret, url, time_created, time_updated, seq) "
            "VALUES ('old1', 'ses_old1', 's', 'http://x/share/old1', 10, 20, 3)"
        )
        for seq, (key, kind, data) in enumerate(
            [
                ("session", "session", '{"id":"ses_old1","title":"Old","time":{"updated":15}}'),
                ("message/m1", "message", '{"id":"m1"}'),
                ("part/m1/p1", "part", '{"id":"p1","messageID":"m1"}'),
            ],
            start=1,
        ):
            conn.execute(
                "INSERT INTO share_item (share_id, item_key, kind, data, time_updated, seq) "
                "VALUES ('old1', %s, %s, %s, 20, %s)",
                (key, kind, data, seq),
            )
        conn.execute(
            "INSERT INTO share (id, session_id, secret, url, time_created, time_updated) "
            "VALUES ('old2', 'ses_old2', 's', 'http://x/share/old2', 30, 30)"
        )
    async with opened_store(postgres_url) as store:
        summary = await store.session_summary("old1")
        assert (summary.title, summary.updated, summary.messages) == ("Old", 15, 1)
        assert (await store.session_summary("old2")).updated == 30  # when it was shared
        assert [s.share_id for s in await store.list_sessions()] == ["old2", "old1"]
        await store.sync("old1", "s", [part("p2", "m1", "new")])
        assert [seq for seq, _ in await store.changes("old1", 3)] == [4]
