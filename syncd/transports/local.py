"""The embedded archive: delivery into a local ArchiveStore when no receiver url is configured."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from typing import ClassVar, TypeVar

import aiosqlite

from ..archive import ArchiveStore, BadSyncData, InvalidSecret, ShareNotFound, StoreUnavailable
from ..model import Batch, Created, Share
from .base import (
    RejectedError,
    RetryableError,
    SecretRefusedError,
    ShareNotFoundError,
    Transport,
)

# Before the archive had pages, its share urls read `archive:/share/ID`; an older state
# database still holds such urls.
LEGACY_BASE_URL = "archive:"

T = TypeVar("T")


async def _outcome(call: Awaitable[T]) -> T:
    """The store's answer in the transport's terms."""
    try:
        return await call
    except ShareNotFound as exc:
        raise ShareNotFoundError(str(exc)) from exc
    except InvalidSecret as exc:
        raise SecretRefusedError(str(exc)) from exc
    except BadSyncData as exc:
        raise RejectedError(str(exc)) from exc
    except (StoreUnavailable, aiosqlite.Error) as exc:  # a busy or full disk passes
        raise RetryableError(f"archive write failed: {exc}") from exc


class LocalTransport(Transport):
    name: ClassVar[str] = "local"
    # opencode's own shares live on a remote server, never in this archive.
    reuses_opencode_shares: ClassVar[bool] = False

    def __init__(self, store: ArchiveStore, base_url: str) -> None:
        """`base_url`: where `syncd serve` shows this archive, so share urls are pages."""
        self.store = store
        self.base_url = base_url

    async def create(self, session_id: str, batch: Batch | None) -> Created:
        if batch is not None:
            # The share and its first batch in one transaction (one write, one commit).
            with contextlib.suppress(RejectedError):
                share = await _outcome(
                    self.store.create_share_with(
                        session_id, self.base_url, batch.items, batch.key, batch.texts
                    )
                )
                return Created(share=share, synced=True)
            # Refused, nothing was made: the share alone, as a receiver's pipelined create
            # leaves it; sync() sends the batch again, and its refusal splits it there.
        share = await _outcome(self.store.create_share(session_id, base_url=self.base_url))
        return Created(share=share, synced=False)

    async def sync(self, share: Share, batch: Batch) -> None:
        await _outcome(
            self.store.sync(
                share.id, share.secret, batch.items, dedup_key=batch.key, texts=batch.texts
            )
        )

    async def delete(self, share: Share) -> None:
        await _outcome(self.store.delete_share(share.id, share.secret))


def page_url(url: str, base_url: str) -> str:
    """A share url as a browser opens it: an embedded archive's legacy `archive:/share/ID`
    becomes the page under `base_url` (`syncd serve`); any other url stays as it is."""
    if url.startswith(f"{LEGACY_BASE_URL}/share/"):
        return base_url + url.removeprefix(LEGACY_BASE_URL)
    return url
