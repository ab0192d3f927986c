"""The PostgreSQL store as several replicas use it: one database, many processes' stores at
once. (The rules every store keeps are tested on both stores in test_store.py.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql

from syncd.archive import StoreUnavailable, open_archive
from syncd.archive.postgres import MIGRATIONS, PostgresArchive
from syncd.errors import UserError
from syncd.model import Batch
from syncd.redact import scrub
from syncd.transports.base import RetryableError
from tests.support.postgres import PostgresCluster
from tests.support.receiver import CLIENTS, running_receiver

SESSION_ID = "ses_replicas000000000000000001"
T = TypeVar("T")


def message(id: str, **fields: Any) -> dict[str, Any]:
    return {"type": "message", "data": {"id": id, "sessionID": SESSION_ID, **fields}}


@contextlib.asynccontextmanager
async def replicas(url: str, count: int, **options: Any) -> AsyncIterator[list[PostgresArchive]]:
    """`count` stores on one database, as `count` replicas of `syncd serve` hold them."""
    stores = await asyncio.gather(
        *(PostgresArchive.open(url, pool_size=4, **options) for _ in range(count))
    )
    try:
        yield list(stores)
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def once_available(call: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
    """`call` retried while the store is unavailable, as a sender retries after a 503."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await call()
            except (StoreUnavailable, RetryableError):
                await asyncio.sleep(0.2)


def database_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


@contextlib.contextmanager
def database_down(postgres: PostgresCluster, url: str) -> Any:
    """The store's database refuses connections and drops those it had, until the block ends."""
    name = sql.Identifier(database_of(url))
    with postgres.admin() as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(name))
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (database_of(url),),
        )
    try:
        yield
    finally:
        with postgres.admin() as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(name))


async def test_replicas_starting_together_apply_each_migration_once(postgres_url: str) -> None:
    async with replicas(postgres_url, 6):
        pass
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT id FROM migration ORDER BY id").fetchall()
    assert [row[0] for row in rows] == sorted(p.name for p in MIGRATIONS.iterdir() if p.is_dir())


async def test_a_batch_retried_through_two_replicas_at_once_applies_once(
    postgres_url: str,
) -> None:
    async with replicas(postgres_url, 2) as (a, b):
        share = await a.create_share(SESSION_ID, "http://x")
        # Ten batches, each sent through both replicas at the same moment (a lost
        # acknowledgement retried elsewhere), interleaved with each other.
        sends = [
            store.sync(share.id, share.secret, [message(f"msg_{n}", n=n)], dedup_key=f"batch-{n}")
            for n in range(10)
            for store in (a, b)
        ]
        counts = await asyncio.gather(*sends)
        assert sorted(set(counts)) == list(range(1, 11))
        assert await b.sync(share.id, share.secret, []) == 11
        document = await b.read_share(share.id)
        assert [m["n"] for m in document["messages"]] == list(range(10))
        # The change feed numbers every item once, gap-free and in order, whoever wrote it.
        feed = await a.changes(share.id, 0)
        assert [seq for seq, _ in feed] == list(range(1, 11))


async def test_a_change_through_one_replica_wakes_a_page_waiting_on_another(
    postgres_url: str,
) -> None:
    async with replicas(postgres_url, 2) as (writer, reader):
        reader.change_poll_interval = 120  # only the notification can wake it in time
        share = await writer.create_share(SESSION_ID, "http://x")
        waiting = asyncio.create_task(reader.wait_for_change(share.id, 0, timeout=60))
        await asyncio.sleep(0)  # (the waiter registers before reading; any order is correct)
        await writer.sync(share.id, share.secret, [message("msg_1")])
        assert await asyncio.wait_for(waiting, 30) is True
        assert await reader.wait_for_change(share.id, 1, timeout=0.2) is False


async def test_waiters_are_woken_again_after_the_listening_connection_is_lost(
    postgres: PostgresCluster, postgres_url: str
) -> None:
    async with replicas(postgres_url, 2) as (writer, reader):
        reader.change_poll_interval = 120
        share = await writer.create_share(SESSION_ID, "http://x")
        with postgres.admin() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND query LIKE 'LISTEN%%'",
                (database_of(postgres_url),),
            )
        waiting = asyncio.create_task(reader.wait_for_change(share.id, 0, timeout=60))
        await writer.sync(share.id, share.secret, [message("msg_1")])
        # Woken by the notification once listening again, or by the wake-up after reconnect.
        assert await asyncio.wait_for(waiting, 30) is True
        seq_before = await reader.seq(share.id)
        waiting = asyncio.create_task(reader.wait_for_change(share.id, seq_before, timeout=60))
        await writer.sync(share.id, share.secret, [message("msg_2")])
        assert await asyncio.wait_for(waiting, 30) is True


async def test_an_unreachable_database_is_store_unavailable_then_recovers(
    postgres: PostgresCluster, postgres_url: str
) -> None:
    async with replicas(postgres_url, 1, pool_timeout=1.0) as (store,):
        share = await store.create_share(SESSION_ID, "http://x")
        with database_down(postgres, postgres_url):
            with pytest.raises(StoreUnavailable) as raised:
                await store.sync(share.id, share.secret, [message("msg_1")], dedup_key="k1")
            assert raised.value.retry_after > 0
            with pytest.raises(StoreUnavailable):
                await store.read_share(share.id)
        synced = await once_available(
            lambda: store.sync(share.id, share.secret, [message("msg_1")], dedup_key="k1")
        )
        assert synced == 1
        assert (await store.read_share(share.id))["messages"] == [message("msg_1")["data"]]


@pytest.mark.parametrize("transport_name", sorted(CLIENTS))
async def test_senders_are_told_to_retry_while_the_database_is_down(
    tmp_path: Path, postgres: PostgresCluster, postgres_url: str, transport_name: str
) -> None:
    async with running_receiver(tmp_path, store=postgres_url) as receiver:
        receiver.store._pool.timeout = 1.0  # type: ignore[attr-defined]  # answer 503 sooner
        transport = CLIENTS[transport_name](receiver.url)
        try:
            created = await transport.create(SESSION_ID, None)
            batch = Batch(SESSION_ID, [message("msg_1", role="user")])
            with database_down(postgres, postgres_url):
                with pytest.raises(RetryableError) as raised:
                    await transport.sync(created.share, batch)
                if transport_name in ("http", "capnweb-batch"):
                    assert raised.value.retry_after is not None and raised.value.retry_after > 0
            await once_available(lambda: transport.sync(created.share, batch))
        finally:
            await transport.aclose()
        (share_id,) = [s["id"] for s in await receiver.store.list_shares()]
        document = await receiver.store.read_share(share_id)
        assert document["messages"] == [message("msg_1", role="user")["data"]]
    if transport_name in ("http", "capnweb-batch"):
        assert any(status == 503 for _, _, status in receiver.answers)


async def test_the_password_never_shows(postgres: PostgresCluster, postgres_url: str) -> None:
    password = postgres.password
    assert password not in scrub(postgres_url)
    assert scrub(postgres_url).startswith("postgresql://syncd:***@127.0.0.1:")
    assert scrub(f"postgresql://syncd@h/db?password={password}&sslmode=require") == (
        "postgresql://syncd@h/db?password=***&sslmode=require"
    )
    wrong = postgres_url.replace(password, password[::-1])
    with pytest.raises(UserError) as raised:
        await open_archive(wrong)
    message_text = str(raised.value)
    assert "password authentication failed" in message_text
    assert password[::-1] not in message_text and password not in message_text
    async with replicas(postgres_url, 1, pool_timeout=1.0) as (store,):
        assert password not in repr(store)
        share = await store.create_share(SESSION_ID, "http://x")
        with database_down(postgres, postgres_url), pytest.raises(StoreUnavailable) as down:
            await store.read_items(share.id)
        assert password not in str(down.value)


async def test_a_store_url_that_names_no_database_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"cannot open the store postgresql://syncd:\*\*\*@"):
        await open_archive("postgresql://syncd:pw@127.0.0.1:1/none")
    with pytest.raises(UserError, match="unknown scheme 'mysql'"):
        await open_archive("mysql://u:pw@h/db")
    with pytest.raises(UserError, match="sqlite:///absolute"):
        await open_archive("sqlite://relative.db")
    store = await open_archive(f"sqlite:///{tmp_path}/a.db")
    await store.close()
    assert (tmp_path / "a.db").is_file()
