"""Real headless Chromium (Debian's ``/usr/bin/chromium``) driven by Playwright, against the real
queue manager, a real worker agent and the ComfyUI double. Never ``playwright install``."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, async_playwright

from tests.support.browser import CHROMIUM, CHROMIUM_FLAGS, REPORT_CSP, browser_server, watch_csp
from tests.support.queue_manager_app import LiveServer


@pytest.fixture
async def browser(request: pytest.FixtureRequest) -> AsyncIterator[Browser]:
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
    expected = [mark.args[0] for mark in request.node.iter_markers("csp_blocks")]
    violations = [
        v for v in violations if not any(f"'{prefix}" in v or f" {prefix}" in v for prefix in expected)
    ]
    assert not violations, "the Content-Security-Policy blocked:\n" + "\n".join(violations[:20])


@pytest.fixture
def server(redis_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    with browser_server(redis_url, tmp_path / "files") as running:
        yield running
