"""Real headless Chromium (Debian's ``/usr/bin/chromium``) for the browser tests: its flags, the
settings that keep the stock frontend quiet on a first visit, Content-Security-Policy reporting, and a
participant logged in through the login form."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, WebSocket

from devkit.doubles.comfyui import ComfyUIDouble
from tests.support.queue_manager_app import (
    ADMIN,
    ADMIN_PASSWORD,
    LiveServer,
    live_server,
    login,
    password,
    settings_for,
)
from tests.support.worker_agent import pull_worker, worker_settings

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


@contextlib.contextmanager
def browser_server(redis_url: str, files: Path, **settings: Any) -> Iterator[LiveServer]:
    """The queue manager the browser tests use (5 s leases, plus ``settings``), serving ``files``;
    Alice's and Bob's first visits are quiet."""
    with live_server(settings_for(redis_url, lease_seconds=5.0, **settings), files) as running:
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
    await page.wait_for_url(f"{server.url}/w/{user}/", timeout=30_000)
    # A function, not an expression: Playwright evaluates a bare expression with eval, which the CSP refuses.
    await page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=30_000)
    return context, page


@contextlib.asynccontextmanager
async def working_workspace(
    browser: Browser, server: LiveServer, tmp_path: Path, watch: Callable[[Page], object] | None = None
) -> AsyncIterator[tuple[ComfyUIDouble, BrowserContext, Page, list[SocketLog]]]:
    """A ComfyUI double with a pull worker on it (files in ``tmp_path``), and Alice's workspace open
    in a fresh browser profile: yields the double, the profile, the page and a log of each WebSocket
    the page opens (``watch`` sees the page too, before it loads). The profile closes after."""
    with ComfyUIDouble(tmp_path / "comfy") as comfy:
        settings = worker_settings(comfy, server.url, tmp_path, storage_url=f"file://{tmp_path}/files")
        async with pull_worker(settings):
            logs: list[SocketLog] = []

            def watching(page: Page) -> None:
                logs.append(SocketLog(page))
                if watch is not None:
                    watch(page)

            context, page = await logged_in_page(browser, server, "alice", watching)
            try:
                yield comfy, context, page, logs
            finally:
                await context.close()


class SocketLog:
    """Every text message the page's ``/ws`` received, parsed."""

    def __init__(self, page: Page) -> None:
        self.messages: list[dict[str, Any]] = []
        page.on("websocket", self._attach)

    def _attach(self, socket: WebSocket) -> None:
        socket.on("framereceived", self._frame)

    def _frame(self, payload: str | bytes) -> None:
        if isinstance(payload, str):
            self.messages.append(json.loads(payload))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]


async def double_click(page: Page, x: float, y: float) -> None:
    """Two presses of the left button at (x, y) stamped 50 ms apart, as a hand double-clicks.

    The canvas (LiteGraph's ``CanvasPointer``) takes two presses as a double click when their events'
    time stamps are under 300 ms apart. ``page.mouse.dblclick`` stamps each press when the browser
    takes it, after the renderer answered the one before, so on a loaded machine its presses can
    land more than 300 ms apart and the canvas sees two single clicks. The stamps given here hold
    whatever the load."""
    cdp = await page.context.new_cdp_session(page)
    try:
        now = time.time()
        base = {"x": x, "y": y, "button": "left"}
        await cdp.send("Input.dispatchMouseEvent", {**base, "type": "mouseMoved", "timestamp": now})
        for count, at in ((1, now), (2, now + 0.05)):
            pressed = {**base, "clickCount": count, "buttons": 1, "timestamp": at}
            await cdp.send("Input.dispatchMouseEvent", {**pressed, "type": "mousePressed"})
            released = {**base, "clickCount": count, "buttons": 0, "timestamp": at + 0.01}
            await cdp.send("Input.dispatchMouseEvent", {**released, "type": "mouseReleased"})
    finally:
        await cdp.detach()


async def until(page: Page, check: Any, what: str, timeout_ms: int = 20_000) -> None:
    """Wait (bounded) for a condition on what the page received, letting the page run meanwhile."""
    for _ in range(timeout_ms // 50):
        if check():
            return
        await page.wait_for_timeout(50)
    raise AssertionError(f"{what} did not happen within {timeout_ms} ms")


async def admin_page(browser: Browser, server: LiveServer) -> tuple[BrowserContext, Page]:
    """A fresh browser profile on the admin page, logged in through its login form."""
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    await page.goto(f"{server.url}/admin/")
    await page.fill("#username", ADMIN)
    await page.fill("#password", ADMIN_PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{server.url}/admin/")
    return context, page
