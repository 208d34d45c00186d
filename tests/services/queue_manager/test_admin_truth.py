"""What the admin page and Prometheus say equals what happened: two real worker agents on two
ComfyUI doubles run a known set of jobs through the real queue manager, and every figure (jobs, GPU
time, uploads, idle gaps, worker states, queue, leases, jobs per minute, cost) is compared with the
doubles' own record of each run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from devkit.doubles.comfyui import ComfyUIDouble
from tests.support.jobs import finished, graph, participant, submit, submit_running, until
from tests.support.queue_manager_app import (
    ADMIN,
    ADMIN_PASSWORD,
    POOL,
    WORKER_AUTH,
    LiveServer,
    build_app,
    live_server,
    register_worker,
    settings_for,
)
from tests.support.worker_agent import pull_worker, worker_settings

pytestmark = pytest.mark.slow
NODE_SECONDS = 0.1  # each of a job's three nodes, in the doubles


def sample(metrics: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", metrics, re.M)
    return float(found.group(1)) if found else 0.0


def ran_seconds(*doubles: ComfyUIDouble) -> dict[str, float]:
    """Each prompt's run as the double that ran it measured it (start to end)."""
    return {pid: end - start for d in doubles for pid, (start, end) in d.state.timings.items()}


async def test_the_admin_figures_equal_what_two_workers_ran(
    comfy: ComfyUIDouble, redis_url: str, tmp_path: Path
) -> None:
    settings = settings_for(redis_url, lease_seconds=3.0, reap_interval_seconds=0.1, gpu_prices={POOL: 3.6})
    with ComfyUIDouble(tmp_path / "comfy-b") as other, live_server(settings, tmp_path / "files") as qm:
        for double in (comfy, other):
            double.knobs.node_seconds = NODE_SECONDS
        admin = httpx.AsyncClient(base_url=qm.url, auth=(ADMIN, ADMIN_PASSWORD), timeout=10)
        before = (await admin.get("/metrics")).text  # the process's registry outlives one test
        async with contextlib.AsyncExitStack() as stack:
            for name, double in (("w-a", comfy), ("w-b", other)):
                config = worker_settings(double, qm.url, tmp_path, worker_id=name)
                await stack.enter_async_context(pull_worker(config))
            users = [participant(qm, user) for user in ("alice", "bob")]
            jobs = [await submit(users[i % 2], graph(color=i)) for i in range(8)]
            done = [await finished(users[i % 2], job, timeout=30) for i, job in enumerate(jobs)]
            await asyncio.gather(*(user.aclose() for user in users))
            stats = (await admin.get("/admin/api/stats")).json()
            metrics = (await admin.get("/metrics")).text
            workers = (await admin.get("/api/admin/workers")).json()
            overview = (await admin.get("/api/admin/queue")).json()
        await admin.aclose()

    assert [job.state for job in done] == ["succeeded"] * 8
    ran = ran_seconds(comfy, other)
    assert set(jobs) <= set(ran)
    truth = sum(ran[job] for job in jobs)
    gpu = stats["gpu_by_pool"][POOL]
    assert gpu["jobs"] == 8
    busy = sample(metrics, f'qm_gpu_busy_seconds_total{{pool="{POOL}"}}')
    busy -= sample(before, f'qm_gpu_busy_seconds_total{{pool="{POOL}"}}')
    # The worker's clock, its submit to ComfyUI's end: at least what the doubles ran, at most the time
    # the queue manager saw each job held (start to completion, uploads included), however loaded the
    # machine is (a fixed allowance per job failed under a load of 15 on two cores).
    held = sum(
        (job.finished_at - job.started_at).total_seconds()
        for job in done
        if job.started_at and job.finished_at
    )
    assert truth <= busy <= held
    uploads = f'qm_upload_seconds_count{{pool="{POOL}"}}'
    assert sample(metrics, uploads) - sample(before, uploads) == 8
    gaps = f'qm_gpu_idle_gap_seconds_count{{pool="{POOL}"}}'
    assert sample(metrics, gaps) - sample(before, gaps) <= 8
    assert sorted((w["worker_id"], w["state"], w["job_id"]) for w in workers) == [
        ("w-a", "idle", None),
        ("w-b", "idle", None),
    ]
    assert (
        sample(metrics, 'qm_workers{state="idle"}') == 2 and sample(metrics, 'qm_workers{state="busy"}') == 0
    )
    assert sample(metrics, "qm_leases") == 0 and "qm_queue_depth{" not in metrics
    assert overview["queued"] == overview["running"] == overview["dead"] == []
    assert sum(stats["jobs_per_minute"]) == 8
    now = stats["samples"][-1]
    assert (now["queued"], now["running"], now["workers"], now["busy"]) == (0, 0, 2, 0)
    assert 0 < gpu["busy_fraction"] <= 1 and stats["held_by_pool"] == {POOL: 0}


async def test_the_admin_figures_hold_across_a_cancelled_run_and_a_queue_manager_restart(
    comfy: ComfyUIDouble, redis_url: str, tmp_path: Path
) -> None:
    """A job the admin cancels while ComfyUI runs it kept the GPU busy until the interrupt; a
    queue manager that restarts (a new process on the same port) shows the same history."""
    settings = settings_for(
        redis_url, lease_seconds=3.0, reap_interval_seconds=0.1, stats_interval_seconds=0.5
    )
    comfy.knobs.node_seconds = NODE_SECONDS
    redis = Redis.from_url(redis_url, decode_responses=True)
    qm = LiveServer(build_app(settings, tmp_path / "files")).start()
    alice = participant(qm, "alice")
    admin = httpx.AsyncClient(base_url=qm.url, auth=(ADMIN, ADMIN_PASSWORD), timeout=10)
    try:
        async with pull_worker(worker_settings(comfy, qm.url, tmp_path, worker_id="w-a")):
            jobs = [await submit(alice, graph(color=i)) for i in range(2)]
            for job in jobs:
                await finished(alice, job, timeout=30)
            cancelled = await submit_running(comfy, alice, graph(color=7), seconds=30.0)
            reply = await admin.post(f"/api/admin/jobs/{cancelled}/cancel")
            assert reply.json()["outcome"] == "requested"
            assert (await finished(alice, cancelled, timeout=30)).state == "cancelled"
            before = (await admin.get("/admin/api/stats")).json()

            qm.stop()  # the queue manager restarts; the worker goes on and finds it again
            restarted = LiveServer(build_app(settings, tmp_path / "files"))
            restarted.port, restarted.url = qm.port, qm.url
            qm = restarted.start()
            comfy.knobs.node_seconds, comfy.knobs.progress_steps = NODE_SECONDS, 1
            jobs.append(await submit(alice, graph(color=9)))
            assert (await finished(alice, jobs[-1], timeout=30)).state == "succeeded"
            after = (await admin.get("/admin/api/stats")).json()
    finally:
        await alice.aclose()
        await admin.aclose()
        qm.stop()

    ran = ran_seconds(comfy)
    assert ran[cancelled] < 10  # interrupted, not run out
    records = [json.loads(r) for r in await redis.lrange(f"qm:admin:gpu:{POOL}", 0, -1)]
    await redis.aclose()
    assert len(records) == 4 and before["gpu_by_pool"][POOL]["jobs"] == 3
    assert after["gpu_by_pool"][POOL]["jobs"] == 4
    truth = sum(ran[job] for job in [*jobs, cancelled])
    assert truth <= sum(r["gpu_seconds"] for r in records) <= truth + 4 * 0.1
    assert sum(before["jobs_per_minute"]) == 3 and sum(after["jobs_per_minute"]) == 4
    stored = before["samples"][:-1]  # the last one is the figures at that moment, not stored
    assert after["samples"][: len(stored)] == stored


async def test_a_crashed_worker_and_its_dead_lettered_job_are_shown_as_they_are(
    comfy: ComfyUIDouble, redis_url: str, tmp_path: Path
) -> None:
    """A worker that dies holding a job: the admin sees it gone once it is silent past its longest
    claim and lease, its job dead-lettered (one attempt allowed), counted as such in Prometheus;
    requeued, a live worker runs it, and the dead letters are empty again."""
    settings = settings_for(
        redis_url, lease_seconds=1.0, claim_wait_max_seconds=1.0, reap_interval_seconds=0.1, max_attempts=1
    )
    comfy.knobs.node_seconds = NODE_SECONDS
    with live_server(settings, tmp_path / "files") as qm:
        admin = httpx.AsyncClient(base_url=qm.url, auth=(ADMIN, ADMIN_PASSWORD), timeout=10)
        alice = participant(qm, "alice")
        doomed = await submit(alice, graph(color=3))
        with httpx.Client(base_url=qm.url) as client:
            register_worker(client, {}, worker_id="w-dies")
        async with httpx.AsyncClient(base_url=qm.url, headers=WORKER_AUTH) as dying:
            claimed = await dying.post("/api/workers/w-dies/claim")
            assert claimed.json()["job"]["id"] == doomed  # then it is never heard from again

        async def gone_and_dead() -> bool:
            metrics = (await admin.get("/metrics")).text
            return (
                sample(metrics, 'qm_workers{state="gone"}') == 1 and sample(metrics, "qm_dead_letters") == 1
            )

        await until(gone_and_dead, "the worker gone and its job dead-lettered", timeout=15)
        overview = (await admin.get("/api/admin/queue")).json()
        assert [(j["id"], j["state"], j["worker_id"]) for j in overview["dead"]] == [
            (doomed, "failed", "w-dies")
        ]
        assert overview["running"] == [] and overview["queued"] == []
        workers = {w["worker_id"]: w["state"] for w in (await admin.get("/api/admin/workers")).json()}
        assert workers == {"w-dies": "gone"}
        stats = (await admin.get("/admin/api/stats")).json()
        assert stats["samples"][-1]["workers"] == 0 and stats["busy_share"] == 0

        assert (await admin.post(f"/api/admin/dead/{doomed}/requeue")).status_code == 200
        async with pull_worker(worker_settings(comfy, qm.url, tmp_path, worker_id="w-lives")):
            assert (await finished(alice, doomed, timeout=30)).state == "succeeded"
        metrics = (await admin.get("/metrics")).text
        assert (
            sample(metrics, "qm_dead_letters") == 0
            and (await admin.get("/api/admin/queue")).json()["dead"] == []
        )
        await alice.aclose()
        await admin.aclose()
