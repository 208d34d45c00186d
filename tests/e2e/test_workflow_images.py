"""A result image carries its workflow, as on ComfyUI: dropped on the canvas it loads that workflow,
and a past job's workflow opens from the queue sidebar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page

from tests.support.browser import SocketLog, until, working_workspace
from tests.support.queue_manager_app import LiveServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

GRAPH: dict[str, Any] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 80, "height": 48, "batch_size": 1, "color": 255}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "dropped"}},
}
TITLE = "Mïne ✓"

# Drops the file at ``src`` on the canvas as a file dragged from the desktop would land.
DROP = """async src => {
    const blob = await (await fetch(src)).blob();
    const data = new DataTransfer();
    data.items.add(new File([blob], "result.png", { type: "image/png" }));
    const canvas = document.querySelector("#graph-canvas");
    for (const kind of ["dragenter", "dragover", "drop"]) {
        canvas.dispatchEvent(new DragEvent(kind, { dataTransfer: data, bubbles: true, cancelable: true }));
    }
}"""
TITLES = "() => window.app.graph.nodes.map(node => node.title)"


async def run_titled_graph(page: Page, log: SocketLog) -> dict[str, Any]:
    """Loads the graph, titles its Save Image node, runs it: the image it saved."""
    await page.evaluate("graph => window.app.loadApiJson(graph, 'mine')", GRAPH)
    await page.evaluate(
        "title => { window.app.graph.nodes.find(n => n.type === 'SaveImage').title = title; }", TITLE
    )
    await page.locator("button:has-text('Run')").first.click()
    await until(page, lambda: log.of_type("execution_success"), "the job's execution_success")
    return dict(log.of_type("executed")[0]["data"]["output"]["images"][0])


async def blank_canvas(page: Page) -> None:
    await page.evaluate("() => window.app.graph.clear()")
    assert await page.evaluate(TITLES) == []


async def test_a_result_image_dropped_on_the_canvas_loads_the_workflow_that_made_it(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    async with working_workspace(browser, server, tmp_path) as (_, _, page, log):
        image = await run_titled_graph(page, log[0])
        await blank_canvas(page)
        source = f"/w/alice/api/view?filename={image['filename']}&type=output&subfolder="
        await page.evaluate(DROP, source)
        await page.wait_for_function(f"() => ({TITLES})().includes({TITLE!r})", timeout=30_000)
        types = await page.evaluate("() => window.app.graph.nodes.map(node => node.type)")
        assert sorted(types) == ["EmptyImage", "ImageInvert", "SaveImage"]


async def test_a_past_jobs_workflow_opens_from_the_queue_sidebar_and_deleting_the_job_forgets_it(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    async with working_workspace(browser, server, tmp_path) as (_, _, page, log):
        await run_titled_graph(page, log[0])
        job_id = log[0].of_type("execution_success")[0]["data"]["prompt_id"]
        await blank_canvas(page)
        await page.click(".queue-tab-button")
        task = page.locator(".task-item").first
        await task.locator(".task-time").wait_for(timeout=30_000)
        await task.click(button="right")
        await page.get_by_role("menuitem", name="Load Workflow").click()
        await page.wait_for_function(f"() => ({TITLES})().includes({TITLE!r})", timeout=30_000)
        await task.click(button="right")
        await page.get_by_role("menuitem", name="Delete").click()
        await page.get_by_text("No Tasks Found").wait_for(timeout=30_000)
        history = await page.request.get(f"{server.url}/w/alice/api/history")
        assert job_id not in await history.json()
        await page.reload()
        await page.wait_for_function("() => window.app && window.app.graph", timeout=30_000)
        await page.click(".queue-tab-button")
        await page.get_by_text("No Tasks Found").wait_for(timeout=30_000)


async def test_a_page_reloaded_mid_job_hears_the_rest_of_its_progress_and_its_result(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    """As on ComfyUI, the reloaded tab keeps its client id (the browser's session storage), so the
    job it queued goes on reporting to it: progress, then the image in the queue sidebar."""
    async with working_workspace(browser, server, tmp_path) as (comfy, _, page, log):
        comfy.knobs.progress_steps, comfy.knobs.node_seconds = 20, 6.0  # outlasts a reload
        await page.evaluate("graph => window.app.loadApiJson(graph, 'long')", GRAPH)
        await page.locator("button:has-text('Run')").first.click()
        await until(page, lambda: log[0].of_type("progress"), "the job to run")
        job_id = log[0].of_type("progress")[0]["data"]["prompt_id"]
        await page.reload()
        await page.wait_for_function("() => window.app && window.app.graph", timeout=30_000)
        idle = {"node": None, "prompt_id": job_id}  # what ends the run in the page
        await until(page, lambda: idle in [m["data"] for m in log[0].of_type("executing")], "its end", 40_000)
        messages = log[0].messages
        connects = [i for i, m in enumerate(messages) if m["type"] == "status" and m["data"].get("sid")]
        reconnect = messages[connects[1]]["data"]
        assert reconnect["status"]["exec_info"]["queue_remaining"] == 1, "the job ended during the reload"
        heard = [m for m in messages[connects[1] :] if m["data"].get("prompt_id") == job_id]
        assert [m for m in heard if m["type"] == "progress"], "no progress reached the reloaded page"
        assert [m["type"] for m in heard][-2:] == ["execution_success", "executing"]
        await page.click(".queue-tab-button")
        await page.locator(".task-item .task-time").first.wait_for(timeout=30_000)


async def run_in_mode(page: Page, title: str, mode: str) -> None:
    """Load ``GRAPH`` as ``title``, switch the Run button to ``mode`` ("Instant", "On Change") and run."""
    await page.evaluate("([graph, title]) => window.app.loadApiJson(graph, title)", [GRAPH, title])
    await page.locator(".p-splitbutton-dropdown").first.click()
    await page.get_by_role("menuitem", name=mode).click()
    await page.locator("button:has-text('Run')").first.click()


async def test_run_instant_queues_the_workflow_again_each_time_a_run_ends_until_switched_off(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    """ "Run (Instant)" relies on ``status`` saying her queue is empty after each run, as ComfyUI's does."""
    async with working_workspace(browser, server, tmp_path) as (_, _, page, log):
        await run_in_mode(page, "again", "Instant")

        def runs() -> set[str]:
            return {m["data"]["prompt_id"] for m in log[0].of_type("execution_success")}

        await until(page, lambda: len(runs()) >= 3, "three runs in a row", 40_000)
        await page.locator(".p-splitbutton-dropdown").first.click()
        await page.get_by_role("menuitem", name="Run", exact=True).click()
        history = await page.request.get(f"{server.url}/w/alice/api/history")
        assert runs() <= set(await history.json())


async def test_a_batch_saved_in_folders_shows_in_the_queue_sidebar_and_its_gallery(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    """Three images saved under 'shoot/day 1/': the task shows its preview and count, and the
    gallery it opens shows each image (every request of the page answered)."""
    batch = {
        **GRAPH,
        "1": {**GRAPH["1"], "inputs": {**GRAPH["1"]["inputs"], "batch_size": 3}},
        "3": {**GRAPH["3"], "inputs": {**GRAPH["3"]["inputs"], "filename_prefix": "shoot/day 1/pic"}},
    }
    refused: list[str] = []

    def watch(page: Page) -> None:
        page.on("response", lambda r: r.status < 400 or refused.append(f"{r.status} {r.url}"))

    async with working_workspace(browser, server, tmp_path, watch) as (_, _, page, log):
        await page.evaluate("graph => window.app.loadApiJson(graph, 'batch')", batch)
        await page.locator("button:has-text('Run')").first.click()
        await until(page, lambda: log[0].of_type("execution_success"), "the batch's end")
        images = log[0].of_type("executed")[0]["data"]["output"]["images"]
        assert [(i["filename"], i["subfolder"]) for i in images] == [
            (f"pic_0000{n}_.png", "shoot/day 1") for n in (1, 2, 3)
        ]
        await page.click(".queue-tab-button")
        task = page.locator(".task-item").first
        await task.locator(".task-time").wait_for(timeout=30_000)
        preview = task.locator("img.task-output-image")
        await page.wait_for_function(
            "image => image.complete && image.naturalWidth > 0", arg=await preview.element_handle()
        )
        assert await task.locator(".task-item-details button").inner_text() == "3"
        await preview.click()
        shown = page.locator(".galleria-image")
        await shown.first.wait_for(timeout=30_000)
        widths = await page.evaluate(
            "() => [...document.querySelectorAll('.galleria-image')].map(image => image.naturalWidth)"
        )
        assert widths and all(width == GRAPH["1"]["inputs"]["width"] for width in widths), widths
    assert refused == []


async def test_a_second_tab_lists_the_job_the_first_ran_but_hears_none_of_its_progress(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    """Two tabs of one participant are two ComfyUI clients: the job's events reach the tab that
    queued it, and the other tab's queue sidebar lists the job all the same."""
    async with working_workspace(browser, server, tmp_path) as (comfy, context, page, log):
        comfy.knobs.progress_steps, comfy.knobs.node_seconds = 4, 0.3
        other = await context.new_page()
        log.append(SocketLog(other))
        await other.goto(page.url)
        await other.wait_for_function("() => window.app && window.app.graph", timeout=30_000)
        await other.click(".queue-tab-button")
        await page.evaluate("graph => window.app.loadApiJson(graph, 'tab')", GRAPH)
        await page.locator("button:has-text('Run')").first.click()
        await until(page, lambda: log[0].of_type("execution_success"), "the job's end")
        await other.locator(".task-item .task-time").first.wait_for(timeout=30_000)
        assert log[0].of_type("progress") and not log[1].of_type("progress")
        assert not log[1].of_type("execution_start")
        ids = [await tab.evaluate("() => sessionStorage.getItem('clientId')") for tab in (page, other)]
        assert all(ids) and ids[0] != ids[1]


async def test_run_on_change_queues_the_changed_workflow_once_the_last_run_ended(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    """ "Run (On Change)": a change made while nothing of hers waits is queued at once, as on ComfyUI
    (its frontend reads her queue's size from ``status``)."""
    async with working_workspace(browser, server, tmp_path) as (_, _, page, log):
        await run_in_mode(page, "change", "On Change")

        def runs() -> list[str]:
            ended = log[0].of_type("execution_success")
            return list(dict.fromkeys(m["data"]["prompt_id"] for m in ended))

        await until(page, lambda: len(runs()) == 1, "the first run")
        await until(page, lambda: log[0].messages[-1]["type"] == "executing", "the run's end in the page")
        await page.evaluate(
            """() => {
                const node = window.app.graph.nodes.find(n => n.type === 'EmptyImage');
                node.widgets.find(w => w.name === 'width').value = 48;
                window.app.extensionManager.workflow.activeWorkflow.changeTracker.checkState();
            }"""
        )
        await until(page, lambda: len(runs()) == 2, "the changed workflow's run")
        second = await (await page.request.get(f"{server.url}/w/alice/api/history/{runs()[1]}")).json()
        assert second[runs()[1]]["prompt"][2]["1"]["inputs"]["width"] == 48
        await page.locator(".p-splitbutton-dropdown").first.click()
        await page.get_by_role("menuitem", name="Run", exact=True).click()


async def test_a_waiting_job_deleted_from_the_queue_sidebar_never_runs(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    """Three runs queued while the GPU is busy: the sidebar lists the running one and the two
    waiting; the newest, deleted there, never runs and leaves no history, the others run."""
    queued: list[str] = []

    async def remember(response: Any) -> None:
        if response.url.endswith("/api/prompt") and response.request.method == "POST":
            queued.append((await response.json())["prompt_id"])

    def watch(page: Page) -> None:
        page.on("response", remember)

    async with working_workspace(browser, server, tmp_path, watch) as (comfy, _, page, log):
        comfy.knobs.progress_steps, comfy.knobs.node_seconds = 4, 1.0
        await page.evaluate("graph => window.app.loadApiJson(graph, 'three')", GRAPH)
        for _ in range(3):
            await page.locator("button:has-text('Run')").first.click()
        await until(page, lambda: len(queued) == 3, "three jobs queued")
        await page.click(".queue-tab-button")
        tasks = page.locator(".task-item")
        await until(page, lambda: log[0].of_type("progress"), "the first job to run")
        await page.wait_for_function("() => document.querySelectorAll('.task-item').length === 3")
        await tasks.first.click(button="right")
        await page.get_by_role("menuitem", name="Delete").click()

        def ended() -> set[str]:
            return {m["data"]["prompt_id"] for m in log[0].of_type("execution_success")}

        await until(page, lambda: len(ended()) == 2, "the two kept jobs to run", 40_000)
        assert ended() == set(queued[:2])
        left = await (await page.request.get(f"{server.url}/w/alice/api/queue")).json()
        assert left == {"queue_running": [], "queue_pending": []}, "the deleted job is still in line"
        history = await (await page.request.get(f"{server.url}/w/alice/api/history")).json()
        assert queued[2] not in history and set(queued[:2]) <= set(history)
