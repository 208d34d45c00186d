"""Real headless Chromium (Debian's ``/usr/bin/chromium``) driven by Playwright, against the real
queue manager, a real worker agent and the ComfyUI double. Never ``playwright install``."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from tests.support.queue_manager_app import LiveServer, live_server, login, password, settings_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
]
# A first visit would open ComfyUI's template gallery and warn about the default graph's models.
QUIET_START = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Workflow.ShowMissingNodesWarning": False,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
}


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (make system-deps)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield launched
        await launched.close()


@pytest.fixture
def server(redis_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    with live_server(settings_for(redis_url, lease_seconds=5.0), tmp_path / "files") as running:
        for user in ("alice", "bob"):
            with httpx.Client(base_url=running.url) as client:
                login(client, user).post(f"/w/{user}/api/settings", json=QUIET_START).raise_for_status()
        yield running


async def logged_in_page(
    browser: Browser, server: LiveServer, user: str, watch: Callable[[Page], object] | None = None
) -> tuple[BrowserContext, Page]:
    """A fresh browser profile that logs in through the login form and lands in its workspace;
    ``watch`` sees the page before it loads (to listen to its WebSocket)."""
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    if watch is not None:
        watch(page)
    await page.goto(f"{server.url}/w/")
    await page.fill("#username", user)
    await page.fill("#password", password(user))
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{server.url}/w/{user}/", timeout=15_000)
    await page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=30_000)
    return context, page
