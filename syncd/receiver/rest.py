"""opencode's share REST API (create, sync, delete, read) on top of the ArchiveStore.

Paths, bodies and answers are those of opencode's share server; its answers to unknown shares
and wrong secrets are 404 `Share not found` and 403 `Invalid secret`. Every malformed request
gets a 400 naming what is wrong, before anything is stored.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .. import jsontext
from ..archive import ArchiveStore, BadSyncData, InvalidSecret, ShareNotFound
from .share_key import key_problem

# The sender's batch key: a batch sent again after a lost answer is applied once.
IDEMPOTENCY_HEADER = "idempotency-key"


BODY_DEPTH = jsontext.MAX_DEPTH + jsontext.ENVELOPE_DEPTH


class BadRequest(Exception):
    pass


class JsonText(JSONResponse):
    """A JSON answer that renders whatever was stored, lone surrogates included (as escapes)."""

    def render(self, content: Any) -> bytes:
        return jsontext.encode(content)


async def _json_object(
    request: Request, *fields: str, max_depth: int | None = BODY_DEPTH
) -> dict[str, Any]:
    """The body as a JSON object holding string `fields` (plus anything else), nested no
    deeper than `max_depth` (None: the caller checks what it keeps, see `jsontext.loads`)."""
    try:
        body = jsontext.loads(await request.body(), max_depth)
    except jsontext.JsonTextError as exc:
        raise BadRequest(f"request body {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    for field in fields:
        if not isinstance(body.get(field), str):
            raise BadRequest(f"request body needs {field!r} as a string")
    return body


def _error(status: int, message: str) -> JSONResponse:
    return JsonText({"error": message}, status_code=status)


def _answer(exc: Exception) -> JSONResponse:
    if isinstance(exc, ShareNotFound):
        return _error(404, str(exc))
    if isinstance(exc, InvalidSecret):
        return _error(403, str(exc))
    return _error(400, str(exc))


HANDLED = (BadRequest, BadSyncData, ShareNotFound, InvalidSecret)


def rest_routes(store: ArchiveStore, *, base_url: str | None, key: str | None) -> list[BaseRoute]:
    """Routes under /api/share. `base_url` prefixes share urls; None takes the request's own
    scheme and host, as opencode's server does."""

    def share_base(request: Request) -> str:
        return base_url or str(request.base_url).rstrip("/")

    async def create(request: Request) -> Response:
        problem = key_problem(request.headers, key)
        if problem is not None:
            return _error(401, problem)
        try:
            body = await _json_object(request, "sessionID")
            share = await store.create_share(body["sessionID"], share_base(request))
        except HANDLED as exc:
            return _answer(exc)
        return JSONResponse({"id": share.id, "secret": share.secret, "url": share.url})

    async def sync(request: Request) -> Response:
        try:
            # The body's depth is not checked as a whole, which would write it all again:
            # of what it holds only the secret (a string) and the items are kept, and the
            # store checks each item's type and data before anything walks them
            # (archive.base.item_key).
            body = await _json_object(request, "secret", max_depth=None)
            if not isinstance(body.get("data"), list):
                raise BadRequest("request body needs 'data' as an array of SyncData items")
            count = await store.sync(
                request.path_params["share_id"],
                body["secret"],
                body["data"],
                dedup_key=request.headers.get(IDEMPOTENCY_HEADER),
            )
        except HANDLED as exc:
            return _answer(exc)
        return JSONResponse({"success": True, "syncCount": count})

    async def delete(request: Request) -> Response:
        try:
            body = await _json_object(request, "secret")
            await store.delete_share(request.path_params["share_id"], body["secret"])
        except HANDLED as exc:
            return _answer(exc)
        return JSONResponse({"success": True})

    async def read(request: Request) -> Response:
        try:
            return JsonText(await store.read_share(request.path_params["share_id"]))
        except ShareNotFound as exc:
            return _answer(exc)

    async def read_items(request: Request) -> Response:
        try:
            return JsonText(await store.read_items(request.path_params["share_id"]))
        except ShareNotFound as exc:
            return _answer(exc)

    async def listing(request: Request) -> Response:
        problem = key_problem(request.headers, key)  # the list names every archived session
        if problem is not None:
            return _error(401, problem)
        return JsonText({"shares": await store.list_shares()})

    return [
        Route("/api/share", listing, methods=["GET"]),
        Route("/api/share", create, methods=["POST"]),
        Route("/api/share/{share_id}/sync", sync, methods=["POST"]),
        Route("/api/share/{share_id}/data", read_items, methods=["GET"]),
        Route("/api/share/{share_id}", read, methods=["GET"]),
        Route("/api/share/{share_id}", delete, methods=["DELETE"]),
    ]
