"""Cap'n Web messages, as the calling side writes and reads them (the receiving side is
`syncd.receiver.capnweb_session`).

A call is `["push", ["pipeline", 0, [method], [arg, ...]]]` on the main object (export 0); it
takes the next import id (1, 2, ... in push order: per POST in HTTP batch, for the life of the
socket on a WebSocket). `["pull", id]` asks for its result, which comes back as
`["resolve", id, value]` or `["reject", id, error]`; `["release", id, 1]` then lets the
receiver forget it. `["abort", error]` ends the session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..text import excerpt
from .codec import CodecError, JsError, Pipeline, decode, encode, loads

MAIN = 0
PATH = "/rpc/share"


def push_call(method: str, args: tuple[Any, ...] | list[Any], target: int = MAIN) -> list[Any]:
    """A call of `method` on import `target`; the argument list itself is not escaped, each
    argument is an expression."""
    encoded = []
    for index, arg in enumerate(args):
        try:
            encoded.append(encode(arg))
        except CodecError as exc:
            raise CodecError(f"{method} argument {index + 1}: {exc}") from None
    return ["push", ["pipeline", target, [method], encoded]]


@dataclass(frozen=True)
class Result:
    """The result (or a property of it) of the `index`-th call of the same round trip, passed
    as an argument to a later call: the receiver substitutes it (promise pipelining)."""

    index: int
    path: tuple[str | int, ...] = ()

    def __getitem__(self, key: str | int) -> Result:
        return Result(self.index, (*self.path, key))


@dataclass(frozen=True)
class Call:
    """One method call on the main object."""

    method: str
    args: tuple[Any, ...]


def frame_calls(calls: list[Call], first_id: int) -> list[list[Any]]:
    """push + pull messages for `calls`, whose results take import ids `first_id`, +1, ...
    A `Result` argument becomes a `pipeline` reference to that earlier call."""
    messages = []
    for offset, call in enumerate(calls):
        args = [
            Pipeline(first_id + arg.index, arg.path) if isinstance(arg, Result) else arg
            for arg in call.args
        ]
        messages += [push_call(call.method, args), pull(first_id + offset)]
    return messages


def pull(import_id: int) -> list[Any]:
    return ["pull", import_id]


def release(import_id: int, refcount: int = 1) -> list[Any]:
    return ["release", import_id, refcount]


@dataclass(frozen=True)
class Answer:
    """One message from the receiving side: `resolve`/`reject` of an import, or `abort`."""

    kind: str
    import_id: int | None
    value: Any


def parse_answer(text: str | bytes) -> Answer:
    """The answer one message carries; CodecError when it is not one a caller expects."""
    message = loads(text)
    if not isinstance(message, list) or not message or not isinstance(message[0], str):
        raise CodecError(f"not a capnweb message: {excerpt(str(message))}")
    kind = message[0]
    if kind in ("resolve", "reject") and len(message) == 3 and isinstance(message[1], int):
        return Answer(kind, message[1], decode(message[2]))
    if kind == "abort" and len(message) == 2:
        return Answer(kind, None, decode(message[1]))
    raise CodecError(f"unexpected capnweb message: {excerpt(str(message))}")


def aborted(error: Any) -> str:
    """The reason an `abort` message gives, in one line."""
    if isinstance(error, JsError):
        return f"{error.name}: {excerpt(error.message)}"
    return excerpt(str(error))
