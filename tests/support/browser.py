"""A real headless Chromium for page tests: Debian's `chromium` package driven by Playwright.

Playwright's own browser downloads are not available here (no `playwright install`), so the
system browser is launched by path, once per test module (a launch takes seconds); every
test gets a fresh browser context (no cookies or storage shared), and Playwright gives the
launch a fresh temporary profile (`--user-data-dir`) and removes it on close. The fixtures run
on the module's event loop, so a module using them marks its tests (and async fixtures) so:

    pytestmark = pytest.mark.asyncio(loop_scope="module")

    async def test_page(browser_page: BrowserPage) -> None:
        await browser_page.page.goto(url)
        assert not browser_page.dialogs
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, ConsoleMessage, Dialog, Error, Page, async_playwright

DEFAULT_CHROMIUM = Path("/usr/bin/chromium")
# Flags that run Chromium as root in a container with no display, GPU or network beyond
# loopback: no sandbox (root), no QUIC, and none of the background calls home a fresh profile
# makes (component updates, sync, first-run pages).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# A phone-sized and a desktop-sized window, for pages that must read well on both.
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def chromium_path() -> Path:
    """The Chromium to drive: $SYNCD_CHROMIUM, else Debian's /usr/bin/chromium."""
    path = Path(os.environ.get("SYNCD_CHROMIUM") or DEFAULT_CHROMIUM)
    if not (path.is_file() and os.access(path, os.X_OK)):
        found = shutil.which("chromium")
        hint = f" (one is at {found}: set SYNCD_CHROMIUM)" if found else ""
        pytest.fail(
            f"Chromium not found at {path}{hint}; install Debian's package "
            "(apt-get install -y chromium) or set SYNCD_CHROMIUM to a Chromium binary",
            pytrace=False,
        )
    return path


@dataclass
class BrowserPage:
    """A page in a fresh browser context, with what it did that a test may need to deny."""

    page: Page
    dialogs: list[str] = field(default_factory=list)  # alert/confirm/prompt messages
    console: list[str] = field(default_factory=list)  # console.* output
    errors: list[str] = field(default_factory=list)  # uncaught page errors


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        try:
            launched = await playwright.chromium.launch(
                executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS, timeout=60_000
            )
        except Error as exc:
            pytest.fail(f"Chromium did not start: {exc.message.splitlines()[0]}", pytrace=False)
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="module")
async def browser_page(browser: Browser) -> AsyncIterator[BrowserPage]:
    """A desktop-sized page; dialogs are recorded and dismissed, never left open."""
    context = await browser.new_context(viewport=DESKTOP)
    page = await context.new_page()
    seen = BrowserPage(page)

    async def on_dialog(dialog: Dialog) -> None:
        seen.dialogs.append(dialog.message)
        await dialog.dismiss()

    def on_console(message: ConsoleMessage) -> None:
        seen.console.append(f"{message.type}: {message.text}")

    page.on("dialog", on_dialog)
    page.on("console", on_console)
    page.on("pageerror", lambda error: seen.errors.append(str(error)))
    try:
        yield seen
    finally:
        await context.close()
