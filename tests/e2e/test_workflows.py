"""Workflows as on ComfyUI: save into a folder, save as, rename and open from the workflows sidebar
after a reload, export (the workflow and its API format), and a workflow naming a node type the
GPUs do not have (the missing-nodes dialog)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from playwright.async_api import Browser, Page

from devkit.doubles.comfyui_nodes import catalogue
from tests.support.browser import logged_in_page
from tests.support.queue_manager_app import LiveServer, register_worker

pytestmark = [pytest.mark.browser, pytest.mark.slow]

GRAPH: dict[str, Any] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 72, "height": 40, "batch_size": 1, "color": 5}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "flows"}},
}
WIDTH = """() => window.app.graph.nodes.find(n => n.type === 'EmptyImage')
    ?.widgets.find(w => w.name === 'width').value"""


async def answer_prompt(page: Page, name: str) -> None:
    """Type ``name`` into the frontend's name prompt and confirm it."""
    field = page.locator(".p-dialog input").first
    await field.wait_for(timeout=30_000)
    await field.fill(name)
    await page.keyboard.press("Enter")
    await field.wait_for(state="detached", timeout=30_000)


async def stored(page: Page, server: LiveServer, path: str) -> int:
    reply = await page.request.get(f"{server.url}/w/alice/api/userdata/{quote(path, safe='')}")
    return reply.status


async def command(page: Page, name: str) -> None:
    await page.evaluate("name => { window.app.extensionManager.command.execute(name); }", name)


async def test_a_workflow_saved_in_a_folder_saved_as_and_renamed_opens_after_a_reload(
    browser: Browser, server: LiveServer
) -> None:
    with httpx.Client(base_url=server.url) as worker:
        register_worker(worker, catalogue([]))
    context, page = await logged_in_page(browser, server, "alice")
    await page.evaluate("graph => window.app.loadApiJson(graph, 'draft')", GRAPH)
    await page.mouse.click(700, 600)  # the canvas has the keyboard
    await page.keyboard.press("Control+s")
    await answer_prompt(page, "project/first")
    assert await stored(page, server, "workflows/project/first.json") == 200
    await command(page, "Comfy.SaveWorkflowAs")
    await answer_prompt(page, "second")
    assert await stored(page, server, "workflows/project/second.json") == 200

    await page.click(".workflows-tab-button")
    panel = page.locator(".side-bar-panel")
    await panel.get_by_text("project", exact=True).first.click()  # the folder opens
    await panel.get_by_text("second.json").first.click(button="right")
    await page.get_by_role("menuitem", name="Rename").click()
    renamed = panel.locator("input").last
    await renamed.wait_for(timeout=30_000)
    await renamed.fill("renamed")
    await page.keyboard.press("Enter")
    await panel.get_by_text("renamed.json").first.wait_for(timeout=30_000)
    assert await stored(page, server, "workflows/project/renamed.json") == 200
    assert await stored(page, server, "workflows/project/second.json") == 404

    await context.close()
    # Another browser (nothing of hers in its storage) opens it from the sidebar.
    context, page = await logged_in_page(browser, server, "alice")
    await page.click(".workflows-tab-button")
    panel = page.locator(".side-bar-panel")
    await panel.get_by_text("project", exact=True).first.click()
    await panel.get_by_text("renamed.json").first.click()
    await page.wait_for_function(f"() => ({WIDTH})() === 72", timeout=30_000)
    assert await panel.get_by_text("second.json").count() == 0
    await context.close()


async def test_a_workflow_exports_as_a_workflow_and_in_api_format(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    with httpx.Client(base_url=server.url) as worker:
        register_worker(worker, catalogue([]))
    context, page = await logged_in_page(browser, server, "alice")
    await page.evaluate("graph => window.app.loadApiJson(graph, 'exported')", GRAPH)
    async with page.expect_download() as downloading:
        await command(page, "Comfy.ExportWorkflow")
        await answer_prompt(page, "whole")
    download = await downloading.value
    assert download.suggested_filename == "whole.json"
    workflow = json.loads(Path(await download.path()).read_text())
    assert sorted(node["type"] for node in workflow["nodes"]) == ["EmptyImage", "ImageInvert", "SaveImage"]
    async with page.expect_download() as downloading:
        await command(page, "Comfy.ExportWorkflowAPI")
        await answer_prompt(page, "api")
    api = json.loads(Path(await (await downloading.value).path()).read_text())
    assert {node["class_type"] for node in api.values()} == {"EmptyImage", "ImageInvert", "SaveImage"}
    assert [n["inputs"]["width"] for n in api.values() if n["class_type"] == "EmptyImage"] == [72]
    await context.close()


MISSING = {
    "last_node_id": 2,
    "last_link_id": 0,
    "nodes": [
        {
            "id": 1,
            "type": "EmptyImage",
            "pos": [0, 0],
            "size": [300, 130],
            "flags": {},
            "order": 0,
            "mode": 0,
            "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": []}],
            "properties": {},
            "widgets_values": [64, 64, 1, 0],
        },
        {
            "id": 2,
            "type": "FancyUpscalerPro",
            "pos": [400, 0],
            "size": [300, 100],
            "flags": {},
            "order": 1,
            "mode": 0,
            "properties": {"cnr_id": "fancy-pack", "ver": "1.0.0"},
            "widgets_values": [],
        },
    ],
    "links": [],
    "groups": [],
    "config": {},
    "extra": {},
    "version": 0.4,
}


# The dialog looks the node's pack up in Comfy's registry; the workspace's policy keeps her browser
# off every other host, so that lookup is blocked and the dialog lists the node types alone.
@pytest.mark.csp_blocks("https://api.comfy.org/")
async def test_a_workflow_with_a_node_the_gpus_lack_names_it_in_the_missing_nodes_dialog(
    browser: Browser, server: LiveServer
) -> None:
    with httpx.Client(base_url=server.url) as worker:
        register_worker(worker, catalogue([]))
    answered: list[str] = []

    def watch(page: Page) -> None:
        page.on("response", lambda r: answered.append(f"{r.status} {r.request.method} {r.url}"))

    context, page = await logged_in_page(browser, server, "alice", watch)
    await page.evaluate(
        "() => window.app.extensionManager.setting.set('Comfy.Workflow.ShowMissingNodesWarning', true)"
    )
    await page.evaluate("workflow => window.app.loadGraphData(workflow)", MISSING)
    dialog = page.locator(".p-dialog")
    await dialog.get_by_text("FancyUpscalerPro").first.wait_for(timeout=30_000)
    assert [line for line in answered if int(line.split()[0]) >= 400] == []
    await context.close()
