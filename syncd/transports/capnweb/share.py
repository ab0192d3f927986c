"""The share methods (`createShare`, `syncShare`, `deleteShare`) over any capnweb session.

A new share with data is `createShare(sessionID)` and `syncShare(<its id>, <its secret>, data)`
pipelined in the same round trip: the `syncShare` answer (`{success, syncCount}`) proves the
data landed, which `createShare(sessionID, initialData)` cannot (a server whose createShare
takes only the session id ignores the data silently). `syncShare` carries the batch key as a
fourth argument: syncd's receiver applies a re-sent batch once; JavaScript servers ignore it.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from ..base import (
    Batch,
    Created,
    RejectedError,
    RetryableError,
    Share,
    ShareNotFoundError,
    Transport,
)
from .codec import CodecError, JsError
from .protocol import Call, Result, thrown_error


class CapnwebTransport(Transport):
    """create/sync/delete in terms of `round_trip`, which each transport implements."""

    @abstractmethod
    async def round_trip(self, calls: list[Call], *, secret: str | None = None) -> list[Any]:
        """Send `calls` together (later ones may take `Result`s of earlier ones) and return
        each call's result, or the JsError it threw. Raises RetryableError when the answers
        did not all arrive, RejectedError when the receiver refused the whole exchange, and
        CodecError when an argument cannot travel."""

    async def create(self, session_id: str, batch: Batch | None) -> Created:
        calls = [Call("createShare", (session_id,))]
        if batch is not None:
            created = Result(0)
            calls.append(
                Call("syncShare", (created["id"], created["secret"], batch.items, batch.key))
            )
        answers = await self._calls("createShare", calls, secret=None)
        share = _share(answers[0])
        # A refused first batch leaves the share standing: sync() sends it again and
        # dead-letters it with the receiver's message.
        synced = len(answers) > 1 and _acknowledged(answers[1])
        return Created(share=share, synced=synced)

    async def sync(self, share: Share, batch: Batch) -> None:
        call = Call("syncShare", (share.id, share.secret, batch.items, batch.key))
        [answer] = await self._calls("syncShare", [call], secret=share.secret)
        if isinstance(answer, JsError):
            raise thrown_error("syncShare", answer, share.secret)
        if not _acknowledged(answer):
            raise RetryableError("syncShare: not acknowledged: answer lacks success=true")

    async def delete(self, share: Share) -> None:
        [answer] = await self._calls(
            "deleteShare", [Call("deleteShare", (share.id, share.secret))], secret=share.secret
        )
        if isinstance(answer, JsError):
            error = thrown_error("deleteShare", answer, share.secret)
            if isinstance(error, ShareNotFoundError):
                return  # already gone: what delete was asked to achieve
            raise error
        if not _acknowledged(answer):
            raise RetryableError("deleteShare: not acknowledged: answer lacks success=true")

    async def _calls(self, what: str, calls: list[Call], *, secret: str | None) -> list[Any]:
        try:
            return await self.round_trip(calls, secret=secret)
        except CodecError as exc:
            raise RejectedError(f"{what}: capnweb cannot carry this batch: {exc}") from None


def _share(answer: Any) -> Share:
    if isinstance(answer, JsError):
        raise thrown_error("createShare", answer, None)
    fields = {
        name: answer.get(name) if isinstance(answer, dict) else None
        for name in ("id", "secret", "url")
    }
    if not all(isinstance(value, str) and value for value in fields.values()):
        raise RetryableError("createShare: not acknowledged: answer lacks id, secret or url")
    return Share(**fields)


def _acknowledged(answer: Any) -> bool:
    return isinstance(answer, dict) and answer.get("success") is True
