"""The archive store: one interface (`ArchiveStore`), one module per database.

A store is named by a path or `sqlite:///path` (SQLite: the default and the embedded
archive) or by a `postgresql://user:password@host:port/db` URL (a team's receiver)."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from ..errors import UserError
from ..redact import scrub
from .base import ArchiveStore, BadSyncData, InvalidSecret, ShareNotFound, StoreUnavailable

__all__ = [
    "ArchiveStore",
    "BadSyncData",
    "InvalidSecret",
    "ShareNotFound",
    "StoreUnavailable",
    "open_archive",
]

POSTGRES_SCHEMES = ("postgresql", "postgres")
DEFAULT_POOL_SIZE = 10


async def open_archive(store: str | Path, *, pool_size: int = DEFAULT_POOL_SIZE) -> ArchiveStore:
    """The store named by `store`, created (SQLite) and migrated when new. `pool_size`: the
    most connections one process opens to PostgreSQL."""
    spec = str(store)
    scheme = urllib.parse.urlsplit(spec).scheme if "://" in spec else ""
    if scheme in POSTGRES_SCHEMES:
        try:
            from .postgres import PostgresArchive
        except ImportError:
            raise UserError(
                "a postgresql:// store needs the PostgreSQL driver: pip install 'syncd[postgres]'"
            ) from None
        return await PostgresArchive.open(spec, pool_size=pool_size)
    if scheme == "sqlite":
        path = spec.removeprefix("sqlite://")
        if not path.startswith("/"):
            raise UserError(f"store {spec!r}: write sqlite:///absolute/path/archive.db")
        spec = path
    elif scheme:
        raise UserError(
            f"store {scrub(spec)!r}: unknown scheme {scheme!r}; use a file path, "
            "sqlite:///path or postgresql://user:password@host:port/database"
        )
    from .sqlite import SqliteArchive

    return await SqliteArchive.open(Path(spec).expanduser())
