"""opencode's share RPC (`/rpc/share`, Cap'n Web over HTTP batch and WebSocket) on top of the
ArchiveStore, with the REST API's merge rules.

Methods on the main object, as opencode's ShareRpc: `createShare(sessionID, initialData?)`,
`syncShare(shareID, secret, data, dedupKey?)` (the fourth argument is syncd's: a batch key
applied once), `deleteShare(shareID, secret)`. Unknown shares and wrong secrets are thrown as
`Error("Share not found")` and `Error("Invalid secret")`; malformed data as a TypeError naming
the item. With a key, both the POST and the WebSocket upgrade need `x-opencode-share-key`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..archive import ArchiveStore, BadSyncData, InvalidSecret, ShareNotFound
from ..archive.base import item_key, require_text
from ..wire.capnweb.codec import UNDEFINED
from ..wire.capnweb.protocol import PATH
from .capnweb_session import ProtocolError, ServerSession, Thrown
from .share_key import key_problem
from .unavailable import unavailable_response

# Calls waiting to run, or answers waiting to be sent, past which a WebSocket is not read until
# they are done: a caller sending calls faster than they run, or never reading the answers, is
# held back by TCP instead of growing the receiver's memory.
MAX_AHEAD = 1_000


class ShareRpc:
    """The main object: dispatches a call by method name to the store."""

    def __init__(self, store: ArchiveStore, base_url: str) -> None:
        self._store = store
        self._base_url = base_url

    async def __call__(self, method: str, args: list[Any]) -> Any:
        try:
            match method:
                case "createShare":
                    return await self._create(*_arity(method, args, 1, 2))
                case "syncShare":
                    return await self._sync(*_arity(method, args, 3, 4))
                case "deleteShare":
                    share_id, secret = _arity(method, args, 2, 2)
                    await self._store.delete_share(_text(share_id, "shareID"), secret)
                    return {"success": True}
        except ShareNotFound:
            raise Thrown("Share not found") from None
        except InvalidSecret:
            raise Thrown("Invalid secret") from None
        except BadSyncData as exc:
            raise Thrown(str(exc), "TypeError") from None
        raise Thrown(f"{method} is not a method of the share RPC", "TypeError")

    async def _create(self, session_id: Any, initial: Any = UNDEFINED) -> dict[str, str]:
        session_id = _text(session_id, "sessionID")
        data = [] if initial is UNDEFINED or initial is None else _items(initial, "initialData")
        for index, item in enumerate(data):
            item_key(index, item)  # refuse bad data before a share exists
        share = await self._store.create_share(session_id, self._base_url)
        if data:
            await self._store.sync(share.id, share.secret, data)
        return {"id": share.id, "secret": share.secret, "url": share.url}

    async def _sync(
        self, share_id: Any, secret: Any, data: Any, dedup_key: Any = UNDEFINED
    ) -> dict[str, Any]:
        key = None if dedup_key is UNDEFINED or dedup_key is None else _text(dedup_key, "dedupKey")
        count = await self._store.sync(
            _text(share_id, "shareID"), secret, _items(data, "data"), dedup_key=key
        )
        return {"success": True, "syncCount": count}


def _arity(method: str, args: list[Any], least: int, most: int) -> list[Any]:
    if not least <= len(args) <= most:
        raise Thrown(f"{method} takes {least} to {most} arguments, not {len(args)}", "TypeError")
    return args


def _text(value: Any, name: str) -> str:
    try:
        return require_text(value, name)
    except BadSyncData as exc:
        raise Thrown(str(exc), "TypeError") from None


def _items(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise Thrown(f"{name} must be an array of SyncData items", "TypeError")
    return value


def rpc_routes(store: ArchiveStore, *, base_url: str | None, key: str | None) -> list[BaseRoute]:
    """`/rpc/share`: POST (HTTP batch) and WebSocket. `base_url` prefixes share urls; None
    takes the request's own scheme and host."""

    def main_object(connection: HTTPConnection) -> ShareRpc:
        own = str(connection.base_url).rstrip("/")
        own = own.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
        return ShareRpc(store, base_url or own)

    async def batch(request: Request) -> Response:
        problem = key_problem(request.headers, key)
        if problem is not None:
            return JSONResponse({"error": problem}, status_code=401)
        try:
            lines = (await request.body()).decode("utf-8").split("\n")
        except UnicodeDecodeError:
            return PlainTextResponse("request body is not UTF-8", status_code=400)
        answers: list[str] = []
        session = ServerSession(main_object(request), answers.append)
        try:
            for line in lines:
                if line:
                    session.receive(line)
            await session.settled()
        except ProtocolError as exc:
            return PlainTextResponse(f"bad capnweb batch: {exc}", status_code=400)
        finally:
            await session.close()
        if session.unavailable is not None:
            return unavailable_response(session.unavailable)
        return PlainTextResponse("\n".join(answers))

    async def socket(websocket: WebSocket) -> None:
        problem = key_problem(websocket.headers, key)
        if problem is not None:
            await _deny(websocket, problem)
            return
        await websocket.accept()
        outgoing: asyncio.Queue[str] = asyncio.Queue()
        session = ServerSession(main_object(websocket), outgoing.put_nowait)
        writer = asyncio.create_task(_write(websocket, outgoing))
        try:
            while not writer.done():  # done: a send failed, the caller left
                if session.waiting >= MAX_AHEAD:
                    await session.settled()
                if outgoing.qsize() >= MAX_AHEAD:
                    await _sent(outgoing, writer)
                    continue
                session.receive(await websocket.receive_text())
        except ProtocolError as exc:
            with contextlib.suppress(Exception):
                await websocket.send_text(session.abort_message(str(exc)))
                await websocket.close(3000, "protocol error")
        except WebSocketDisconnect:
            pass
        finally:
            writer.cancel()
            with contextlib.suppress(BaseException):
                await writer  # a send that failed because the caller left
            await session.close()

    return [Route(PATH, batch, methods=["POST"]), WebSocketRoute(PATH, socket)]


async def _write(websocket: WebSocket, outgoing: asyncio.Queue[str]) -> None:
    while True:
        text = await outgoing.get()
        try:
            await websocket.send_text(text)
        finally:
            outgoing.task_done()


async def _sent(outgoing: asyncio.Queue[str], writer: asyncio.Task[None]) -> None:
    """Wait until the answers queued so far are sent, or the writer stopped (the caller left)."""
    joined = asyncio.ensure_future(outgoing.join())
    try:
        await asyncio.wait({joined, writer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        joined.cancel()


async def _deny(websocket: WebSocket, problem: str) -> None:
    """401 on the upgrade when the server can send one, else a policy-violation close."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse({"error": problem}, status_code=401))
    else:
        await websocket.close(1008, problem)
