"""Finding a node or a model as a participant does: the node library's search, the canvas's search box
(double-click), the model library's folders."""

from __future__ import annotations

import httpx
import pytest
from playwright.async_api import Browser

from devkit.doubles.comfyui_nodes import catalogue
from tests.support.browser import double_click, logged_in_page
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
    await found.first.wait_for(timeout=30_000)
    await context.close()


CHECKPOINTS = ["flux/dev/flux1-dev.safetensors", "sdxl/base.safetensors", "top.safetensors"]


async def test_the_model_library_shows_the_gpus_models_in_their_subfolders(
    browser: Browser, server: LiveServer
) -> None:
    """As ComfyUI's model library: a checkpoint under ``sdxl/`` is in a folder 'sdxl' of 'checkpoints'."""
    nodes = catalogue([])
    nodes["CheckpointLoaderSimple"] = {
        **nodes["EmptyImage"],
        "name": "CheckpointLoaderSimple",
        "display_name": "Load Checkpoint",
        "input": {"required": {"ckpt_name": [CHECKPOINTS, {}]}},
        "input_order": {"required": ["ckpt_name"]},
        "output": ["MODEL", "CLIP", "VAE"],
        "category": "loaders",
    }
    with httpx.Client(base_url=server.url) as worker:
        register_worker(worker, nodes)
    context, page = await logged_in_page(browser, server, "alice")
    listed = await page.request.get(f"{server.url}/w/alice/api/experiment/models/checkpoints")
    assert [model["name"] for model in await listed.json()] == CHECKPOINTS
    await page.click(".model-library-tab-button")
    panel = page.locator(".side-bar-panel")
    await panel.get_by_text("checkpoints", exact=True).first.click()
    await panel.get_by_text("sdxl", exact=True).first.click()
    await panel.get_by_text("base", exact=True).first.wait_for(timeout=30_000)
    await panel.get_by_text("flux", exact=True).first.click()
    await panel.get_by_text("dev", exact=True).first.click()
    await panel.get_by_text("flux1-dev", exact=True).first.wait_for(timeout=30_000)
    await context.close()


# The first option the canvas's search box offers, as its text (empty while none is listed).
FIRST_OPTION = (
    """() => document.querySelector('.p-autocomplete-option, .p-autocomplete-item')?.textContent ?? ''"""
)


async def test_a_node_picked_in_the_canvas_search_box_lands_where_she_double_clicked(
    browser: Browser, server: LiveServer
) -> None:
    """Double-click on an empty spot of the canvas, type, pick: the node is added there. Each step
    waits on what the page shows (the box has the keyboard, the options are the query's) before
    the next, so the pick never races the search."""
    with httpx.Client(base_url=server.url) as worker:
        register_worker(worker, catalogue([]))
    context, page = await logged_in_page(browser, server, "alice")
    await page.evaluate("() => window.app.graph.clear()")
    await double_click(page, 700, 450)
    box = page.locator(".comfy-vue-node-search-container input, .p-autocomplete-input").first
    await box.wait_for(timeout=30_000)
    await page.wait_for_function(
        "box => document.activeElement === box", arg=await box.element_handle(), timeout=30_000
    )
    await box.fill("invert")
    await page.wait_for_function(f"() => ({FIRST_OPTION})().includes('Invert Image')", timeout=30_000)
    await page.locator(".p-autocomplete-option, .p-autocomplete-item").first.click()
    await page.wait_for_function(
        "() => window.app.graph.nodes.some(node => node.type === 'ImageInvert')", timeout=30_000
    )
    assert await page.evaluate("() => window.app.graph.nodes.map(node => node.type)") == ["ImageInvert"]
    where = await page.evaluate(
        """() => {
            const node = window.app.graph.nodes[0];
            const rect = window.app.canvas.canvas.getBoundingClientRect();
            const [x, y] = window.app.canvas.ds.convertOffsetToCanvas(node.pos);
            return [rect.left + x, rect.top + y];
        }"""
    )
    assert abs(where[0] - 700) < 200 and abs(where[1] - 450) < 200, f"the node landed at {where}"
    await context.close()
