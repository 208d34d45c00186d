"""ComfyUI's templates browser in a workspace: it lists the templates and opens one onto the canvas."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page

from devkit.doubles.comfyui_nodes import catalogue
from tests.support.browser import logged_in_page
from tests.support.queue_manager_app import LiveServer, live_server, register_worker, settings_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PACKAGE = files("comfyui_workflow_templates").joinpath("templates")


async def node_types(page: Page) -> list[str]:
    types: list[str] = await page.evaluate("() => window.app.graph._nodes.map((node) => node.type)")
    return types


async def test_the_templates_browser_lists_the_templates_and_opens_one_onto_the_canvas(
    browser: Browser, server: LiveServer, artifacts_dir: Path
) -> None:
    with httpx.Client(base_url=server.url) as worker:
        register_worker(worker, catalogue([]))
    context, page = await logged_in_page(browser, server, "alice")
    await page.locator(".comfyui-logo").first.click()  # the menu (1.27.10 has Browse Templates at its top)
    await page.get_by_role("menuitem", name="Browse Templates").click()
    listed = page.locator("[data-testid=template-workflows-content] [data-testid^=template-workflow-]")
    await listed.first.wait_for(timeout=30_000)
    assert await listed.count() > 1
    card = page.locator("[data-testid=template-workflow-image2image]")
    await card.get_by_text("Image to Image").wait_for(timeout=30_000)
    thumbnail = card.locator("img").first  # the package's image2image-1.webp, shown on the card
    await thumbnail.wait_for(timeout=30_000)
    await page.wait_for_function(
        "(img) => img.complete && img.naturalWidth > 0", arg=await thumbnail.element_handle(), timeout=30_000
    )
    await page.screenshot(path=artifacts_dir / "workspace-templates-browser.png")
    template = json.loads(PACKAGE.joinpath("image2image.json").read_text())
    wanted = sorted(node["type"] for node in template["nodes"])
    assert sorted(await node_types(page)) != wanted  # the default graph, before
    await card.click()
    await page.wait_for_function(
        "() => window.app.graph._nodes.some((node) => node.type === 'VAEEncode')", timeout=30_000
    )
    assert sorted(await node_types(page)) == wanted
    await context.close()


async def test_a_new_participant_starts_on_a_blank_canvas_with_the_templates_browser_open(
    browser: Browser, redis_url: str, tmp_path: Path
) -> None:
    """As in ComfyUI: a first visit (no settings yet) opens the templates browser, and only that one."""
    with live_server(settings_for(redis_url, ("carol",)), tmp_path / "files") as server:
        with httpx.Client(base_url=server.url) as worker:
            register_worker(worker, catalogue([]))
        context, page = await logged_in_page(browser, server, "carol")
        gallery = page.locator("[data-testid=template-workflows-content]")
        await gallery.locator("[data-testid=template-workflow-default]").wait_for(timeout=30_000)
        assert await node_types(page) == []
        done = await page.request.get(f"{server.url}/w/carol/api/settings/Comfy.TutorialCompleted")
        assert await done.json() is True  # the frontend stored it: the next visit opens her last workflow
        await context.close()
