"""The organizer's admin page in the real browser: it shows the job and the worker, and its buttons act."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser
from redis.asyncio import Redis

from devkit.doubles.comfyui_nodes import catalogue
from services.protocol.jobs import JobError
from services.protocol.workers import Failure, Lease, ModelsProgress, WorkerCapabilities, WorkerRegistration
from services.queue_manager.records import now_ms
from services.queue_manager.store import Store
from tests.support.browser import admin_page
from tests.support.jobs import GRAPH
from tests.support.queue_manager_app import (
    POOL,
    WORKER_AUTH,
    LiveServer,
    live_server,
    login,
    register_worker,
    settings_for,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
LATER = 3_600_000  # an hour in ms: every lease granted now has expired by then


STUCK = "ComfyUI still runs a prompt 60 s after it was interrupted: restart ComfyUI at http://10.0.0.5:8188"


async def test_the_admin_sees_the_job_and_the_worker_and_can_cancel(
    browser: Browser, server: LiveServer, artifacts_dir: Path
) -> None:
    with httpx.Client(base_url=server.url) as client:
        register_worker(client, catalogue([]), worker_id="verda-h100-1")
        syncing = ModelsProgress(
            state="syncing", files_done=3, files_total=20, bytes_done=300 << 20, bytes_total=2000 << 20,
            rate_bytes_per_s=50 << 20, eta_seconds=34,
        )  # fmt: skip
        caps = WorkerCapabilities(pool=POOL, provider="verda", models_sync=syncing)
        body = WorkerRegistration(worker_id="verda-h100-2", capabilities=caps).model_dump(mode="json")
        client.post("/api/workers/register", json=body, headers=WORKER_AUTH)
        stuck = WorkerCapabilities(pool=POOL, provider="local", problem=STUCK)
        body = WorkerRegistration(worker_id="studio-1", capabilities=stuck).model_dump(mode="json")
        client.post("/api/workers/register", json=body, headers=WORKER_AUTH).raise_for_status()
        reply = login(client, "alice").post("/w/alice/api/prompt", json={"prompt": GRAPH, "client_id": "c"})
        job_id = reply.json()["prompt_id"]
    context, page = await admin_page(browser, server)
    queue = page.locator("#queue")
    await queue.get_by_text(job_id.split("-")[0]).wait_for(timeout=30_000)
    assert "alice" in await queue.inner_text()
    await page.locator("#workers").get_by_text("verda-h100-1").wait_for(timeout=30_000)
    await page.locator("#workers").get_by_text("3/20 files, 300/2000 MB, 50 MB/s, 34 s left").wait_for()
    await page.locator("#workers tr", has_text="studio-1").get_by_text(STUCK).wait_for()  # and its fix
    await page.locator("#participants").get_by_text("alice").wait_for()
    await page.locator("#chart-depth polyline").wait_for(state="attached")
    await page.screenshot(path=artifacts_dir / "admin-page.png")
    await queue.get_by_role("button", name="Cancel").click()
    await queue.get_by_text("The queue is empty.").wait_for(timeout=30_000)
    with httpx.Client(base_url=server.url) as client:
        assert login(client, "alice").get(f"/api/jobs/{job_id}").json()["state"] == "cancelled"
    await page.click("#pause")
    await page.get_by_text("Dispatch is paused").wait_for(timeout=30_000)
    with httpx.Client(base_url=server.url) as alices_laptop:
        login(alices_laptop, "alice")
        participants = page.locator("#participants")
        row = participants.locator("tr", has_text="alice")
        await row.get_by_role("button", name="Log out everywhere").click()
        await page.get_by_text("logged out everywhere").wait_for(timeout=30_000)
        assert alices_laptop.get("/api/auth/me").status_code == 401
    await context.close()


async def test_the_page_goes_on_refreshing_while_the_admin_types_a_priority(
    browser: Browser, server: LiveServer
) -> None:
    """The section with the field she types in waits for her; the queue beside it does not."""
    with httpx.Client(base_url=server.url) as client:
        login(client, "alice")
    context, page = await admin_page(browser, server)
    field = page.locator('#participants [data-user-priority="alice"]')
    await field.fill("7")  # focused, and left so while she looks at the queue
    with httpx.Client(base_url=server.url) as client:
        reply = login(client, "bob").post("/w/bob/api/prompt", json={"prompt": GRAPH, "client_id": "c"})
        job_id = reply.json()["prompt_id"]
    await page.locator("#queue").get_by_text(job_id.split("-")[0]).wait_for(timeout=30_000)
    assert await field.evaluate("input => input === document.activeElement")
    assert await field.input_value() == "7", "her typing was redrawn away"
    await context.close()


async def test_the_login_page_sends_nobody_to_another_site(browser: Browser, server: LiveServer) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    for trick in ("/\\evil.example/", "//evil.example/", "https://evil.example/"):
        await page.goto(f"{server.url}/w/login?next={trick}")
        await page.fill("#username", "alice")
        await page.fill("#password", "alice-pw")
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{server.url}/w/alice/", timeout=30_000)
    await context.close()


async def test_the_admin_sees_a_queued_job_held_for_a_busy_worker_and_the_pools_count(
    browser: Browser, server: LiveServer
) -> None:
    with httpx.Client(base_url=server.url) as client:
        register_worker(client, catalogue([]), worker_id="verda-h100-1")
        alice = login(client, "alice")
        jobs = [
            alice.post("/w/alice/api/prompt", json={"prompt": GRAPH, "client_id": "c"}).json()["prompt_id"]
            for _ in range(2)
        ]
        claimed = client.post("/api/workers/verda-h100-1/claim?hold_next=1", headers=WORKER_AUTH)
        assert claimed.json()["held"]["job"]["id"] == jobs[1]  # leased the first, held the second
    context, page = await admin_page(browser, server)
    held_row = page.locator("#queue tr", has_text=jobs[1].split("-")[0])
    await held_row.get_by_text("held for verda-h100-1").wait_for(timeout=30_000)
    assert "queued" in await held_row.inner_text()
    running_row = page.locator("#queue tr", has_text=jobs[0].split("-")[0])
    assert "held for" not in await running_row.inner_text()
    worker_row = page.locator("#workers tr", has_text="verda-h100-1")
    await worker_row.get_by_text(jobs[1].split("-")[0]).wait_for(timeout=30_000)  # the job it holds next
    pool_row = page.locator("#gpu-pools tbody tr", has_text=POOL)
    assert (await pool_row.locator("td").last.inner_text()) == "1"
    await context.close()


HOSTILE = "<img src=x id=pwned onerror=\"document.title='pwned'\">"


async def test_what_a_leaked_worker_token_sends_shows_as_text_on_the_admin_page(
    browser: Browser, server: LiveServer
) -> None:
    """A GPU name, a models message and an offered catalogue's node class names are the worker's
    words: they show as text, never as markup (and the browser fixture fails on any script the
    page's CSP had to block)."""
    with httpx.Client(base_url=server.url) as client:
        first = catalogue([])
        register_worker(client, first, worker_id="w1", digest="cat-v1")
        caps = WorkerCapabilities(
            pool=POOL,
            provider="verda",
            gpu=HOSTILE,
            models_sync=ModelsProgress(state="failed", message=HOSTILE),
            problem=HOSTILE,
        )
        body = WorkerRegistration(worker_id="w2", capabilities=caps).model_dump(mode="json")
        client.post("/api/workers/register", json=body, headers=WORKER_AUTH).raise_for_status()
        offer = {HOSTILE: next(iter(first.values()))}  # removes every node: waits for the admin
        register_worker(client, offer, worker_id="w3", digest="cat-v2")
    context, page = await admin_page(browser, server)
    for where in ("#workers", "#catalogues"):
        await page.locator(where).get_by_text(HOSTILE).first.wait_for(timeout=30_000)
    assert await page.locator("#pwned").count() == 0
    assert await page.title() != "pwned"
    await context.close()


async def test_drain_answers_at_once_with_what_still_runs_and_a_stale_requeue_says_why(
    browser: Browser, redis_url: str, tmp_path: Path
) -> None:
    """The Drain button pauses and reports while a job runs (it must not wait for the job); Requeue
    on a dead letter someone requeued meanwhile shows the queue manager's reason, and the job
    stays in line once."""
    settings = settings_for(redis_url, lease_seconds=120.0, retry_backoff_seconds=0)
    with live_server(settings, tmp_path / "files") as server:
        with httpx.Client(base_url=server.url) as client:
            for worker in ("w1", "lost-0", "lost-1", "lost-2"):
                register_worker(client, catalogue([]), worker_id=worker)
            alice, body = login(client, "alice"), {"prompt": GRAPH, "client_id": "c"}
            jobs = [alice.post("/w/alice/api/prompt", json=body).json()["prompt_id"] for _ in range(2)]
        redis = Redis.from_url(redis_url, decode_responses=True)
        store = Store(redis, settings)
        for attempt in range(settings.max_attempts):  # the first job's three workers vanish mid-run
            assert await store.claim(f"lost-{attempt}", POOL) is not None
            await store.reap(now=now_ms() + LATER)
            await store.reap(now=now_ms() + LATER)
        assert await store.claim("w1", POOL) is not None  # the second one runs
        context, page = await admin_page(browser, server)
        requeue = page.locator("#dead").get_by_role("button", name="Requeue")
        await requeue.wait_for(timeout=30_000)

        async with page.expect_response(lambda r: "/api/admin/drain" in r.url, timeout=30_000) as drained:
            await page.click("#drain")
        assert (await (await drained.value).json())["running"] == 1
        await page.get_by_text("1 running, 0 waiting").first.wait_for(timeout=30_000)

        await store.requeue_dead(jobs[0])  # another admin tab, before this page redrew
        await requeue.click()
        await page.locator("#error").get_by_text("not a dead letter").wait_for(timeout=30_000)
        assert [job.id for job in (await store.overview()).queued] == [jobs[0]]
        await context.close()
        await redis.aclose()


async def test_a_dead_letters_error_shows_as_text_on_the_admin_page(
    browser: Browser, redis_url: str, tmp_path: Path
) -> None:
    """A job's error is the worker's words (ComfyUI's message often quotes the participant's own
    input): on the dead letters' line its type and message are text, never markup."""
    settings = settings_for(redis_url, max_attempts=1)
    with live_server(settings, tmp_path / "files") as server:
        with httpx.Client(base_url=server.url) as client:
            register_worker(client, catalogue([]), worker_id="w1")
            alice = login(client, "alice")
            alice.post("/w/alice/api/prompt", json={"prompt": GRAPH, "client_id": "c"}).raise_for_status()
            lease = Lease.model_validate(client.post("/api/workers/w1/claim", headers=WORKER_AUTH).json())
            error = JobError(type=HOSTILE, message=f'"{HOSTILE}', retryable=True)
            failure = Failure(token=lease.token, error=error).model_dump(mode="json")
            reply = client.post(f"/api/leases/{lease.job.id}/fail", json=failure, headers=WORKER_AUTH)
            assert reply.status_code == 204, reply.text
        context, page = await admin_page(browser, server)
        dead = page.locator("#dead")
        await dead.get_by_text(HOSTILE).wait_for(timeout=30_000)
        assert await dead.locator("span[title]").get_attribute("title") == error.message  # whole, as text
        assert await page.locator("#pwned").count() == 0
        assert await page.title() != "pwned"
        await context.close()


def keeper(redis_url: str, files: Path, step: str) -> subprocess.CompletedProcess[str]:
    """The destroy's save or the up's load (``cli save`` / ``cli load``), as its container runs it."""
    env = {
        **os.environ,
        "QM_ENV": "development",
        "QM_REDIS_URL": redis_url,
        "QM_FILES_URL": files.as_uri(),
        "QM_PARTICIPANTS": json.dumps({user: f"{user}-pw" for user in ("alice", "bob")}),
        "QM_WORKER_TOKENS": json.dumps({POOL: f"{POOL}-token"}),
    }
    command = [sys.executable, "-m", "services.queue_manager.cli", step]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done


async def test_the_admin_sees_the_jobs_that_run_again_after_the_night(
    browser: Browser, redis_url: str, tmp_path: Path
) -> None:
    """A job still running when the evening's save is taken runs again the next morning: the
    destroy's output names it, and so does the admin page, that evening (it will run again) and the
    next morning (carried over, first in line), with its owner and last night's worker; its owner
    sees it queued. Before the morning's restore ran, the page says so rather than that nothing was
    carried over."""
    files, settings = tmp_path / "files", settings_for(redis_url, lease_seconds=600)
    with live_server(settings, files) as server:
        with httpx.Client(base_url=server.url, timeout=20) as client:
            register_worker(client, catalogue([]), worker_id="verda-h100-1")
            alice = login(client, "alice")
            night = alice.post("/w/alice/api/prompt", json={"prompt": GRAPH, "client_id": "c"}).json()[
                "prompt_id"
            ]
            claimed = client.post("/api/workers/verda-h100-1/claim?wait=5", headers=WORKER_AUTH)
            assert claimed.json()["job"]["id"] == night
            alice.post("/w/alice/api/prompt", json={"prompt": GRAPH, "client_id": "c"}).raise_for_status()
        assert f"{night} of alice on worker verda-h100-1" in keeper(redis_url, files, "save").stdout
        context, page = await admin_page(browser, server)
        evening = page.locator("#night")
        await evening.get_by_text("runs again from the start tomorrow morning").wait_for(timeout=30_000)
        row = evening.locator("tr", has_text=night.split("-")[0])
        assert (await row.locator("td").all_inner_texts())[1:] == ["alice", "verda-h100-1", "leased"]
        assert await evening.locator("tbody tr").count() == 1  # the job waiting in line is no such job
        await context.close()
    wiped = Redis.from_url(redis_url)
    await wiped.flushall()  # the destroy deletes Redis and its volume
    await wiped.aclose()
    with live_server(settings_for(redis_url, lease_seconds=600, restore_first=True), files) as server:
        context, page = await admin_page(browser, server)  # she looks before the up's restore step ran
        morning = page.locator("#night")
        await morning.get_by_text("The morning's restore has not run yet").wait_for(timeout=30_000)
        keeper(redis_url, files, "load")
        await morning.get_by_text("Carried over from last night").wait_for(timeout=30_000)
        row = morning.locator("tr", has_text=night.split("-")[0])
        assert (await row.locator("td").all_inner_texts())[1:] == ["alice", "verda-h100-1", "queued"]
        await context.close()
        with httpx.Client(base_url=server.url, timeout=20) as client:
            pending = login(client, "alice").get("/w/alice/api/queue").json()["queue_pending"]
        assert pending[0][1] == night
