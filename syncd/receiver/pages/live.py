"""Live share pages: the archive's change feed as Server-Sent Events.

Each event is one stored item, its SSE `id` the item's sequence number in the share, its data
the HTML the page puts in place of the old piece. A reader that reconnects (the browser sends
`Last-Event-ID`; the page's script passes `after` when it opens a new stream) is sent everything
stored after the last item it saw: no duplicates, no gaps, across a server restart too.

A share page needs no key and its stream stays open as long as the reader likes, while uvicorn
counts every open connection against `serve_max_connections`: streams opened by anyone who can
reach the port would take every place syncd's deliveries need (they were answered 503). So the
streams have a budget of their own (`serve_max_live_streams`); one asked for beyond it is
refused at once, and the page shows without live updates.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import structlog
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from ...archive.base import ArchiveStore, ShareNotFound, StoreUnavailable
from ...model import SyncItem
from . import render, view

log = structlog.get_logger("syncd.receiver.pages")

# Items sent per read of the feed; a reader far behind catches up in several reads.
BATCH = 200
# How long one wait for changes lasts before the feed is read again (it ends sooner on a change).
WAIT_SECONDS = 15.0
# Keep-alive comments, so proxies and browsers keep an idle stream open.
PING_SECONDS = 15
# Sent to the browser: how soon to reconnect a dropped stream (milliseconds).
RETRY_MS = 1000
MAX_DIGITS = 18
# Sent with a refused stream: when to ask again (the page's script waits at most as long).
RETRY_AFTER_SECONDS = 15


def number(text: str | None) -> int | None:
    """A sequence number or time from a url or header: ASCII digits that fit the stores'
    64-bit integers (SQLite refuses bigger ones); None for anything else."""
    if text is None or not (text.isascii() and text.isdigit()) or len(text) > MAX_DIGITS:
        return None
    return int(text)


def position(request: Request) -> int:
    """Where the reader is: Last-Event-ID (a reconnect) before `?after=` (a fresh stream)."""
    for value in (request.headers.get("last-event-id"), request.query_params.get("after")):
        if (seq := number(value)) is not None:
            return seq
    return 0


def fragment(item: dict[str, Any]) -> dict[str, str]:
    """What a page puts in place for one changed item."""
    kind, data = item.get("type"), item.get("data")
    if kind == "session" and isinstance(data, dict):
        session = view.SessionView(share_id="")
        view.apply_session(session, data)
        return {"html": render.fragment("session_head", session)}
    if kind == "message" and isinstance(data, dict):
        return {"html": render.fragment("message", view.message_view(data), False)}
    if kind == "part" and isinstance(data, dict):
        message_id = view.text_of(data.get("messageID"))
        part = view.part_view(data)
        return {
            "message": f"m-{message_id}",
            "html": render.fragment("part", part) if part is not None else "",
            "shell": render.fragment("message", view.message_view({"id": message_id}), False),
        }
    if kind == "session_diff" and isinstance(data, list):
        session = view.SessionView(share_id="", diffs=view.file_diffs(data))
        return {"html": render.fragment("changes", session)}
    return {}


class LiveStreams:
    """The streams open at once, and how many may be (None: as many as asked for)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.open = 0
        self._full = False  # refused one since the last stream ended: logged once

    def take(self) -> bool:
        if self.limit is not None and self.open >= self.limit:
            if not self._full:
                log.warning(
                    "live streams at their limit: pages show without live updates",
                    limit=self.limit,
                )
                self._full = True
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        self.open -= 1
        self._full = False


class _HeldStream(EventSourceResponse):
    """A stream that gives its place back when it ends, however it ends."""

    def __init__(self, content: AsyncIterator[ServerSentEvent], streams: LiveStreams) -> None:
        super().__init__(content, ping=PING_SECONDS)
        self._streams = streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._streams.give_back()


def _event(name: str, data: dict[str, str], seq: int | None = None) -> ServerSentEvent:
    return ServerSentEvent(
        json.dumps(data, ensure_ascii=False), event=name, id=None if seq is None else str(seq)
    )


async def events(request: Request, store: ArchiveStore, streams: LiveStreams) -> Response:
    share_id = request.path_params["share_id"]
    after = position(request)
    # Refused before anything is read: a refused reader costs the store nothing (the first
    # batch of a large share took 38.8 ms, the refusal 1.6).
    if not streams.take():
        # Closed after the answer: a refused reader holds no connection either.
        return PlainTextResponse(
            "Too many live pages open: this page shows without live updates",
            status_code=503,
            headers={"retry-after": str(RETRY_AFTER_SECONDS), "connection": "close"},
        )
    try:
        first = await store.changes(share_id, after, BATCH)
    except BaseException as exc:
        streams.give_back()  # no stream comes of it
        if isinstance(exc, ShareNotFound):
            return PlainTextResponse("Share not found", status_code=404)
        raise

    async def stream() -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(retry=RETRY_MS)
        try:
            async for event in follow(after, first):
                yield event
        except StoreUnavailable as exc:
            # The stream ends; the browser reconnects from the last event it got.
            log.warning("page stream ended: store unavailable", share=share_id, error=str(exc))

    async def follow(
        seen: int, batch: list[tuple[int, SyncItem]]
    ) -> AsyncIterator[ServerSentEvent]:
        while True:
            totals_changed = False
            for seq, item in batch:
                kind = str(item.get("type"))
                yield _event(kind, fragment(item), seq)
                seen = seq
                totals_changed |= kind in ("session", "message")
            if totals_changed:
                try:
                    summary = await store.session_summary(share_id)
                except ShareNotFound:
                    break
                yield _event("totals", {"html": render.fragment("session_totals", summary)})
            try:
                if len(batch) < BATCH:
                    await store.wait_for_change(share_id, seen, WAIT_SECONDS)
                batch = await store.changes(share_id, seen, BATCH)
            except ShareNotFound:
                break
        yield _event("gone", {})

    return _HeldStream(stream(), streams)
