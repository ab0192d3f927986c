"""The share pages in a real headless Chromium, served by a real `syncd serve` process over an
archive that `syncd sync` filled from the real sample database, and written to by this test
process while the pages are open (as the daemon writes the embedded archive beside `serve`).

The run also takes the screenshots README.md shows (docs/screenshots/).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, expect

from syncd.archive.sqlite import SqliteArchive
from syncd.model import Share
from tests.support import FIXTURES
from tests.support.browser import PHONE, BrowserPage
from tests.support.env import eventually, free_port, isolated_env
from tests.support.syncd_process import SyncdProcess, syncd_process

SCREENSHOTS = FIXTURES.parent.parent / "docs" / "screenshots"
# "Within seconds": how long a change may take to show on an open page.
LIVE_MS = 10_000
pytestmark = pytest.mark.asyncio(loop_scope="module")
DEMO = json.loads((FIXTURES / "pages" / "demo-session.json").read_text())["items"]
DEMO_SESSION = DEMO[0]["data"]["id"]
MINUS = "\N{MINUS SIGN}"  # before a count of deletions
HOSTILE = "<script>alert('script ran')</script><img src=x onerror=\"alert('img ran')\">"


def sample_sessions() -> dict[str, str]:
    """Session id -> title of the sample database's sessions."""
    uri = (FIXTURES / "opencode" / "sample-1.18.33.db").resolve().as_uri() + "?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        return dict(db.execute("SELECT id, title FROM session"))


@pytest.fixture(scope="module")
def synced_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An archive `syncd sync` filled from the sample database (made once per module)."""
    root = tmp_path_factory.mktemp("sample")
    for source in (FIXTURES / "opencode").glob("sample-1.18.33.db*"):
        shutil.copy(source, root / source.name)
    archive = root / "archive.db"
    args = ["--db", str(root / "sample-1.18.33.db"), "--state", str(root / "state.db")]
    done = subprocess.run(
        [sys.executable, "-m", "syncd", "sync", *args, "--archive", str(archive)],
        env=isolated_env(root),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return archive


@pytest.fixture
def archive(tmp_path: Path, synced_sample: Path) -> Path:
    copy = tmp_path / "archive.db"
    shutil.copy(synced_sample, copy)
    return copy


@dataclass
class Served:
    """`syncd serve` over the test's archive on a fixed port (a restart keeps the url)."""

    process: SyncdProcess
    url: str

    async def ready(self) -> None:
        async def answers() -> bool:
            try:
                async with httpx.AsyncClient(trust_env=False) as client:
                    return (await client.get(f"{self.url}/api/share")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(answers, "syncd serve to answer", self.process.log)

    async def restart_after(self, while_down: Any) -> None:
        # SIGTERM ends it in time (terminate fails otherwise) although streams are open, and
        # a clean stop exits 0.
        assert await self.process.terminate() == 0
        await while_down()
        await self.process.start()
        await self.ready()


@pytest_asyncio.fixture(loop_scope="module")
async def served(tmp_path: Path, archive: Path) -> AsyncIterator[Served]:
    port = free_port()
    args = ["serve", "--archive", str(archive), "--port", str(port)]
    async with syncd_process(args, isolated_env(tmp_path), tmp_path / "serve.log") as process:
        running = Served(process, f"http://127.0.0.1:{port}")
        await running.ready()
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def writer(archive: Path) -> AsyncIterator[SqliteArchive]:
    """The archive opened by this process: a writer beside the serving one."""
    store = await SqliteArchive.open(archive)
    yield store
    await store.close()


async def share_of(store: SqliteArchive, session_id: str) -> Share:
    """The session's newest share, made here when it has none."""
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        row = conn.execute(
            "SELECT id, secret, url FROM share WHERE session_id = ? "
            "ORDER BY time_created DESC LIMIT 1",
            (session_id,),
        ).fetchone()
    if row is not None:
        return Share(*row)
    return await store.create_share(session_id, "http://127.0.0.1:1")


async def add_demo(store: SqliteArchive) -> Share:
    share = await share_of(store, DEMO_SESSION)
    await store.sync(share.id, share.secret, DEMO)
    return share


def text_part(message_id: str, part_id: str, text: str) -> dict[str, Any]:
    data = {"id": part_id, "messageID": message_id, "type": "text", "text": text}
    return {"type": "part", "data": data}


def assistant(message_id: str) -> dict[str, Any]:
    return {"type": "message", "data": {"id": message_id, "role": "assistant", "cost": 0.5}}


async def open_sample_live(served: Served, writer: SqliteArchive, page: Page) -> Share:
    """Open a sample session's page and wait for its live stream; mark the document, so that
    a reload (which would show new content without live updates) is told apart."""
    share = await share_of(writer, next(iter(sample_sessions())))
    await page.goto(f"{served.url}/share/{share.id}")
    await expect(page.locator("#live")).to_have_text("live")
    await page.evaluate("window.loadedOnce = true")
    return share


async def still_the_same_document(page: Page) -> bool:
    return bool(await page.evaluate("window.loadedOnce === true"))


async def test_front_page_lists_the_sessions(
    served: Served, writer: SqliteArchive, browser_page: BrowserPage
) -> None:
    await add_demo(writer)
    page = browser_page.page
    await page.goto(served.url + "/")
    rows = page.locator("table.sessions tbody tr")
    sessions = sample_sessions()
    await expect(rows).to_have_count(len(sessions) + 1)
    for session_id, title in sessions.items():
        row = rows.filter(has_text=session_id)
        await expect(row.locator("td.title a")).to_have_text(title)
        await expect(row.locator("td.dir")).to_have_text("/home/dev/proj")
    newest = rows.first  # the demo session was updated last
    await expect(newest.locator("td.title a")).to_have_text("Fix the off-by-one in paginate()")
    await expect(newest).to_contain_text("$0.0412")
    await expect(newest).to_contain_text("31,966")  # its session's tokens, all five kinds
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SCREENSHOTS / "sessions.png")

    await page.get_by_role("searchbox").fill("off-by-ONE")
    await page.get_by_role("searchbox").press("Enter")
    await expect(rows).to_have_count(1)
    await newest.locator("td.title a").click()
    await expect(page.locator("h1")).to_have_text("Fix the off-by-one in paginate()")
    assert not browser_page.errors


async def test_share_page_shows_text_tool_calls_and_diffs(
    served: Served, writer: SqliteArchive, browser_page: BrowserPage
) -> None:
    page = browser_page.page
    sample = await share_of(writer, next(iter(sample_sessions())))
    await page.goto(f"{served.url}/share/{sample.id}")
    await expect(page.locator(".msg-user .md")).to_have_text('"please write the file f0.txt"')
    write = page.locator(".tool").filter(has=page.locator(".tool-name", has_text="write"))
    await expect(write.locator(".tool-title")).to_have_text("tmp/h2/home/proj/f0.txt")
    await expect(write.locator("pre.file")).to_contain_text("line 19")
    await expect(write.locator("pre.output")).to_have_text("Wrote file successfully.")
    await expect(page.locator(".msg-assistant .md").last).to_contain_text("word39")
    await expect(page.locator(".msg-assistant .usage").first).to_contain_text("19 tokens")

    demo = await add_demo(writer)
    await page.goto(f"{served.url}/share/{demo.id}")
    edit = page.locator(".tool").filter(has=page.locator(".tool-name", has_text="edit"))
    await expect(edit.locator(".diffs-head")).to_contain_text(f"1 file changed +1 {MINUS}1")
    await expect(edit.locator(".dl.del")).to_have_text("-    end = start + size + 1")
    await expect(edit.locator(".dl.add")).to_have_text("+    end = start + size")
    changes = page.locator("#changes")
    await expect(changes.locator(".diffs-head")).to_contain_text(f"2 files changed +7 {MINUS}1")
    await expect(changes.locator("details.diff summary")).to_have_text(
        [f"shop/paginate.py modified +1 {MINUS}1", f"tests/test_paginate.py added +6 {MINUS}0"]
    )
    # Markdown rendered, code highlighted by Pygments, reasoning folded, long output folded
    # with its length.
    await expect(page.locator(".md table td code").first).to_have_text("shop/paginate.py")
    await expect(page.locator(".md pre.code span.o").first).to_have_text("=")
    reasoning = page.locator("details.reasoning")
    await expect(reasoning).not_to_have_attribute("open", "")
    await expect(reasoning.locator(".md")).to_be_hidden()
    bash = page.locator(".tool").filter(has=page.locator(".tool-name", has_text="bash"))
    await expect(bash.locator("details.fold summary")).to_have_text(
        "Output · 31 lines · 2,213 characters"
    )
    await expect(bash.locator("pre.output")).to_be_hidden()
    await expect(page.locator(".msg-assistant .model")).to_have_text("anthropic/claude-sonnet-4-5")
    await expect(page.locator("#session-totals")).to_have_text(
        "2 messages · $0.0412 · 31,966 tokens"
    )
    await page.screenshot(path=SCREENSHOTS / "share.png", full_page=True)
    await page.set_viewport_size(PHONE)
    await page.screenshot(path=SCREENSHOTS / "share-phone.png")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], "the page scrolls sideways on a phone"
    assert not browser_page.errors


async def test_a_part_synced_while_the_page_is_open_appears(
    served: Served, writer: SqliteArchive, browser_page: BrowserPage
) -> None:
    page = browser_page.page
    share = await open_sample_live(served, writer, page)
    await writer.sync(
        share.id,
        share.secret,
        [assistant("msg_zz_live"), text_part("msg_zz_live", "prt_zz_1", "Appeared **live**")],
    )
    article = page.locator("article#m-msg_zz_live")
    await expect(article.locator(".md strong")).to_have_text("live", timeout=LIVE_MS)
    await expect(page.locator("article.msg").last).to_have_id("m-msg_zz_live")
    await expect(page.locator("#session-totals")).to_have_text(
        "4 messages · $0.00 · 38 tokens", timeout=LIVE_MS
    )
    # A part that grows is replaced in place, not added again.
    await writer.sync(
        share.id, share.secret, [text_part("msg_zz_live", "prt_zz_1", "Appeared **live**, grown")]
    )
    await expect(article.locator(".md")).to_have_text("Appeared live, grown", timeout=LIVE_MS)
    await expect(article.locator(".part")).to_have_count(1)
    assert await still_the_same_document(page)
    await writer.delete_share(share.id, share.secret)
    await expect(page.locator("#live")).to_have_text("share deleted", timeout=LIVE_MS)
    assert not browser_page.errors


async def test_a_page_catches_up_after_the_server_restarts(
    served: Served, writer: SqliteArchive, browser_page: BrowserPage
) -> None:
    page = browser_page.page
    share = await open_sample_live(served, writer, page)
    await writer.sync(
        share.id, share.secret, [assistant("msg_zz"), text_part("msg_zz", "prt_1", "one")]
    )
    await expect(page.locator("#p-prt_1")).to_have_text("one", timeout=LIVE_MS)

    async def write_while_down() -> None:
        await expect(page.locator("#live")).to_have_text("reconnecting", timeout=LIVE_MS)
        for n, text in enumerate(("two", "three", "four"), start=2):
            await writer.sync(share.id, share.secret, [text_part("msg_zz", f"prt_{n}", text)])

    await served.restart_after(write_while_down)
    parts = page.locator("article#m-msg_zz .part")
    await expect(parts).to_have_text(["one", "two", "three", "four"], timeout=LIVE_MS)
    await expect(page.locator("#live")).to_have_text("live")
    await writer.sync(share.id, share.secret, [text_part("msg_zz", "prt_5", "five")])
    await expect(parts).to_have_text(["one", "two", "three", "four", "five"], timeout=LIVE_MS)
    assert await still_the_same_document(page)
    assert not browser_page.errors


async def test_hostile_content_renders_as_text_and_runs_nothing(
    served: Served, writer: SqliteArchive, browser_page: BrowserPage
) -> None:
    page = browser_page.page
    share = await open_sample_live(served, writer, page)
    tool = {
        "id": "prt_h2",
        "messageID": "msg_h",
        "type": "tool",
        "tool": HOSTILE,
        "state": {
            "status": "completed",
            "title": HOSTILE,
            "input": {"x": HOSTILE},
            "output": HOSTILE,
        },
    }
    hostile = [
        assistant("msg_h"),
        text_part("msg_h", "prt_h1", HOSTILE),
        {"type": "part", "data": tool},
    ]
    await writer.sync(share.id, share.secret, hostile)
    await page.reload()  # rendered by the server this time, and live again
    await expect(page.locator("#live")).to_have_text("live")
    await writer.sync(share.id, share.secret, [text_part("msg_h", "prt_h3", "live " + HOSTILE)])
    await expect(page.locator("#p-prt_h3")).to_contain_text("live <script>", timeout=LIVE_MS)

    messages = page.locator("#messages")
    await expect(page.locator("#p-prt_h1")).to_have_text(HOSTILE)
    await expect(page.locator("#p-prt_h2 .tool-title")).to_have_text(HOSTILE)
    await expect(page.locator("#p-prt_h2 pre.output")).to_have_text(HOSTILE)
    await expect(messages.locator("script, img")).to_have_count(0)
    assert browser_page.dialogs == []
    assert not browser_page.errors
    # Escaped, the markup never reached the browser as markup: not even the CSP had to refuse.
    assert not [line for line in browser_page.console if "Content Security Policy" in line]


async def test_a_page_beyond_the_live_streams_limit_shows_and_goes_live_later(
    tmp_path: Path,
    archive: Path,
    writer: SqliteArchive,
    browser: Browser,
    browser_page: BrowserPage,
) -> None:
    # Refused its stream (503), the page still shows; its script asks again later by itself.
    config = tmp_path / "serve.toml"
    config.write_text("serve_max_live_streams = 1\n")
    port = free_port()
    args = ["serve", "--config", str(config), "--archive", str(archive), "--port", str(port)]
    async with syncd_process(args, isolated_env(tmp_path), tmp_path / "serve.log") as process:
        served = Served(process, f"http://127.0.0.1:{port}")
        await served.ready()
        other_reader = await browser.new_context()
        share = await open_sample_live(served, writer, await other_reader.new_page())
        page = browser_page.page
        streams: list[int] = []  # the status of each stream the page asked for
        page.on("response", lambda r: streams.append(r.status) if "/events" in r.url else None)
        await page.goto(f"{served.url}/share/{share.id}")
        await expect(page.locator("article.msg").first).to_be_visible()
        await expect(page.locator("#live")).to_have_text("reconnecting")
        await other_reader.close()  # its stream's place is given back
        await expect(page.locator("#live")).to_have_text("live", timeout=LIVE_MS)
        assert streams[0] == 503 and streams[-1] == 200, streams
        assert not browser_page.errors
