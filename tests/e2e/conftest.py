"""Real headless Chromium (Debian's ``/usr/bin/chromium``) driven by Playwright, against the real
queue manager, a real worker agent and the ComfyUI double. Never ``playwright install``."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, async_playwright

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


# Every page reports what its Content-Security-Policy blocked, so each browser test also proves the
# stock frontend (and the login and admin pages) run under the platform's policy.
REPORT_CSP = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error(`CSP violation: ${event.violatedDirective} blocked ${event.blockedURI || "inline"}`
    + ` at ${event.sourceFile}:${event.lineNumber}`);
});
"""


def watch_csp(context: BrowserContext, violations: list[str]) -> None:
    def seen(message: ConsoleMessage) -> None:
        if "CSP violation" in message.text or "Content Security Policy" in message.text:
            violations.append(f"{message.page.url if message.page else '?'}: {message.text}")

    context.on("console", seen)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (make system-deps)")
    violations: list[str] = []
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        new_context = launched.new_context

        async def reporting_context(**options: Any) -> BrowserContext:
            context = await new_context(**options)
            await context.add_init_script(REPORT_CSP)
            watch_csp(context, violations)
            return context

        launched.new_context = reporting_context  # type: ignore[method-assign]
        yield launched
        await launched.close()
    assert not violations, "the Content-Security-Policy blocked:\n" + "\n".join(violations[:20])


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
    # A function, not an expression: Playwright evaluates a bare expression with eval, which the CSP refuses.
    await page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=30_000)
    return context, page
