"""What a GPU sends a participant's page is shown as text, never as markup: a fake worker on a
leaked pool token (or a hostile custom node) sends HTML in the texts the stock frontend renders,
and the real browser must neither build elements from it nor load anything it names."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, Request

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


async def run_on_a_fake_worker(
    browser: Browser, server: LiveServer, probed: list[str], report: Callable[[Lease], JobEvent | Failure]
) -> tuple[BrowserContext, Page]:
    """Alice runs a graph from her page (``probed`` collects what it asks for of the probe); a fake
    worker claims the job and sends ``report`` of its lease: one event after the job's start, or its
    failure."""
    context, page = await logged_in_page(
        browser, server, "alice", lambda p: p.on("request", lambda r: _probe(r, probed))
    )
    await page.evaluate("graph => window.app.loadApiJson(graph, 'hostile')", GRAPH)
    await page.locator("button:has-text('Run')").first.click()
    with httpx.Client(base_url=server.url, headers=WORKER_AUTH) as worker:
        lease = Lease.model_validate(worker.post("/api/workers/w1/claim", params={"wait": 10}).json())
        job_id, sent = lease.job.id, report(lease)
        if isinstance(sent, Failure):
            path, body = f"/api/leases/{job_id}/fail", sent.model_dump(mode="json")
        else:
            events = [
                JobEvent(type="execution_start", data={"prompt_id": job_id, "timestamp": 1}),
                JobEvent(type="executing", data={"node": "1", "display_node": "1", "prompt_id": job_id}),
                sent,
            ]
            path = f"/api/leases/{job_id}/events"
            body = EventBatch(token=lease.token, events=events).model_dump(mode="json")
        worker.post(path, json=body).raise_for_status()
    await page.wait_for_function(SHOWN, arg=PROBE, timeout=30_000)
    return context, page


async def no_markup_built(page: Page) -> None:
    assert await page.evaluate("() => window.xssRan") is None
    assert await page.evaluate(f"() => document.querySelector('#{PROBE}, img[src*=\"{PROBE}\"]')") is None


@pytest.mark.parametrize("kind", sorted(SHOWING))
async def test_a_workers_text_is_shown_as_text(browser: Browser, server: LiveServer, kind: str) -> None:
    with httpx.Client(base_url=server.url) as client:
        register_worker(client, catalogue([]))
    probed: list[str] = []

    def event(lease: Lease) -> JobEvent:
        return JobEvent(type=kind, data={**SHOWING[kind], "prompt_id": lease.job.id})

    context, page = await run_on_a_fake_worker(browser, server, probed, event)
    await no_markup_built(page)
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

    def failed(lease: Lease) -> Failure:
        return Failure(token=lease.token, error=FAILED)

    context, page = await run_on_a_fake_worker(browser, server, probed, failed)
    admin, on_admin = await admin_page(browser, server)
    on_admin.on("request", lambda r: _probe(r, probed))
    await on_admin.reload()
    await on_admin.wait_for_function(SHOWN, arg=PROBE, timeout=30_000)
    for shown in (page, on_admin):
        await no_markup_built(shown)
    assert probed == []
    await admin.close()
    await context.close()


PHISH = (
    "[Session expired: log in again](https://evil.example/login) <form id=evil><input name=password></form>"
)


async def test_a_node_description_a_leaked_token_adds_shows_as_text(
    browser: Browser, server: LiveServer
) -> None:
    """A version that only adds a node goes live without the admin; the frontend renders a node's
    description as markdown (links and forms kept) in the node library's preview, so a leaked pool
    token put a fake 'log in again' link and a password box there. It shows as text."""
    nodes = catalogue([])
    with httpx.Client(base_url=server.url) as client:
        register_worker(client, nodes, digest="cat-v1")
        nodes["Helper"] = {
            **nodes["ImageInvert"],
            "name": "Helper",
            "display_name": "Helper",
            "description": PHISH,
        }
        register_worker(client, nodes, worker_id="w2", digest="cat-v2")  # only adds: goes live
    context, page = await logged_in_page(browser, server, "alice")
    await page.click(".node-library-tab-button")
    await page.locator(".side-bar-panel input").first.fill("Helper")
    found = page.locator(".side-bar-panel").get_by_text("Helper", exact=True)
    await found.first.wait_for(timeout=30_000)
    await found.first.hover()
    await page.get_by_text("Session expired: log in again", exact=False).first.wait_for(timeout=30_000)
    assert await page.evaluate("() => document.querySelector('a[href*=\"evil.example\"], #evil')") is None
    await context.close()


async def test_a_version_with_markup_offers_the_admin_no_approve_button(
    browser: Browser, server: LiveServer
) -> None:
    """The CSP stops scripts, not elements: a version whose new node's display name is a fake login
    link stays out of every workspace. The admin page lists it with its markup as text and offers
    no Approve button for it (the API refuses the approval with 409 anyway)."""
    nodes = catalogue([])
    with httpx.Client(base_url=server.url) as client:
        register_worker(client, nodes, digest="cat-v1")
        nodes["Phish"] = {**nodes["ImageInvert"], "name": "Phish", "display_name": MARKUP}
        register_worker(client, nodes, worker_id="w2", digest="cat-marked")
    admin, on_admin = await admin_page(browser, server)
    row = on_admin.locator("#catalogues tr", has_text="cat-marked")
    await row.get_by_text("cannot be approved").wait_for(timeout=30_000)
    assert await row.locator("button").count() == 0
    await no_markup_built(on_admin)
    await admin.close()
    context, page = await logged_in_page(browser, server, "alice")
    assert await page.evaluate("() => 'Phish' in window.LiteGraph.registered_node_types") is False
    await context.close()
