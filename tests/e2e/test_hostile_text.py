"""What a GPU sends a participant's page is shown as text, never as markup: a fake worker on a
leaked pool token (or a hostile custom node) sends HTML in the texts the stock frontend renders,
and the real browser must neither build elements from it nor load anything it names."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Request

from devkit.doubles.comfyui_nodes import catalogue
from services.protocol.jobs import JobError
from services.protocol.workers import (
    EventBatch,
    Failure,
    JobEvent,
    Lease,
    ModelsProgress,
    WorkerCapabilities,
    WorkerRegistration,
)
from tests.support.browser import admin_page, logged_in_page
from tests.support.queue_manager_app import POOL, WORKER_AUTH, LiveServer, register_worker

pytestmark = [pytest.mark.browser, pytest.mark.slow]

GRAPH: dict[str, Any] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
}
PROBE = "xss-probe"
MARKUP = f'<img src="/{PROBE}.png" onerror="window.xssRan=1"><b id="{PROBE}">bold</b>'
SHOWN = """probe => {
    const built = document.querySelector(`img[src*="${probe}"], #${probe}`) !== null;
    const asText = [...document.querySelectorAll("body *")].some(
        (e) => e.children.length === 0 && e.textContent.includes(`<b id="${probe}">`));
    return built || asText;
}"""


CHAT = json.dumps([{"prompt": "hello", "response": MARKUP, "response_id": "r1"}])
SHOWING = {
    "progress_text": {"nodeId": "1", "text": MARKUP},  # a node's progress text
    "display_component": {"node_id": "1", "component": "ChatHistoryWidget", "props": {"history": CHAT}},
}


@pytest.mark.parametrize("kind", sorted(SHOWING))
async def test_a_workers_text_is_shown_as_text(browser: Browser, server: LiveServer, kind: str) -> None:
    with httpx.Client(base_url=server.url) as client:
        register_worker(client, catalogue([]))
    probed: list[str] = []
    context, page = await logged_in_page(
        browser, server, "alice", lambda p: p.on("request", lambda r: _probe(r, probed))
    )
    await page.evaluate("graph => window.app.loadApiJson(graph, 'hostile')", GRAPH)
    await page.locator("button:has-text('Run')").first.click()
    with httpx.Client(base_url=server.url, headers=WORKER_AUTH) as worker:
        claimed = worker.post("/api/workers/w1/claim", params={"wait": 10})
        lease = Lease.model_validate(claimed.json())
        job_id = lease.job.id
        events = [
            JobEvent(type="execution_start", data={"prompt_id": job_id, "timestamp": 1}),
            JobEvent(type="executing", data={"node": "1", "display_node": "1", "prompt_id": job_id}),
            JobEvent(type=kind, data={**SHOWING[kind], "prompt_id": job_id}),
        ]
        batch = EventBatch(token=lease.token, events=events)
        worker.post(f"/api/leases/{job_id}/events", json=batch.model_dump(mode="json")).raise_for_status()
    await page.wait_for_function(SHOWN, arg=PROBE, timeout=15_000)
    assert await page.evaluate("() => window.xssRan") is None
    assert await page.evaluate(f"() => document.querySelector('#{PROBE}, img[src*=\"{PROBE}\"]')") is None
    assert probed == []
    await context.close()


def _probe(request: Request, probed: list[str]) -> None:
    if PROBE in request.url:
        probed.append(request.url)


FAILED = JobError(
    type=MARKUP,
    message=MARKUP,
    node_id="1",
    node_type="EmptyImage",
    comfy={"exception_message": MARKUP, "exception_type": MARKUP, "traceback": [MARKUP], "node_id": "1",
           "node_type": "EmptyImage", "executed": [], "current_inputs": {}, "current_outputs": {}},
)  # fmt: skip


async def test_a_workers_error_is_shown_as_text_to_the_participant_and_the_admin(
    browser: Browser, server: LiveServer
) -> None:
    """A failure whose every text is markup: her error dialog and the admin's dead letters show it
    as text; a worker whose GPU name and models-sync message are markup, likewise on the admin page."""
    with httpx.Client(base_url=server.url) as client:
        register_worker(client, catalogue([]))
        sync = ModelsProgress(state="failed", files_total=1, message=MARKUP)
        caps = WorkerCapabilities(pool=POOL, provider="verda", gpu=MARKUP, models_sync=sync)
        body = WorkerRegistration(worker_id="w-markup", capabilities=caps).model_dump(mode="json")
        client.post("/api/workers/register", json=body, headers=WORKER_AUTH).raise_for_status()
    probed: list[str] = []
    context, page = await logged_in_page(
        browser, server, "alice", lambda p: p.on("request", lambda r: _probe(r, probed))
    )
    await page.evaluate("graph => window.app.loadApiJson(graph, 'hostile')", GRAPH)
    await page.locator("button:has-text('Run')").first.click()
    with httpx.Client(base_url=server.url, headers=WORKER_AUTH) as worker:
        lease = Lease.model_validate(worker.post("/api/workers/w1/claim", params={"wait": 10}).json())
        failure = Failure(token=lease.token, error=FAILED)
        worker.post(
            f"/api/leases/{lease.job.id}/fail", json=failure.model_dump(mode="json")
        ).raise_for_status()
    await page.wait_for_function(SHOWN, arg=PROBE, timeout=15_000)
    admin, on_admin = await admin_page(browser, server)
    on_admin.on("request", lambda r: _probe(r, probed))
    await on_admin.reload()
    await on_admin.wait_for_function(SHOWN, arg=PROBE, timeout=15_000)
    for shown in (page, on_admin):
        assert await shown.evaluate("() => window.xssRan") is None
        assert (
            await shown.evaluate(f"() => document.querySelector('#{PROBE}, img[src*=\"{PROBE}\"]')") is None
        )
    assert probed == []
    await admin.close()
    await context.close()
