"""The queue's own controls as on ComfyUI: Clear Pending Tasks, deleting the running task (an
interrupt), Delete all tasks (the queue and the history), and Queue Front (Ctrl+Shift+Enter)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, Response

from tests.support.browser import SocketLog, until, working_workspace
from tests.support.queue_manager_app import LiveServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

GRAPH: dict[str, Any] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 9}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "controls"}},
}
SET_WIDTH = """width => {
    const node = window.app.graph.nodes.find(n => n.type === 'EmptyImage');
    node.widgets.find(w => w.name === 'width').value = width;
}"""


class Queued:
    """The ids the page's ``POST /prompt`` got, in order."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    async def heard(self, response: Response) -> None:
        if response.url.endswith("/api/prompt") and response.request.method == "POST":
            self.ids.append((await response.json())["prompt_id"])

    def watch(self, page: Page) -> None:
        page.on("response", self.heard)


def ids_of(log: SocketLog, kind: str) -> list[str]:
    return list(dict.fromkeys(m["data"]["prompt_id"] for m in log.of_type(kind)))


async def queue_while_busy(page: Page, log: SocketLog, queued: Queued, runs: int = 3) -> None:
    """Press Run ``runs`` times: once the first of them runs, the rest wait and the queue sidebar
    lists them all (and her earlier tasks)."""
    before = len(queued.ids)
    for _ in range(runs):
        await page.locator("button:has-text('Run')").first.click()
    await until(page, lambda: len(queued.ids) == before + runs, f"{runs} jobs queued")
    await until(
        page, lambda: queued.ids[before] in ids_of(log, "execution_start"), "the first of them to run"
    )
    await page.click(".queue-tab-button")
    await page.wait_for_function(
        "n => document.querySelectorAll('.task-item').length === n", arg=before + runs
    )


async def test_clear_pending_tasks_keeps_the_running_job_and_deleting_that_task_interrupts_it(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    queued = Queued()
    async with working_workspace(browser, server, tmp_path, queued.watch) as (comfy, _, page, log):
        comfy.knobs.progress_steps, comfy.knobs.node_seconds = 20, 2.0
        await page.evaluate("graph => window.app.loadApiJson(graph, 'three')", GRAPH)
        await queue_while_busy(page, log[0], queued)
        await page.locator(".side-bar-panel button:has(.pi-stop)").click()  # Clear Pending Tasks
        await page.wait_for_function("() => document.querySelectorAll('.task-item').length === 1")
        left = await (await page.request.get(f"{server.url}/w/alice/api/queue")).json()
        assert [row[1] for row in left["queue_running"]] == queued.ids[:1] and left["queue_pending"] == []
        await page.locator(".task-item").first.click(button="right")
        await page.get_by_role("menuitem", name="Delete").click()
        await until(page, lambda: log[0].of_type("execution_interrupted"), "the running job's interruption")
        assert ids_of(log[0], "execution_interrupted") == queued.ids[:1]
        assert ids_of(log[0], "execution_start") == queued.ids[:1], "a cleared job ran"
        history = await (await page.request.get(f"{server.url}/w/alice/api/history")).json()
        assert not set(queued.ids[1:]) & set(history)


async def test_delete_all_tasks_empties_her_queue_and_history_for_good(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    """ComfyUI's trash button clears the waiting jobs and the history; the running job goes on and
    is the only task listed once it ended, after a reload too."""
    queued = Queued()
    async with working_workspace(browser, server, tmp_path, queued.watch) as (comfy, _, page, log):
        await page.evaluate("graph => window.app.loadApiJson(graph, 'before')", GRAPH)
        await page.locator("button:has-text('Run')").first.click()
        await until(page, lambda: log[0].of_type("execution_success"), "an earlier job's end")
        comfy.knobs.progress_steps, comfy.knobs.node_seconds = 10, 1.0
        await page.evaluate(SET_WIDTH, 80)
        await queue_while_busy(page, log[0], queued)
        await page.locator(".side-bar-panel .clear-all-button").click()
        await page.get_by_role("button", name="Delete").click()  # the confirmation
        running = queued.ids[1]
        await until(page, lambda: running in ids_of(log[0], "execution_success"), "the running job's end")
        history = await (await page.request.get(f"{server.url}/w/alice/api/history")).json()
        assert list(history) == [running], "a cleared job is in the history"
        assert ids_of(log[0], "execution_start") == queued.ids[:2], "a cleared job ran"
        await page.reload()
        await page.wait_for_function("() => window.app && window.app.graph", timeout=30_000)
        await page.click(".queue-tab-button")
        await page.wait_for_function("() => document.querySelectorAll('.task-item').length === 1")


async def test_queue_front_runs_before_her_jobs_already_waiting(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    queued = Queued()
    async with working_workspace(browser, server, tmp_path, queued.watch) as (comfy, _, page, log):
        comfy.knobs.progress_steps, comfy.knobs.node_seconds = 10, 1.0
        await page.evaluate("graph => window.app.loadApiJson(graph, 'three')", GRAPH)
        await queue_while_busy(page, log[0], queued)
        await page.evaluate(SET_WIDTH, 48)
        await page.mouse.click(700, 600)  # the canvas has the keyboard
        await page.keyboard.press("Control+Shift+Enter")
        await until(page, lambda: len(queued.ids) == 4, "the job queued at the front")
        front = queued.ids[3]
        await until(
            page, lambda: len(ids_of(log[0], "execution_success")) == 4, "the four jobs' ends", 60_000
        )
        assert ids_of(log[0], "execution_start") == [queued.ids[0], front, *queued.ids[1:3]]
        ran = await (await page.request.get(f"{server.url}/w/alice/api/history/{front}")).json()
        assert ran[front]["prompt"][2]["1"]["inputs"]["width"] == 48
