"""The share methods (`createShare`, `syncShare`, `deleteShare`) over any capnweb session.

A new share with data is `createShare(sessionID)` and `syncShare(<its id>, <its secret>, data)`
pipelined in the same round trip: the `syncShare` answer proves the data landed, which
`createShare(sessionID, initialData)` cannot (opencode's server ignores initialData). Any
answer that is not a thrown error acknowledges `syncShare` and `deleteShare`: a method wrapping
opencode's share functions returns nothing, `syncd serve` returns `{success, syncCount}`.
`syncShare` carries the batch key as a fourth argument: syncd's receiver applies a re-sent
batch once; JavaScript servers ignore it.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from ...model import Batch, Created, Share
from ...wire.capnweb.codec import CodecError, JsError
from ...wire.capnweb.protocol import Call, Result
from ..base import DeliveryError, ShareNotFoundError, Transport, UnsendableError
from ..outcome import created_share, thrown


class CapnwebTransport(Transport):
    """create/sync/delete in terms of `round_trip`, which each transport implements."""

    @abstractmethod
    async def round_trip(self, calls: list[Call], *, secret: str | None = None) -> list[Any]:
        """Send `calls` together (later ones may take `Result`s of earlier ones) and return
        each call's result, or the JsError it threw. Raises RetryableError when the answers
        did not all arrive, a DeliveryError when the receiver refused the whole exchange, and
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
        synced = len(answers) > 1 and not isinstance(answers[1], JsError)
        return Created(share=share, synced=synced)

    async def sync(self, share: Share, batch: Batch) -> None:
        call = Call("syncShare", (share.id, share.secret, batch.items, batch.key))
        [answer] = await self._calls("syncShare", [call], secret=share.secret)
        if isinstance(answer, JsError):
            raise _thrown("syncShare", answer, share.secret)

    async def delete(self, share: Share) -> None:
        [answer] = await self._calls(
            "deleteShare", [Call("deleteShare", (share.id, share.secret))], secret=share.secret
        )
        if isinstance(answer, JsError):
            error = _thrown("deleteShare", answer, share.secret)
            if not isinstance(error, ShareNotFoundError):
                raise error  # not found: already gone, what delete was asked to achieve

    async def _calls(self, what: str, calls: list[Call], *, secret: str | None) -> list[Any]:
        try:
            return await self.round_trip(calls, secret=secret)
        except CodecError as exc:
            raise UnsendableError(f"{what}: capnweb cannot carry this batch: {exc}") from None


def _thrown(what: str, error: JsError, secret: str | None) -> DeliveryError:
    return thrown(what, error.name, error.message, [secret])


def _share(answer: Any) -> Share:
    if isinstance(answer, JsError):
        raise _thrown("createShare", answer, None)
    return created_share("createShare", answer)
