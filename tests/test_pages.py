"""The share pages without a browser: what they make of hostile or odd content, the key in
front of the session list, the headers every answer carries, and the pages' links (on both
stores where they read the archive)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from syncd.archive import ArchiveStore, StoreUnavailable
from syncd.archive.sqlite import SqliteArchive
from syncd.model import Share
from syncd.receiver.app import build_app
from syncd.receiver.pages import live, markup, render, view
from tests.support import FIXTURES

KEY = "k3y-for-the-list"
HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"
DEMO = json.loads((FIXTURES / "pages" / "demo-session.json").read_text())["items"]


def test_markdown_keeps_raw_html_as_text_and_drops_script_links() -> None:
    html = markup.markdown(f"{HOSTILE}\n\n[x](javascript:alert(1)) [y](https://example.com)")
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "javascript:" not in html.replace("[x](javascript:", "")  # left as text, no href
    assert '<a href="https://example.com" rel="noopener noreferrer nofollow">y</a>' in html


def test_code_is_highlighted_and_escaped() -> None:
    html = markup.markdown('```python\nprint("<b>")\n```\n\n```nolang\n<i>\n```')
    assert '<span class="nb">print</span>' in html
    assert "&lt;b&gt;" in html and "&lt;i&gt;" in html and "<b>" not in html
    assert markup.code("<x>", filename="a.unknown-ext") == "&lt;x&gt;"


def test_diff_lines_follow_the_hunk_counts() -> None:
    patch = "Index: a\n====\n--- a\n+++ a\n@@ -1,3 +1,2 @@\n x\n--- sql comment\n-y\n+z\n"
    diff = markup.file_diff({"file": "a.sql", "patch": patch})
    assert diff is not None
    assert [(line.kind, line.text) for line in diff.lines] == [
        ("meta", "--- a"),
        ("meta", "+++ a"),
        ("hunk", "@@ -1,3 +1,2 @@"),
        ("context", " x"),
        ("del", "--- sql comment"),
        ("del", "-y"),
        ("add", "+z"),
    ]
    assert (diff.additions, diff.deletions) == (1, 2)  # counted when the diff has none
    older = markup.file_diff({"file": "b", "before": "1\n2\n", "after": "1\n3\n", "additions": 1})
    assert older is not None
    assert [line.text for line in older.lines if line.kind in ("add", "del")] == ["-2", "+3"]
    assert (older.additions, older.deletions) == (1, 1)
    assert markup.file_diff({"file": "c"}) is None


def test_long_text_is_folded_with_its_length_and_huge_text_cut() -> None:
    short = view.Block.of("a\n" * view.FOLD_LINES)
    assert short is not None and (short.lines, short.folded) == (view.FOLD_LINES, False)
    long = view.Block.of("a\n" * (view.FOLD_LINES + 1))
    assert long is not None and long.folded
    huge = view.Block.of("x" * (view.SHOW_CHARS + 5))
    assert huge is not None and huge.cut and len(huge.text) == view.SHOW_CHARS
    html = render.fragment("block", huge, "Output")
    assert "<details" in html and f"{view.SHOW_CHARS + 5:,} characters" in html


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
hostile_text = st.sampled_from([HOSTILE, "", "x"]) | st.text(max_size=20)


@st.composite
def odd_items(draw: Any) -> list[dict[str, Any]]:
    """SyncData of the right outline with fields of any type (a sender's bug, or an attack)."""

    def fields(*names: str) -> dict[str, Any]:
        return {name: draw(json_values | hostile_text) for name in names}

    message = {"id": "msg_1", **fields("role", "time", "cost", "tokens", "error", "summary")}
    part = {"id": draw(hostile_text) or "p", "messageID": "msg_1"}
    part |= {"type": draw(st.sampled_from(["text", "reasoning", "tool", "file", "patch", "x"]))}
    part |= fields("text", "tool", "state", "files", "synthetic", "filename", "mime")
    return [
        {"type": "session", "data": fields("title", "time", "directory", "version")},
        {"type": "message", "data": message},
        {"type": "part", "data": part},
        {"type": "session_diff", "data": draw(st.lists(json_values | hostile_text, max_size=3))},
    ]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=odd_items())
def test_any_content_renders_escaped(items: list[dict[str, Any]]) -> None:
    summary = view_summary()
    page = render.page(
        "share.html",
        s=view.session_view("id", list(enumerate(items, 1))),
        summary=summary,
        events_url="/e",
        data_url="/d",
    )
    for item in items:
        assert live.fragment(item) is not None
    assert "<script>alert" not in page and "<img src=x" not in page
    assert page.count("<script") == 1  # the page's own, from a file


def view_summary() -> Any:
    from syncd.archive.base import SessionSummary

    return SessionSummary("id", "ses", "u", "t", "d", 1, 0, 0.0, 0)


def request(headers: dict[str, str], query: str = "") -> Request:
    raw = [(name.encode(), value.encode()) for name, value in headers.items()]
    return Request({"type": "http", "headers": raw, "query_string": query.encode()})


def test_a_reconnect_resumes_after_the_last_event_id() -> None:
    assert live.position(request({}, "after=7")) == 7
    assert live.position(request({"last-event-id": "12"}, "after=7")) == 12
    assert live.position(request({"last-event-id": "x"}, "after=7")) == 7
    assert live.position(request({}, "after=-1")) == 0
    assert live.position(request({"last-event-id": "9" * 30}, "after=7")) == 7  # no 64-bit int


def client_for(store: ArchiveStore, key: str | None) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=build_app(store, key=key))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_the_list_needs_the_key_share_pages_do_not(store: ArchiveStore) -> None:
    share = await store.create_share("ses_keyed0001", "http://testserver")
    await store.sync(share.id, share.secret, DEMO)
    async with client_for(store, KEY) as client:
        first = await client.get("/")
        assert (first.status_code, first.headers["location"]) == (303, "/login")
        assert (await client.get(f"/share/{share.id}")).status_code == 200  # unguessable id
        assert (await client.get("/", headers={"x-opencode-share-key": KEY})).status_code == 200

        wrong = await client.post("/login", data={"key": "guess"})
        assert (wrong.status_code, wrong.cookies) == (401, httpx.Cookies())
        assert "not this receiver" in wrong.text
        foreign = await client.post("/login", data={"key": KEY}, headers={"origin": "http://evil"})
        assert foreign.status_code == 403 and not foreign.cookies

        logged_in = await client.post("/login", data={"key": KEY})
        assert logged_in.status_code == 303
        cookie = logged_in.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert KEY not in cookie  # a digest of the key, never the key
        listing = await client.get("/")
        assert listing.status_code == 200 and "Fix the off-by-one in paginate()" in listing.text

        await client.post("/logout")
        assert (await client.get("/")).status_code == 303


async def test_without_a_key_the_list_is_open_and_login_goes_home(store: ArchiveStore) -> None:
    async with client_for(store, None) as client:
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/login")).headers["location"] == "/"


async def test_every_answer_carries_a_strict_policy_and_no_inline_script(
    store: ArchiveStore,
) -> None:
    share = await store.create_share("ses_headers01", "http://testserver")
    await store.sync(share.id, share.secret, DEMO)
    async with client_for(store, None) as client:
        for path in ("/", f"/share/{share.id}", "/share/missing", "/static/live.js", "/api/share"):
            answer = await client.get(path)
            policy = answer.headers["content-security-policy"]
            assert policy.startswith("default-src 'self'") and "unsafe-inline" not in policy
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.headers["referrer-policy"] == "no-referrer"
            if answer.headers["content-type"].startswith("text/html"):
                scripts = re.findall(r"<script[^>]*>", answer.text)
                assert all('src="/static/' in tag for tag in scripts), scripts
                assert not re.search(r"<[^>]+\son[a-z]+=", answer.text)
                assert "style=" not in answer.text
        assert (await client.get("/share/missing")).status_code == 404
        assert (await client.get("/share/missing/events")).status_code == 404
        assert (await client.get("/static/code.css")).headers["content-type"].startswith("text/css")


async def test_the_list_links_page_to_page(store: ArchiveStore) -> None:
    titles = []
    for n in range(120):
        share = await store.create_share(f"ses_many{n:06d}", "http://testserver")
        title = f"Session number {n}"
        item = {"type": "session", "data": {"title": title, "time": {"updated": 1000 + n}}}
        await store.sync(share.id, share.secret, [item])
        titles.append(title)
    seen: list[str] = []
    pages = 0
    async with client_for(store, None) as client:
        url: str | None = "/"
        while url:
            text = (await client.get(url)).text
            seen += re.findall(r'<a href="/share/[^"]+">([^<]+)</a>', text)
            older = re.search(r'<a href="([^"]+)">Older', text)
            url = older and older[1].replace("&amp;", "&")
            pages += 1
        assert seen == titles[::-1] and pages == 3
        last = re.search(r'<a href="([^"]+)">← Newer', text)
        assert last is not None
        back = (await client.get(last[1].replace("&amp;", "&"))).text
        assert re.findall(r'<a href="/share/[^"]+">([^<]+)</a>', back) == seen[50:100]
        filtered = (await client.get("/", params={"q": "number 11"})).text
        assert re.findall(r'<a href="/share/[^"]+">([^<]+)</a>', filtered) == [
            f"Session number {n}" for n in (119, 118, 117, 116, 115, 114, 113, 112, 111, 110, 11)
        ]
        # A cursor no store integer holds is no cursor: the newest page, not an error.
        huge = await client.get("/", params={"before": f"{'9' * 30}.x"})
        assert re.findall(r'<a href="/share/[^"]+">([^<]+)</a>', huge.text) == seen[:50]


async def share_with_a_message(store: ArchiveStore, session_id: str) -> Share:
    share = await store.create_share(session_id, "http://testserver")
    await store.sync(share.id, share.secret, [{"type": "message", "data": {"id": "m1"}}])
    return share


class OutageArchive(SqliteArchive):
    """A store whose database goes out of reach while a page's stream waits for changes."""

    async def wait_for_change(self, share_id: str, after: int, timeout: float) -> bool:
        raise StoreUnavailable("connection refused", retry_after=5)


async def test_a_store_outage_ends_a_live_stream_for_the_browser_to_resume(
    tmp_path: Path,
) -> None:
    store = await OutageArchive.open(tmp_path / "archive.db")
    try:
        share = await share_with_a_message(store, "ses_outage0001")
        async with client_for(store, None) as client:
            answer = await client.get(f"/share/{share.id}/events")
        assert answer.status_code == 200
        # What came before the outage, with its id to resume from; no "gone": the share is not.
        assert "id: 1" in answer.text and "event: message" in answer.text
        assert "event: gone" not in answer.text
    finally:
        await store.close()


class CountingArchive(SqliteArchive):
    """A store that counts the reads of a share's changes."""

    reads = 0

    async def changes(self, share_id: str, after: int, limit: int) -> Any:
        self.reads += 1
        return await super().changes(share_id, after, limit)


async def test_a_refused_live_stream_reads_nothing_and_a_missing_share_holds_no_place(
    tmp_path: Path,
) -> None:
    store = await CountingArchive.open(tmp_path / "archive.db")
    try:
        share = await share_with_a_message(store, "ses_counted0001")
        streams = live.LiveStreams(1)

        def request(share_id: str) -> Request:
            path = f"/share/{share_id}/events"
            params = {"share_id": share_id}
            scope = {"type": "http", "method": "GET", "path": path, "headers": [],
                     "query_string": b"", "path_params": params}  # fmt: skip
            return Request(scope)

        missing = await live.events(request("nosuchshare"), store, streams)
        assert missing.status_code == 404 and streams.open == 0
        assert streams.take()  # the one place, taken by a reader
        reads = store.reads
        refused = await live.events(request(share.id), store, streams)
        assert refused.status_code == 503
        assert store.reads == reads  # refused before anything was read
    finally:
        await store.close()
