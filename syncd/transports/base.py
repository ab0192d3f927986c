"""The one interface every transport implements (REST, capnweb, A2A, the local archive).

A transport knows how to put SyncData items on the wire; it knows nothing of retries,
coalescing or durable state. It reports the outcome of one call by returning (the receiver
acknowledged) or by raising one of the errors below, which the delivery loop turns into a
retry, a pause, a re-created share, a batch sent in halves or a dead letter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum
from typing import ClassVar

from ..model import Batch, Created, Share


class DeliveryError(Exception):
    """A call did not end in an acknowledgement."""


class RetryableError(DeliveryError):
    """Worth trying again: transport errors, timeouts, 5xx, 429, a dropped socket.
    `ambiguous`: a bare 500, which opencode's server also answers for a lost share, a refused
    secret or an existing share; the delivery loop probes when it keeps coming back."""

    def __init__(
        self, message: str, retry_after: float | None = None, *, ambiguous: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.ambiguous = ambiguous


class KeyRefusedError(RetryableError):
    """The receiver refuses syncd's key (a 401): a condition of the whole receiver, not of a
    batch. Items stay pending and are retried, with backoff, until the key is fixed."""


class OversizeSuspectedError(RetryableError):
    """The receiver dropped the connection while a large body was on its way, as servers that
    refuse a body by its size often do without an answer: the delivery loop sends the batch in
    halves, and an item that keeps meeting it alone is too large for the receiver."""


class ThrownError(RetryableError):
    """A remote method threw an error syncd does not know (capnweb): it may pass (a storage
    hiccup) or not (a batch the server will never take); retried a few times, then refused."""


class RejectedError(DeliveryError):
    """The receiver refused the batch for good (4xx, a thrown error): a batch of several items
    is sent again in halves, so that only the items refused alone are dead-lettered, with this
    message."""


class UnsendableError(RejectedError):
    """The batch cannot travel as it is: a value this transport cannot carry, or a body larger
    than the receiver accepts (413). Sent in halves; an item that cannot travel alone is
    dead-lettered with this message."""


class ShareProblem(DeliveryError):
    """The receiver refuses the share itself, not the batch; the delivery loop recovers the
    share when it can."""


class ShareNotFoundError(ShareProblem):
    """The receiver lost the share: the delivery loop re-creates it once and re-sends the
    whole session."""


class SecretRefusedError(ShareProblem):
    """The share exists, but not with the secret syncd holds."""


class ShareExistsError(ShareProblem):
    """create refused: a share of the session exists already (opencode's server derives the
    share id from the session id), under credentials syncd may not hold."""


class ReceiverProbe(Enum):
    """What a harmless call (reading a share that does not exist) says about the receiver."""

    DOWN = "down"  # no answer, or a 5xx: the receiver itself is failing
    EXPLICIT = "explicit"  # it says "not found" for an unknown share: its 500s are failures
    AMBIGUOUS = "ambiguous"  # opencode's server: answers anything, throws bare 500s


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

    async def probe(self) -> ReceiverProbe:
        """How the receiver answers a harmless call now: the evidence that a bare 500 which
        keeps coming back is about one share, not a receiver that is down. Transports whose
        errors say what they are need no probe."""
        return ReceiverProbe.EXPLICIT

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most transports hold nothing
        """Release connections."""
