"""A tab whose socket drops while its job runs (a network blip, a laptop lid) reconnects as on
ComfyUI: it keeps its client id, is told the node that runs, hears the rest of the job, and shows
the result on the canvas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser

from tests.support.browser import until, working_workspace
from tests.support.queue_manager_app import LiveServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

GRAPH: dict[str, Any] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 56, "height": 40, "batch_size": 1, "color": 77}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "blip"}},
}
SHOWN = "() => (window.app.nodeOutputs?.['3']?.images ?? []).map(image => image.filename)"


async def test_a_socket_dropped_mid_job_reconnects_and_the_page_shows_the_jobs_result(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    async with working_workspace(browser, server, tmp_path) as (comfy, _, page, log):
        comfy.knobs.progress_steps, comfy.knobs.node_seconds = 10, 2.0
        await page.evaluate("graph => window.app.loadApiJson(graph, 'blip')", GRAPH)
        await page.locator("button:has-text('Run')").first.click()
        await until(page, lambda: log[0].of_type("progress"), "the job to run")
        job_id = log[0].of_type("progress")[0]["data"]["prompt_id"]
        client_id = await page.evaluate("() => window.app.api.clientId")
        await page.evaluate("() => window.app.api.socket.close()")  # as a dropped connection does

        def statuses() -> list[int]:
            return [
                i for i, m in enumerate(log[0].messages) if m["type"] == "status" and m["data"].get("sid")
            ]

        await until(page, lambda: len(statuses()) == 2, "the socket to reconnect")
        messages = log[0].messages
        reconnect = messages[statuses()[1]]
        assert reconnect["data"]["sid"] == client_id, "the tab came back as another client"
        assert reconnect["data"]["status"]["exec_info"]["queue_remaining"] == 1, (
            "the job ended during the blip"
        )
        await until(page, lambda: len(log[0].messages) > statuses()[1] + 1, "a message after the status")
        told = log[0].messages[statuses()[1] + 1]  # as ComfyUI tells the tab whose job runs: its running node
        assert told["type"] == "executing" and told["data"]["node"] in GRAPH, told
        idle = {"node": None, "prompt_id": job_id}
        await until(
            page, lambda: idle in [m["data"] for m in log[0].of_type("executing")], "the job's end", 40_000
        )
        after = [m for m in log[0].messages[statuses()[1] :] if m["data"].get("prompt_id") == job_id]
        assert [m for m in after if m["type"] == "progress"], "no progress reached the reconnected tab"
        assert [m["type"] for m in after][-2:] == ["execution_success", "executing"]
        saved = next(m for m in after if m["type"] == "executed")["data"]["output"]["images"][0]["filename"]
        await page.wait_for_function(f"() => ({SHOWN})().includes({saved!r})", timeout=30_000)
        assert await page.evaluate("() => window.app.api.clientId") == client_id
