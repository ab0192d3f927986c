"""The receiving side of a Cap'n Web session: evaluates pushed calls on a main object and
answers pulls, for HTTP batch (one session per POST) and WebSocket (one per socket).

Calls are delivered to the main object one at a time, in push order, so that two syncs of the
same share apply in the order they were sent; a pipelined argument (`["pipeline", id, path]`)
is the settled result of an earlier call. A result stays in the export table until the caller
releases it (WebSocket) or the batch ends. Only plain values travel: a call that names a stub,
a map or a stream is answered with a TypeError.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from ..archive import StoreUnavailable
from ..wire.capnweb.codec import UNDEFINED, CodecError, JsError, decode, dumps, encode, loads
from ..wire.capnweb.protocol import MAIN
from ..wire.text import excerpt

log = structlog.get_logger("syncd.receiver.rpc")

Dispatch = Callable[[str, list[Any]], Awaitable[Any]]
"""Calls method `name` of the main object with decoded arguments."""

# Calls and results a WebSocket caller may leave the session holding (calls not yet evaluated,
# results not yet released) before the session is aborted.
MAX_EXPORTS = 10_000


class Thrown(Exception):
    """Raised by a method: reaches the caller as a thrown JavaScript Error(message)."""

    def __init__(self, message: str, name: str = "Error") -> None:
        super().__init__(message)
        self.error = JsError(name, message)


class ProtocolError(Exception):
    """The caller broke the protocol: the session is aborted with this message."""


@dataclass
class _Export:
    result: asyncio.Future[Any]
    pulled: bool = False
    answered: bool = field(default=False)
    # Released before its call was evaluated: held until then, so that calls released at
    # once still count against MAX_EXPORTS while they wait in the queue.
    released: bool = False


class ServerSession:
    """One session's export table. `send` takes each outgoing message's text."""

    def __init__(self, dispatch: Dispatch, send: Callable[[str], None]) -> None:
        self._dispatch = dispatch
        self._send = send
        self._exports: dict[int, _Export] = {}
        self._next_id = 1
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        # Set when a call found the archive unreachable: the session is aborted there.
        self.unavailable: StoreUnavailable | None = None
        self._worker = asyncio.create_task(self._work())

    @property
    def retained(self) -> int:
        """Results held for the caller (not yet released)."""
        return len(self._exports)

    @property
    def waiting(self) -> int:
        """Calls received and not yet run."""
        return self._queue.qsize()

    def receive(self, text: str) -> None:
        """Take one message; raises ProtocolError for one that breaks the session."""
        try:
            message = loads(text)
        except CodecError as exc:
            raise ProtocolError(str(exc)) from None
        match message:
            case ["push", expr]:
                if len(self._exports) >= MAX_EXPORTS:
                    raise ProtocolError(f"more than {MAX_EXPORTS} calls left unreleased")
                export_id = self._next_id
                self._next_id += 1
                self._exports[export_id] = _Export(asyncio.get_running_loop().create_future())
                self._queue.put_nowait((export_id, expr))
            case ["pull", int(export_id)] if export_id in self._exports:
                export = self._exports[export_id]
                export.pulled = True
                if export.result.done():
                    self._answer(export_id, export)
            case ["release", int(export_id), int()]:
                held = self._exports.get(export_id)
                if held is not None and not held.result.done():
                    held.released = True
                else:
                    self._exports.pop(export_id, None)
            case ["abort", _]:
                raise ProtocolError("caller aborted the session")
            case _:
                raise ProtocolError(f"bad RPC message: {excerpt(text)}")

    async def settled(self) -> None:
        """Wait until every call received so far has been delivered and answered."""
        await self._queue.join()

    async def close(self) -> None:
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        self._exports.clear()

    def abort_message(self, reason: str) -> str:
        return dumps(["abort", encode(JsError("Error", reason))])

    async def _work(self) -> None:
        while True:
            export_id, expr = await self._queue.get()
            try:
                if self.unavailable is not None:
                    continue  # aborted: nothing after the failed call is applied
                export = self._exports.get(export_id)
                try:
                    value = await self._evaluate(expr)
                except Thrown as exc:
                    outcome: tuple[str, Any] = ("reject", exc.error)
                except StoreUnavailable as exc:
                    # Not the call's fault, so not a thrown error (that would refuse the
                    # batch): the session ends and the caller retries what went unanswered.
                    self.unavailable = exc
                    retry = f"archive unavailable; retry in {exc.retry_after} s"
                    self._send(self.abort_message(retry))
                    continue
                except Exception as exc:  # a bug must not end the session
                    log.exception("rpc call failed", error=str(exc))
                    outcome = ("reject", JsError("Error", "internal error"))
                else:
                    outcome = ("resolve", value)
                if export is not None:
                    export.result.set_result(outcome)
                    if export.pulled:
                        self._answer(export_id, export)
                    if export.released:
                        del self._exports[export_id]
            finally:
                self._queue.task_done()

    def _answer(self, export_id: int, export: _Export) -> None:
        if export.answered:
            return
        export.answered = True
        kind, value = export.result.result()
        try:
            encoded = encode(value)
        except CodecError as exc:
            kind, encoded = "reject", encode(JsError("TypeError", f"result cannot travel: {exc}"))
        self._send(dumps([kind, export_id, encoded]))

    async def _evaluate(self, expr: Any) -> Any:
        match expr:
            case ["pipeline" | "import", int(target), [str(method)], list(args)] if target == MAIN:
                try:
                    values = [decode(arg, self._reference) for arg in args]
                except CodecError as exc:
                    raise Thrown(f"{method}: {exc}", "TypeError") from None
                return await self._dispatch(method, values)
            case ["pipeline" | "import", int(target), *rest] if target != MAIN and len(rest) <= 1:
                path = rest[0] if rest else []
                return self._reference(["pipeline", target, path])
        raise Thrown(f"unsupported call expression: {excerpt(str(expr))}", "TypeError")

    def _reference(self, expr: list[Any]) -> Any:
        """The value of an earlier call's result (settled: calls run in order)."""
        match expr:
            case [_, int(target)]:
                path: list[Any] = []
            case [_, int(target), list(path)] if all(isinstance(p, (str, int)) for p in path):
                pass
            case _:
                raise Thrown(f"unsupported reference: {excerpt(str(expr))}", "TypeError")
        export = self._exports.get(target)
        if export is None or not export.result.done():
            raise Thrown(f"no such result to pipeline: {target}", "TypeError")
        kind, value = export.result.result()
        if kind == "reject":
            raise Thrown(value.message, value.name)  # a pipelined call fails as its input did
        for step in path:
            value = _property(value, step)
        return value


def _property(value: Any, step: str | int) -> Any:
    if isinstance(value, dict) and isinstance(step, str):
        return value.get(step, UNDEFINED)
    if isinstance(value, list) and isinstance(step, int) and 0 <= step < len(value):
        return value[step]
    if isinstance(value, list) and step == "length":
        return len(value)
    return UNDEFINED
