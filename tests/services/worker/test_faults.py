"""Faults the worker survives: ComfyUI crashing mid-job, the queue manager going away and coming
back, a huge output, and SIGTERM in the middle of a job."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.doubles.comfyui import ComfyUIDouble
from services.protocol.jobs import Job, JobState
from services.protocol.workers import Lease
from services.storage.local import LocalStorage
from services.worker.agent import Agent, client_id_of, is_client_of
from services.worker.comfy_client import ComfyClient
from services.worker.queue_client import LeaseLostError, QueueClient
from services.worker.settings import WorkerSettings
from services.worker.supervisor import ComfyProcess
from tests.support.jobs import finished, graph, job_of, participant, sleeping, submit, submit_running, until
from tests.support.queue_manager_app import ADMIN, ADMIN_PASSWORD, POOL, POOL_TOKEN, LiveServer
from tests.support.worker_agent import child_worker_settings, pull_worker, worker_settings


async def running_in(comfyui: ComfyClient, job_id: str) -> bool:
    return job_id in (await comfyui.queue())[0]


async def test_comfyui_crashing_mid_job_restarts_it_and_the_job_runs_again_without_using_an_attempt(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    settings = child_worker_settings(comfy, qm.url, tmp_path)
    async with pull_worker(settings) as running:
        comfyui = running.agent.comfy
        job_id = await submit(alice, graph(color=11))
        await until(lambda: running_in(comfyui, job_id), "the job running in the child ComfyUI")
        supervisor = running.agent.comfy_server
        assert isinstance(supervisor, ComfyProcess) and supervisor._process is not None
        os.kill(supervisor._process.pid, signal.SIGKILL)
        job = await finished(alice, job_id)
        restarts = supervisor.restarts
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.attempts == 1 and job.comfyui_losses == 1 and restarts == 1
    assert (tmp_path / "files" / "users/alice/output/t_00001_.png").is_file()
    assert list(settings.data_dir.joinpath("output").iterdir()) == []  # moved to storage, none left


async def test_the_queue_manager_away_and_back_gets_exactly_one_completion(
    comfy: ComfyUIDouble, qm_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    qm = qm_factory(lease_seconds=20.0)
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)), participant(qm, "alice") as alice:
        comfy.knobs.node_seconds = 0.2
        job_id = await submit(alice, graph(color=12))
        await until(lambda: comfy.state.running is not None, "job running")
        qm.stop()
        await until(
            lambda: job_id in comfy.state.history, "job done in ComfyUI while the queue manager is away"
        )
        qm.start()
        job = await finished(alice, job_id)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.attempts == 1 and [o.filename for o in job.outputs] == ["t_00001_.png"]


async def test_a_large_output_is_streamed_to_storage_not_held_in_memory(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, files: Path
) -> None:
    size = 48 * 1024 * 1024
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        comfy.knobs.output_bytes = size
        tracemalloc.start()
        try:
            job = await finished(alice, await submit(alice, graph(color=13)), timeout=60)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert job.state == JobState.SUCCEEDED, job.error
    stored = (files / "users/alice/output/t_00001_.png").stat().st_size
    assert job.outputs[0].size == stored
    assert 0 < size - stored < 100  # the picture as written, but for the worker's salt taken out of its graph
    assert peak < 12 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB while moving a 48 MiB output"


def worker_process(
    comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path, grace: float
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "WORKER_QUEUE_URL": qm.url,
        "WORKER_TOKEN": POOL_TOKEN,
        "WORKER_POOL": POOL,
        "WORKER_ID": "w-sigterm",
        "WORKER_COMFYUI_URL": comfy.url,
        "WORKER_DATA_DIR": str(comfy.folders.input.parent),
        "WORKER_STORAGE_URL": f"file://{tmp_path}/files",
        "WORKER_SHUTDOWN_GRACE_SECONDS": str(grace),
        "WORKER_WARMUP": "false",
    }
    return subprocess.Popen([sys.executable, "-m", "services.worker", "pull"], env=env)


async def sigterm_while_running(
    process: subprocess.Popen[bytes], comfy: ComfyUIDouble, alice: httpx.AsyncClient, color: int
) -> str:
    """Submit a job, SIGTERM the worker process once ComfyUI runs it; the worker exits 0 (bounded)."""
    try:
        job_id = await submit(alice, graph(color=color))
        await until(lambda: comfy.state.running is not None, "job running", timeout=60)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 40) == 0
    finally:
        process.kill()
    return job_id


async def test_sigterm_mid_job_finishes_it_within_the_grace_period_and_exits_0(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    comfy.knobs.node_seconds = 0.3
    process = worker_process(comfy, qm, tmp_path, grace=20)
    job_id = await sigterm_while_running(process, comfy, alice, color=14)
    job = await finished(alice, job_id)
    assert job.state == JobState.SUCCEEDED, job.error
    async with httpx.AsyncClient(base_url=qm.url, auth=(ADMIN, ADMIN_PASSWORD)) as admin:
        workers = (await admin.get("/api/admin/workers")).json()
    assert [w["state"] for w in workers if w["worker_id"] == "w-sigterm"] == ["draining"]


async def test_sigterm_with_a_job_too_long_for_the_grace_period_releases_it_and_exits_0(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    comfy.knobs.node_seconds, comfy.knobs.progress_steps = 30.0, 300
    process = worker_process(comfy, qm, tmp_path, grace=0.2)
    job_id = await sigterm_while_running(process, comfy, alice, color=15)
    reply = (await alice.get(f"/api/jobs/{job_id}")).json()
    assert reply["state"] == JobState.QUEUED and reply["attempts"] == 0
    await until(lambda: job_id in comfy.state.history, "ComfyUI told to stop the released job")
    assert comfy.state.history[job_id]["status"]["messages"][-1][0] == "execution_interrupted"


async def test_sigterm_while_waiting_for_work_exits_0_at_once(
    comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path
) -> None:
    process = worker_process(comfy, qm, tmp_path, grace=20)
    try:
        await until(lambda: len(comfy.state.sockets) == 1, "worker connected to ComfyUI", timeout=60)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 10) == 0
    finally:
        process.kill()


async def test_a_wrong_pool_token_stops_the_worker_with_a_message_naming_the_setting(
    comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "WORKER_QUEUE_URL": qm.url,
        "WORKER_TOKEN": "wrong",
        "WORKER_POOL": POOL,
        "WORKER_COMFYUI_URL": comfy.url,
        "WORKER_DATA_DIR": str(comfy.folders.input.parent),
        "WORKER_WARMUP": "false",
        "WORKER_STORAGE_URL": f"file://{tmp_path}/files",
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.worker", "pull"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "WORKER_TOKEN" in result.stderr and "wrong" not in result.stderr.replace("WORKER_TOKEN", "")


async def test_a_lease_lost_at_a_heartbeat_stops_the_job_in_comfyui_without_reporting(
    comfy: ComfyUIDouble, tmp_path: Path
) -> None:
    class StaleQueue(QueueClient):
        reported: list[str] = []

        async def heartbeat(
            self, job_id: str, token: str, wait: float = 0.0, renew: bool = True, ran: bool = False
        ) -> Any:
            await until(lambda: comfy.state.running is not None, "job running")  # then the lease is gone
            raise LeaseLostError("409")

        async def events(self, job_id: str, token: str, events: list[Any]) -> None:
            return None

        async def complete(self, *args: Any) -> None:
            self.reported.append("complete")

        async def fail(self, *args: Any) -> None:
            self.reported.append("fail")

    agent = Agent(worker_settings(comfy, "http://127.0.0.1:9", tmp_path), LocalStorage(tmp_path / "files"))
    await agent.start()
    comfy.knobs.node_seconds, comfy.knobs.progress_steps = 10.0, 100
    job = Job(id=str(uuid.uuid4()), user="alice", prompt=graph(color=41), queued_at=datetime.now(UTC))
    lease = Lease(job=job, token="t", expires_at=datetime.now(UTC), lease_seconds=1.0)
    queue = StaleQueue("http://127.0.0.1:9", "token")
    try:
        assert await agent.run_lease(lease, queue, heartbeat_seconds=0.1) == "lost"
        await until(lambda: job.id in comfy.state.history, "ComfyUI stopped the job")
    finally:
        await agent.stop()
    assert queue.reported == []
    assert comfy.state.history[job.id]["status"]["messages"][-1][0] == "execution_interrupted"


async def test_an_attached_comfyui_restarting_mid_job_loses_it_and_the_job_runs_again(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        job_id = await submit_running(comfy, alice, graph(color=16), seconds=1.0)
        await asyncio.to_thread(comfy.restart)  # someone else's ComfyUI: queue and history are gone
        job = await finished(alice, job_id, timeout=30)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.attempts == 1 and job.comfyui_losses == 1


async def test_a_cancelled_job_whose_node_ignores_the_interrupt_has_comfyui_restarted_and_ends_cancelled(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A node that reports no progress never looks at ComfyUI's interrupt flag (the real ComfyUI's
    own nodes check it only in their progress hook): one that hangs keeps running after her cancel.
    The worker gives it ``interrupt_grace_seconds``, then restarts its child ComfyUI so the GPU is
    free again, and her job ends cancelled instead of showing as running for good."""
    async with pull_worker(hanging_child(comfy, qm, tmp_path)) as running:
        comfyui = running.agent.comfy
        job_id = await submit(alice, graph(color=17))
        await until(lambda: running_in(comfyui, job_id), "the job running in the child ComfyUI")
        assert (await alice.post(f"/api/jobs/{job_id}/cancel")).json()["outcome"] == "requested"
        job = await finished(alice, job_id, timeout=30)
        supervisor = running.agent.comfy_server
        assert isinstance(supervisor, ComfyProcess)
        await until(lambda: supervisor.up.is_set(), "the restarted ComfyUI answers", timeout=30)
        assert await comfyui.queue() == ([], [])  # the hung prompt is gone: the GPU is free
    assert job.state == JobState.CANCELLED and job.outputs == []
    assert supervisor.restarts == 1


def hanging_child(comfy: ComfyUIDouble, qm: LiveServer, tmp_path: Path) -> WorkerSettings:
    """A worker whose child ComfyUI runs every node for an hour and never checks for an interrupt
    (no progress updates), as a custom node stuck in a call does on the real one."""
    hangs = ["--node-seconds", "3600", "--progress-steps", "0"]
    command = [sys.executable, "-m", "devkit.doubles.comfyui", *hangs]
    return child_worker_settings(
        comfy, qm.url, tmp_path, comfyui_command=command, interrupt_grace_seconds=1.0
    )


async def test_a_hung_job_nobody_cancels_ends_at_its_pools_maximum_job_time_and_frees_the_gpu(
    comfy: ComfyUIDouble, qm_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    """ComfyUI keeps answering while the node hangs, so the worker keeps renewing its lease: the
    queue manager ends the job at the pool's maximum job time; the worker, refused at its next
    heartbeat, interrupts ComfyUI and after the grace restarts its child, so the GPU is free again."""
    qm = qm_factory(lease_seconds=3.0, pool_max_job_seconds={POOL: 2.0})
    async with pull_worker(hanging_child(comfy, qm, tmp_path)) as running, participant(qm, "alice") as alice:
        comfyui = running.agent.comfy
        job_id = await submit(alice, graph(color=19))
        await until(lambda: running_in(comfyui, job_id), "the job running in the child ComfyUI")
        job = await finished(alice, job_id, timeout=30)
        page = (await alice.get(f"/w/alice/api/history/{job_id}")).json()[job_id]
        supervisor = running.agent.comfy_server
        assert isinstance(supervisor, ComfyProcess)
        await until(lambda: supervisor.restarts == 1 and supervisor.up.is_set(), "ComfyUI restarted", 30)
        assert await comfyui.queue() == ([], [])  # the hung prompt is gone: the GPU is free
        async with httpx.AsyncClient(base_url=qm.url, auth=(ADMIN, ADMIN_PASSWORD)) as admin:
            dead = (await admin.get("/api/admin/queue")).json()["dead"]
    assert job.state == JobState.FAILED and job.error is not None and job.error.type == "JobTimeLimit"
    assert job.attempts == 1 and [d["id"] for d in dead] == [job_id]
    event, data = page["status"]["messages"][-1]
    assert event == "execution_error" and "longer than 2 s" in data["exception_message"]
    assert f"raise maxJobSeconds of pool {POOL}" in data["exception_message"]


async def left_in_comfyui(comfy: ComfyUIDouble, client_id: str, *prompts: dict[str, Any]) -> None:
    """Prompts left in the attached ComfyUI before the worker starts (by its killed last run, or
    anyone), submitted with ``client_id``: the first runs, the others wait behind it."""
    async with httpx.AsyncClient(base_url=comfy.url) as before:
        for prompt in prompts:
            left = {"prompt": prompt, "client_id": client_id}
            (await before.post("/prompt", json=left)).raise_for_status()
    await until(lambda: comfy.state.running is not None, "the left prompt runs in ComfyUI")


async def told_stuck(qm: LiveServer, comfy: ComfyUIDouble) -> str:
    """What the admin page's workers list says, once it names the stuck ComfyUI and the fix (bounded)."""
    said = ""

    async def told() -> bool:
        nonlocal said
        said = next((p for p in await problems_of_workers(qm) if f"restart ComfyUI at {comfy.url}" in p), "")
        return bool(said)

    await until(told, "the admin page names the stuck ComfyUI and the fix", timeout=60)
    return said


async def problems_of_workers(qm: LiveServer) -> list[str]:
    """What the admin page's workers list says keeps each worker from taking jobs ('' = nothing)."""
    async with httpx.AsyncClient(base_url=qm.url, auth=(ADMIN, ADMIN_PASSWORD)) as admin:
        workers = (await admin.get("/api/admin/workers")).json()
    return [str(worker["capabilities"].get("problem") or "") for worker in workers]


async def test_an_attached_comfyui_stuck_in_a_node_takes_no_job_and_says_so_until_it_is_restarted(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    """An attached ComfyUI is someone else's to restart: after the grace its stuck prompt is named
    in the worker's log and on the admin page with the fix, and the worker claims nothing (a job
    it took would only wait for the stuck prompt and go back, again and again) until ComfyUI holds
    no prompt; then it takes the waiting job."""
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path, interrupt_grace_seconds=1.0)):
        comfy.knobs.node_seconds, comfy.knobs.progress_steps = 3600, 0  # never checks for an interrupt
        stuck = await submit(alice, graph(color=20))
        await until(lambda: comfy.state.running is not None, "the hung job running in ComfyUI")
        assert (await alice.post(f"/api/jobs/{stuck}/cancel")).json()["outcome"] == "requested"
        assert (await finished(alice, stuck, timeout=30)).state == JobState.CANCELLED
        waiting = await submit(alice, graph(color=21))
        await told_stuck(qm, comfy)
        with pytest.raises(TimeoutError):  # watched for a while: it must stay queued, untouched
            async with asyncio.timeout(3.0):
                while (await job_of(alice, waiting)).state == JobState.QUEUED:
                    await asyncio.sleep(0.1)  # polling for a change that must not come
        assert (await job_of(alice, waiting)).started_at is None

        comfy.knobs.node_seconds = 0.01
        await asyncio.to_thread(comfy.restart)  # the organizer restarts it
        done = await finished(alice, waiting, timeout=30)
        problems = await problems_of_workers(qm)
    assert done.state == JobState.SUCCEEDED, done.error
    assert done.attempts == 1 and problems == [""]


@pytest.mark.parametrize("warmup", [False, True], ids=["no_warmup", "warmup"])
async def test_an_attached_comfyui_running_a_prompt_that_never_ends_is_not_fed_one_job_after_another(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, caplog: Any, warmup: bool
) -> None:
    """A worker starts (again) while its attached ComfyUI runs a prompt that hangs (left by the
    worker's last run): her job waits for it 30 s and goes back to the queue, no attempt counted,
    and then the worker takes no job (it took one every 30 s and gave it back) and says why on the
    admin page and in its log, until ComfyUI is restarted; then her job runs. With a warm-up, the
    warm-up is what meets the stuck prompt first: the worker starts all the same (it exited, with no
    word on the admin page) and waits as later in life."""
    comfy.knobs.node_seconds, comfy.knobs.progress_steps = 3600, 0
    await left_in_comfyui(comfy, "last-run", graph(color=22))
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path, warmup=warmup)):
        job_id = await submit(alice, graph(color=23))
        problem = await told_stuck(qm, comfy)
        given_back = await job_of(alice, job_id)
        with pytest.raises(TimeoutError):  # watched for a while: it must stay queued, untouched
            async with asyncio.timeout(3.0):
                while await job_of(alice, job_id) == given_back:
                    await asyncio.sleep(0.1)  # polling for a change that must not come
        comfy.knobs.node_seconds = 0.01
        await asyncio.to_thread(comfy.restart)  # the organizer restarts it
        done = await finished(alice, job_id, timeout=30)
        ran = sorted(comfy.state.timings, key=lambda prompt_id: comfy.state.timings[prompt_id][0])
    assert given_back.state == JobState.QUEUED and given_back.attempts == 0
    # the restarted ComfyUI runs the warm-up skipped at start before her job, which pays no first run
    assert ran[-1] == job_id and len(ran) == (2 if warmup else 1), ran
    assert (
        "told to stop" not in problem and "left there before this worker started" in problem
    )  # nobody stopped it
    assert done.state == JobState.SUCCEEDED and done.attempts == 1, done.error
    assert any(f"restart ComfyUI at {comfy.url}" in r.getMessage() for r in caplog.records)


async def test_a_worker_killed_with_jobs_in_its_attached_comfyui_stops_them_when_it_is_back(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A worker SIGKILLed leaves its last prompts in an attached ComfyUI, which outlives it: the
    running one (its job, or the prepared one it had just handed over) and any queued behind it.
    Their jobs come back to the queue (the lease lapses, or the hold ends as the worker registers
    again) and run again, so those prompts would only keep the GPU from her job, or run a job twice
    at once. Back, the worker stops the prompts its own client id left, and her job runs at once."""
    await left_in_comfyui(comfy, "w-test-0badf00d", sleeping(26, 3600), sleeping(27, 3600))  # its last run's
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path, warmup=False)):
        job_id = await submit(alice, graph(color=28))
        done = await finished(alice, job_id, timeout=10)
    assert done.state == JobState.SUCCEEDED and done.attempts == 1, done.error
    assert comfy.state.running is None and comfy.state.pending == []  # nothing of the last run left


def test_a_worker_takes_only_its_own_runs_client_ids_for_its_own() -> None:
    """The prompts a starting worker stops are its own earlier runs', never another worker's or
    someone's using the same ComfyUI (a worker id that starts with this one's included)."""
    assert is_client_of("w1", client_id_of("w1")) and client_id_of("w1") != client_id_of("w1")
    assert not is_client_of("w1", client_id_of("w1-b")) and not is_client_of("w1-b", client_id_of("w1"))
    assert not is_client_of("w1", "w1-organizer") and not is_client_of("w1", "last-run")


async def test_a_node_the_gpus_comfyui_offered_but_lost_is_not_blamed_on_her_workflow(
    comfy: ComfyUIDouble, qm: LiveServer, alice: httpx.AsyncClient, tmp_path: Path, monkeypatch: Any
) -> None:
    """ComfyUI restarted without a node class it offered when the worker started (a custom node
    that failed to import this time): ComfyUI refuses the graph as naming a node that does not
    exist. Her workflow is not at fault: the job is tried again (another GPU may have the node) and
    the error names the GPU, not her graph."""
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)):
        offered = ComfyUIDouble.catalogue
        monkeypatch.setattr(
            ComfyUIDouble,
            "catalogue",
            lambda double: {name: spec for name, spec in offered(double).items() if name != "ImageInvert"},
        )
        job = await finished(alice, await submit(alice, graph(color=18)))
    assert job.state == JobState.FAILED and job.error is not None
    assert job.error.retryable and job.attempts > 1
    assert job.error.type == "NodeMissingOnWorker" and job.error.node_type == "ImageInvert"
    assert "restart" in job.error.message


async def test_a_job_ended_at_its_pools_maximum_job_time_is_stopped_in_comfyui_at_once(
    comfy: ComfyUIDouble, qm_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    """The worker holds each heartbeat open for a third of the lease (20 s here): the end of the job
    at its time limit reaches it through that open call, so the GPU is freed within moments of the
    job's end, not at the next heartbeat."""
    qm = qm_factory(lease_seconds=60.0, pool_max_job_seconds={POOL: 1.0})
    async with pull_worker(worker_settings(comfy, qm.url, tmp_path)), participant(qm, "alice") as alice:
        comfy.knobs.node_seconds, comfy.knobs.progress_steps = 60.0, 600  # the interrupt is seen within 0.1 s
        job_id = await submit(alice, graph(color=20))
        await until(lambda: comfy.state.running is not None, "job running")
        job = await finished(alice, job_id, timeout=30)
        ended = time.monotonic()
        await until(lambda: comfy.state.running is None, "the job interrupted in ComfyUI", timeout=30)
        delay = time.monotonic() - ended
    assert job.state == JobState.FAILED and job.error is not None and job.error.type == "JobTimeLimit"
    assert delay < 5.0, f"ComfyUI ran the ended job {delay:.2f} s more"
