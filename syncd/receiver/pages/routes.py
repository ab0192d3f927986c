"""The pages' routes: `/` (the list, behind the key when one is set), `/login`, `/logout`,
`/share/{id}` (a session), `/share/{id}/events` (its live updates) and `/static/`."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...archive.base import ArchiveStore, SessionCursor, ShareNotFound
from ...model import SyncItem
from . import access, live, markup, render, view

PAGE_SIZE = 50
# Longer filters are cut: a title search needs no more, and the LIKE pattern stays small.
MAX_QUERY = 200
# Items read per call when a page loads a share (the feed from the start, in steps).
LOAD_BATCH = 2000
# Every answer: scripts and styles only from this server, no inline script, no framing, and
# no Referer telling other sites which share a reader came from.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every HTTP answer that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (name.encode(), value.encode())
                    for name, value in SECURITY_HEADERS.items()
                    if name.encode() not in present
                ]
            await send(message)

        await self.app(scope, receive, send_secured)


def _cursor(text: str | None) -> SessionCursor | None:
    """A page boundary from a url: `<updated ms>.<share id>`; None for anything else."""
    if not text:
        return None
    stamp, _, share_id = text.partition(".")
    updated = live.number(stamp)
    if updated is None or not share_id:
        return None
    return SessionCursor(updated, share_id)


def _cursor_text(cursor: SessionCursor) -> str:
    return f"{cursor.updated}.{cursor.share_id}"


def _page_url(query: str, direction: str, cursor: SessionCursor) -> str:
    params = {"q": query} if query else {}
    params[direction] = _cursor_text(cursor)
    return "/?" + urlencode(params)


def page_routes(
    store: ArchiveStore, *, key: str | None, max_live_streams: int | None
) -> list[BaseRoute]:
    live_streams = live.LiveStreams(max_live_streams)

    def html(name: str, status: int = 200, **context: object) -> HTMLResponse:
        return HTMLResponse(render.page(name, **context), status_code=status)

    async def front(request: Request) -> Response:
        if not access.logged_in(request, key):
            return RedirectResponse("/login", status_code=303)
        query = request.query_params.get("q", "").strip()[:MAX_QUERY]
        before = _cursor(request.query_params.get("before"))
        after = None if before else _cursor(request.query_params.get("after"))
        rows = await store.list_sessions(query, before=before, after=after, limit=PAGE_SIZE + 1)
        # Rows come newest first, one more than a page: the extra one (the newest when going
        # to newer sessions, else the oldest) tells whether there are more that way.
        more = len(rows) > PAGE_SIZE
        if after:
            sessions, newer_exist, older_exist = rows[1:] if more else rows, more, True
        else:
            sessions, newer_exist, older_exist = rows[:PAGE_SIZE], before is not None, more
        newer = older = None
        if sessions and newer_exist:
            newer = _page_url(query, "after", sessions[0].cursor)
        if sessions and older_exist:
            older = _page_url(query, "before", sessions[-1].cursor)
        return html(
            "index.html",
            sessions=sessions,
            query=query,
            newer_url=newer,
            older_url=older,
            logout=key is not None,
        )

    async def login(request: Request) -> Response:
        if key is None:
            return RedirectResponse("/", status_code=303)
        if request.method == "GET":
            return html("login.html")
        if not access.same_origin(request):
            return html("login.html", status=403, error="Log in from this server's own page.")
        if not access.key_matches(await access.form_field(request, "key"), key):
            return html("login.html", status=401, error="That is not this receiver's key.")
        response = RedirectResponse("/", status_code=303)
        access.log_in(response, request, key)
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/login" if key else "/", status_code=303)
        if access.same_origin(request):
            access.log_out(response)
        return response

    async def share(request: Request) -> Response:
        share_id = request.path_params["share_id"]
        items: list[tuple[int, SyncItem]] = []
        try:
            summary = await store.session_summary(share_id)
            while batch := await store.changes(share_id, items[-1][0] if items else 0, LOAD_BATCH):
                items.extend(batch)
                if len(batch) < LOAD_BATCH:
                    break
        except ShareNotFound:
            return html("not_found.html", status=404)

        def page() -> str:
            return render.page(
                "share.html",
                s=view.session_view(share_id, items),
                summary=summary,
                events_url=request.url_for("share_events", share_id=share_id).path,
                data_url=f"/api/share/{share_id}/data",
            )

        # A long session takes a while to render: off the event loop, so syncs and live
        # streams are not held up meanwhile.
        return HTMLResponse(await run_in_threadpool(page))

    async def events(request: Request) -> Response:
        return await live.events(request, store, live_streams)

    async def code_css(_request: Request) -> Response:
        return Response(CODE_CSS, media_type="text/css")

    return [
        Route("/", front, methods=["GET"]),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/share/{share_id}", share, methods=["GET"]),
        Route("/share/{share_id}/events", events, methods=["GET"], name="share_events"),
        Route("/static/code.css", code_css, methods=["GET"]),
        Mount("/static", StaticFiles(packages=[("syncd.receiver.pages", "static")])),
    ]


CODE_CSS = markup.code_css()
