"""The one interface every transport implements (REST, capnweb, A2A, the local archive).

A transport knows how to put SyncData items on the wire; it knows nothing of retries,
coalescing or durable state. It reports the outcome of one call by returning (the receiver
acknowledged) or by raising one of the errors below, which the delivery loop turns into a
retry, a re-created share or a dead letter.
"""

from __future__ import annotations

import functools
import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

SyncItem = dict[str, Any]
"""One SyncData item: {"type": "session"|"message"|"part"|"session_diff"|"model", "data": ...}."""


@dataclass(frozen=True)
class Share:
    """Credentials of one share on the receiver; the secret is never logged (repr hides it)."""

    id: str
    secret: str = field(repr=False)
    url: str


@dataclass(frozen=True)
class Batch:
    """Coalesced items of one session, sent in one call."""

    session_id: str
    items: list[SyncItem]

    @functools.cached_property
    def key(self) -> str:
        """Deterministic id: the same batch re-sent after a crash carries the same key."""
        canonical = json.dumps(
            [self.session_id, self.items], sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Created:
    """Outcome of `Transport.create`: the new share, and whether the batch travelled with it."""

    share: Share
    synced: bool


class DeliveryError(Exception):
    """A call did not end in an acknowledgement."""


class RetryableError(DeliveryError):
    """Worth trying again: transport errors, timeouts, 5xx, 429, a dropped socket."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RejectedError(DeliveryError):
    """The receiver refused the batch for good (4xx, a thrown error): the batch is dead-lettered
    with this message."""


class ShareNotFoundError(RejectedError):
    """The receiver lost the share: the delivery loop re-creates it once and re-sends the
    whole session."""


class Transport(ABC):
    """Puts SyncData on the wire. One instance per daemon; calls may run concurrently."""

    name: ClassVar[str]
    # Whether a `session_share` row written by opencode for the same origin can be reused.
    reuses_opencode_shares: ClassVar[bool] = True

    @abstractmethod
    async def create(self, session_id: str, batch: Batch | None) -> Created:
        """Create the share of `session_id`. A transport that can carry the first batch in the
        same round trip does so and answers `synced=True`; the others ignore `batch`."""

    @abstractmethod
    async def sync(self, share: Share, batch: Batch) -> None:
        """Deliver `batch` to an existing share; returns only when the receiver acknowledged."""

    @abstractmethod
    async def delete(self, share: Share) -> None:
        """Remove the share on the receiver."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most transports hold nothing
        """Release connections."""
