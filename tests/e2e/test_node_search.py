"""Finding a node as a participant does: the node library's search."""

from __future__ import annotations

import httpx
import pytest
from playwright.async_api import Browser

from devkit.doubles.comfyui_nodes import catalogue
from tests.support.browser import logged_in_page
from tests.support.queue_manager_app import LiveServer, register_worker

pytestmark = [pytest.mark.browser, pytest.mark.slow]


async def test_the_node_library_search_finds_a_gpus_node(browser: Browser, server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as worker:
        register_worker(worker, catalogue([]))
    context, page = await logged_in_page(browser, server, "alice")
    await page.click(".node-library-tab-button")
    search = page.locator(".side-bar-panel input").first
    await search.fill("invert")
    found = page.locator(".side-bar-panel").get_by_text("Invert Image", exact=True)
    await found.first.wait_for(timeout=10_000)
    await context.close()
