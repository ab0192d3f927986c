"""Both archive stores for the receiver's tests: every test taking `store` (or `store_url`)
runs once on SQLite and once on a real PostgreSQL (a fresh database each time).

    async def test_x(store: ArchiveStore) -> None: ...        # test_x[sqlite], test_x[postgres]
    async def test_y(store_url: str) -> None:                  # open more stores on one database
        async with opened_store(store_url) as a, opened_store(store_url) as b: ...
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from syncd.archive import ArchiveStore, open_archive

STORES = ("sqlite", "postgres")
# Small pools in tests: several stores (replicas) share one test cluster.
TEST_POOL_SIZE = 4


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What `syncd serve --store` is given: an SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "archive.db")
    return str(request.getfixturevalue("postgres_url"))


@contextlib.asynccontextmanager
async def opened_store(store_url: str) -> AsyncIterator[ArchiveStore]:
    store = await open_archive(store_url, pool_size=TEST_POOL_SIZE)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[ArchiveStore]:
    async with opened_store(store_url) as opened:
        yield opened
