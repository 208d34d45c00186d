"""A participant's day in the real browser: log in, find the GPUs' nodes, queue, watch, get the image."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from playwright.async_api import Browser, Page

from devkit.doubles.comfyui import ComfyUIDouble
from devkit.doubles.comfyui_nodes import catalogue
from tests.support.browser import logged_in_page, until, working_workspace
from tests.support.queue_manager_app import (
    WORKER_AUTH,
    LiveServer,
    approve_offered_catalogue,
    login,
    register_worker,
)
from tests.support.worker_agent import pull_worker, worker_settings

pytestmark = [pytest.mark.browser, pytest.mark.slow]

GRAPH: dict[str, Any] = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 96, "height": 64, "batch_size": 1, "color": 3381759},
    },
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "e2e"}},
}


async def open_node_library(page: Page) -> None:
    await page.click(".node-library-tab-button")
    await page.wait_for_selector(".node-lib-tree-explorer, .comfy-vue-side-bar-body", timeout=30_000)


async def test_before_any_gpu_is_up_the_participant_is_told_why_nodes_are_missing(
    browser: Browser, server: LiveServer, artifacts_dir: Path
) -> None:
    context, page = await logged_in_page(browser, server, "alice")
    await page.get_by_text("The GPUs are still starting").wait_for(timeout=30_000)
    await page.screenshot(path=artifacts_dir / "workspace-no-gpu-yet.png")
    await context.close()


async def test_the_workspace_loads_with_the_nodes_a_worker_published(
    browser: Browser, server: LiveServer, artifacts_dir: Path
) -> None:
    with httpx.Client(base_url=server.url) as worker:
        register_worker(worker, catalogue([]))
    requested: list[str] = []
    context, page = await logged_in_page(
        browser, server, "alice", lambda p: p.on("request", lambda r: requested.append(r.url))
    )
    known = await page.evaluate("Object.keys(window.LiteGraph.registered_node_types)")
    assert {"EmptyImage", "ImageInvert", "SaveImage", "LoadImage"} <= set(known)
    await open_node_library(page)
    await page.get_by_text("image", exact=True).first.click()
    await page.get_by_text("Save Image", exact=True).first.wait_for(timeout=30_000)
    await page.screenshot(path=artifacts_dir / "workspace-node-library.png")
    await context.close()
    elsewhere = [url for url in requested if not url.startswith((server.url, "data:", "blob:"))]
    assert elsewhere == [], "the workspace must not call hosts other than the platform"


# A custom node pack's web extension, as packs write them: it imports the frontend's app shim
# relative to where ComfyUI serves it (``/extensions/<pack>/hello.js``) and registers itself.
PACK_EXTENSION = """import { app } from "../../scripts/app.js";
app.registerExtension({
    name: "double.pack.hello",
    async setup() { window.doublePackSetUp = Object.keys(LiteGraph.registered_node_types).length; },
});
"""


async def test_a_custom_node_packs_web_extension_from_the_worker_runs_in_the_workspace(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    """The pack's name has a space: ComfyUI lists it URL-quoted and the page must import it so."""
    files = {"double pack/hello.js": PACK_EXTENSION}
    with ComfyUIDouble(tmp_path / "comfy", web_extensions=files) as comfy:
        settings = worker_settings(comfy, server.url, tmp_path)
        async with pull_worker(settings):
            await asyncio.to_thread(
                approve_offered_catalogue, server.url, "/extensions/double%20pack/hello.js"
            )
            failed: list[str] = []
            context, page = await logged_in_page(
                browser, server, "alice", lambda p: p.on("pageerror", lambda e: failed.append(str(e)))
            )
            await page.wait_for_function("() => window.doublePackSetUp !== undefined", timeout=30_000)
            assert await page.evaluate("window.doublePackSetUp") > 0, "set up before the nodes were known"
            listed = await page.request.get(f"{server.url}/w/alice/api/extensions")
            assert "/extensions/double%20pack/hello.js" in await listed.json()
            assert all("extensions/core" not in url for url in await listed.json())
            assert failed == []
            await context.close()


# The width the browser decodes an image at, or 0 when it cannot show it.
DECODED_WIDTH = """src => new Promise(done => {
    const image = new Image();
    image.onload = () => done(image.naturalWidth);
    image.onerror = () => done(0);
    image.src = src;
})"""


async def test_a_queued_workflow_runs_on_a_worker_and_only_its_owner_sees_it(
    browser: Browser, server: LiveServer, artifacts_dir: Path, tmp_path: Path
) -> None:
    async with working_workspace(browser, server, tmp_path) as (comfy, _, page, log):
        comfy.knobs.progress_steps, comfy.knobs.node_seconds = 4, 0.15
        known = await page.evaluate("Object.keys(window.LiteGraph.registered_node_types)")
        assert {"EmptyImage", "ImageInvert", "SaveImage"} <= set(known), "the worker's catalogue is missing"
        await page.evaluate("graph => window.app.loadApiJson(graph, 'e2e')", GRAPH)
        await page.locator("button:has-text('Run')").first.click()
        await until(page, lambda: log[0].of_type("execution_success"), "the job's execution_success")
        job_id = log[0].of_type("execution_success")[0]["data"]["prompt_id"]
        progress = [m["data"] for m in log[0].of_type("progress") if m["data"]["prompt_id"] == job_id]
        assert progress and all(0 < p["value"] <= p["max"] == 4 for p in progress), progress
        await page.screenshot(path=artifacts_dir / "workspace-after-run.png")
        executed = [m["data"] for m in log[0].of_type("executed") if m["data"]["prompt_id"] == job_id]
        shown = executed[0]["output"]["images"][0]
        assert shown["filename"].startswith("e2e_") and shown["type"] == "output"
        await page.click(".queue-tab-button")
        await page.locator(".task-item .task-time").first.wait_for(timeout=30_000)  # the finished task
        source = f"/w/alice/api/view?filename={shown['filename']}&type=output&subfolder={shown['subfolder']}"
        fetched = await page.request.get(f"{server.url}{source}")
        assert fetched.status == 200 and fetched.headers["content-type"] == "image/png"
        assert (await fetched.body()).startswith(b"\x89PNG")
        decoded = await page.evaluate(DECODED_WIDTH, source)
        assert decoded == GRAPH["1"]["inputs"]["width"], (
            "the browser could not decode the participant's output image"
        )
        await page.screenshot(path=artifacts_dir / "workspace-queue-output.png")
        assert await page.locator("text=Image failed to load").count() == 0

        other, theirs = await logged_in_page(browser, server, "bob")
        assert (await (await theirs.request.get(f"{server.url}/w/bob/api/history")).json()) == {}
        assert (await theirs.request.get(f"{server.url}{source}")).status == 403
        stolen = source.replace("/w/alice/", "/w/bob/")
        assert (await theirs.request.get(f"{server.url}{stolen}")).status == 404
        await theirs.click(".queue-tab-button")
        await theirs.get_by_text("No Tasks Found").wait_for(timeout=30_000)
        assert await theirs.locator(".task-item").count() == 0
        await theirs.screenshot(path=artifacts_dir / "workspace-second-participant.png")
        await other.close()


async def test_cancel_current_run_interrupts_the_job_on_the_worker(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    async with working_workspace(browser, server, tmp_path) as (comfy, _, page, log):
        comfy.knobs.progress_steps, comfy.knobs.node_seconds = 20, 3.0
        await page.evaluate("graph => window.app.loadApiJson(graph, 'long')", GRAPH)
        await page.locator("button:has-text('Run')").first.click()
        await until(page, lambda: log[0].of_type("progress"), "the job to run")
        await page.get_by_role("button", name="Cancel current run").click()
        await until(page, lambda: log[0].of_type("execution_interrupted"), "the interruption", 20_000)
        job_id = log[0].of_type("execution_interrupted")[0]["data"]["prompt_id"]
        reply = await page.request.get(f"{server.url}/w/alice/api/history/{job_id}")
        assert (await reply.json())[job_id]["status"]["status_str"] == "error"
        assert not log[0].of_type("execution_success")


async def test_my_place_in_line_shows_where_a_waiting_job_stands(
    browser: Browser, server: LiveServer, artifacts_dir: Path
) -> None:
    with httpx.Client(base_url=server.url) as client:
        register_worker(client, catalogue([]))
        bob_job = {"prompt": GRAPH, "client_id": "b"}
        login(client, "bob").post("/w/bob/api/prompt", json=bob_job).raise_for_status()
    context, page = await logged_in_page(browser, server, "alice")
    await page.evaluate("graph => window.app.loadApiJson(graph, 'wait')", GRAPH)
    await page.locator("button:has-text('Run')").first.click()
    await page.click(".workshop-place-tab-button")
    await page.locator(".workshop-place").get_by_text("#2").wait_for(timeout=30_000)
    assert "in line" in await page.locator(".workshop-place").inner_text()
    await page.screenshot(path=artifacts_dir / "workspace-place-in-line.png")
    with httpx.Client(base_url=server.url) as client:  # a GPU takes Bob's job: none of hers changed
        client.post("/api/workers/w1/claim", headers=WORKER_AUTH).raise_for_status()
    await page.locator(".workshop-place").get_by_text("#1").wait_for(timeout=30_000)
    await context.close()


async def test_logging_in_and_opening_the_workspace_asks_the_platform_for_nothing_it_lacks(
    browser: Browser, server: LiveServer
) -> None:
    """Every request the login page and the stock frontend make on a first visit, and on opening
    the queue, is answered: a 4xx or 5xx here is something the participant's page went without."""
    with httpx.Client(base_url=server.url) as worker:
        register_worker(worker, catalogue([]))
    answered: list[tuple[int, str]] = []

    def watch(page: Page) -> None:
        page.context.on("response", lambda r: answered.append((r.status, f"{r.request.method} {r.url}")))

    context, page = await logged_in_page(browser, server, "alice", watch)
    await page.click(".queue-tab-button")
    await page.get_by_text("No Tasks Found").wait_for(timeout=30_000)
    await context.close()
    assert [f"{status} {what}" for status, what in answered if status >= 400] == []


async def test_a_workflow_saved_from_the_menu_with_a_unicode_name_is_in_the_sidebar_after_a_reload(
    browser: Browser, server: LiveServer
) -> None:
    """Ctrl+S asks the name, the workflows sidebar lists it, and it is still there after a reload; a
    setting changed in the page survives the reload too. Bob's sidebar never lists Alice's."""
    with httpx.Client(base_url=server.url) as worker:
        register_worker(worker, catalogue([]))
    context, page = await logged_in_page(browser, server, "alice")
    await page.mouse.click(700, 500)  # the canvas has the keyboard
    await page.keyboard.press("Control+s")
    name = page.locator(".p-dialog input").first
    await name.wait_for(timeout=30_000)
    await name.fill("ünï flow ✓")
    await page.keyboard.press("Enter")
    await page.evaluate("() => window.app.extensionManager.setting.set('Comfy.LinkRenderMode', 0)")
    await page.click(".workflows-tab-button")
    await page.locator(".side-bar-panel").get_by_text("ünï flow ✓.json").wait_for(timeout=30_000)
    await page.reload()
    await page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=30_000)
    await page.click(".workflows-tab-button")
    await page.locator(".side-bar-panel").get_by_text("ünï flow ✓.json").wait_for(timeout=30_000)
    kept = await page.evaluate("() => window.app.extensionManager.setting.get('Comfy.LinkRenderMode')")
    assert kept == 0, "the setting changed before the reload was lost"
    with httpx.Client(base_url=server.url) as client:
        saved = await page.request.get(
            f"{server.url}/w/alice/api/userdata/workflows%2F{quote('ünï flow ✓.json')}"
        )
        bobs = "/w/bob/api/userdata/workflows%2Fbobs.json"
        login(client, "bob").post(bobs, content=await saved.body()).raise_for_status()
    other, theirs = await logged_in_page(browser, server, "bob")
    await theirs.click(".workflows-tab-button")
    await theirs.locator(".side-bar-panel").get_by_text("bobs.json").wait_for(timeout=30_000)
    assert await theirs.locator(".side-bar-panel").get_by_text("ünï flow").count() == 0
    await other.close()
    await context.close()
