"""The archive store: one interface (`ArchiveStore`), one module per database."""

from __future__ import annotations

from pathlib import Path

from .base import ArchiveStore, BadSyncData, InvalidSecret, ShareNotFound

__all__ = ["ArchiveStore", "BadSyncData", "InvalidSecret", "ShareNotFound", "open_archive"]


async def open_archive(path: Path) -> ArchiveStore:
    """The store at `path`, created and migrated when new."""
    from .sqlite import SqliteArchive

    return await SqliteArchive.open(path)
