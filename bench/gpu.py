"""How busy the platform keeps a GPU: ``python -m bench.gpu`` prints one JSON object.

The same jobs run twice, side by side in one run: submitted straight to a ComfyUI double
(``direct``), and through the platform (a real queue manager process on a real redis-server,
one pull worker in this process attached to that double, user files in an S3 on loopback: moto
in server mode). The double records when each prompt starts and stops executing
(``/__double__/timings``), which is when its one GPU slot is busy.

* ``noop_makespan_ratio``: 100 no-op jobs (``EmptyImage -> ImageInvert -> SaveImage``) from two
  participants; platform makespan over direct makespan.
* ``video_makespan_ratio``: 20 jobs that take 2 s each and write a 50 MB output; the platform
  stores every output in the bucket before it reports the job done.
* ``gap_ms_p50`` / ``gap_ms_p99``: in the platform runs, the time the double's GPU slot sits idle
  between the end of one job and the start of the next (every job is queued beforehand, so work
  always waits), both kinds of job together.

What the figures stand on, on this machine (everything shares its cores):

* ``noop_gap_ms_p50`` / ``video_gap_ms_p50``: the gap of each kind of job alone. The no-op jobs
  keep the worker's CPU busy (each costs it more than the double's run), the video jobs do not:
  theirs is the path from one job's end to the next one's start.
* ``direct_gap_ms_p50``: the double's own gap between two prompts queued in it (the direct runs).
* ``noop_floor_ratio``: the no-op jobs straight to the double again, each output put in the bucket
  the moment the double reports it written, all puts in parallel: the least a platform that keeps
  every output durable can take here, with no queue and no worker at all, over direct.
* ``noop_cpu_ms_per_job``: CPU each process spent per no-op job through the platform (read from
  ``/proc``): the worker (this process), the queue manager, redis, the S3 server and the double.

Makespans: direct, from the first submit to the end of the last execution (the outputs are
already on the double's disk). Platform, from the worker's first claim (the jobs were queued
before it started, as participants queue them ahead of a GPU) until the queue manager has
acknowledged the last completion, which waits for the job's outputs to be in the bucket.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import patch

import httpx
import websockets
from pydantic import SecretStr

from bench.worker import comfyui
from devkit.qm_server import qm_env
from devkit.qm_server import queue_manager as qm_process
from devkit.s3 import make_bucket, moto_server
from devkit.servers import redis_server
from services.protocol.jobs import storage_key
from services.storage import Storage
from services.storage.open import S3Settings, open_storage
from services.worker.agent import Agent
from services.worker.outputs import file_chunks, output_files
from services.worker.pull import PullWorker
from services.worker.queue_client import QueueClient
from services.worker.settings import WorkerSettings

TOKEN = "bench-token-0123456789"
PARTICIPANTS = {"alice": "alice-password", "bob": "bob-password"}
BUCKET = "bench-gpu"
VIDEO_BYTES = 50_000_000


@dataclass(frozen=True)
class Phase:
    """One kind of job: how many, how long each node runs on the double, how big the output."""

    name: str
    jobs: int
    node_seconds: float
    output_bytes: int
    first_color: int

    def graph(self, index: int, offset: int) -> dict[str, Any]:
        """A graph no other job shares (the double would replay a repeated one from its cache)."""
        size = {"width": 64, "height": 64, "batch_size": 1}
        graph: dict[str, Any] = {
            "1": {"class_type": "EmptyImage", "inputs": {**size, "color": self.first_color + offset + index}}
        }
        last = "1"
        if self.node_seconds == 0:  # no-op: three instant nodes
            graph["2"] = {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}
            last = "2"
        # otherwise two nodes of node_seconds each (a 2 s job)
        save = {"images": [last, 0], "filename_prefix": self.name}
        graph[str(int(last) + 1)] = {"class_type": "SaveImage", "inputs": save}
        return graph


NOOP = Phase("noop", 100, 0.0, 0, 0)
VIDEO = Phase("video", 20, 1.0, VIDEO_BYTES, 100_000)


@dataclass
class Servers:
    qm_url: str
    comfy_url: str
    s3: S3Settings
    pids: dict[str, list[int]]  # the server processes by role, for their CPU time


def processes() -> dict[int, str]:
    """Every process on the machine and its command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit():
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    return found


def roles(qm_pids: list[int]) -> dict[str, list[int]]:
    """The servers this bench started, by what they are (matched on their command lines)."""
    named = {"redis": "redis-server", "s3": "devkit.s3", "comfyui": "devkit.doubles.comfyui"}
    ours = {pid: line for pid, line in processes().items() if _is_child(pid)}
    found = {role: [pid for pid, line in ours.items() if mark in line] for role, mark in named.items()}
    return {**found, "queue_manager": qm_pids}


def _is_child(pid: int) -> bool:
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[1]) == os.getpid()
    return False


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU (user + system) each role's processes used so far, and this process's (the worker)."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {"worker": time.process_time()}
    for role, ids in pids.items():
        used[role] = 0.0
        for pid in ids:
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                used[role] += (int(fields[11]) + int(fields[12])) / tick
    return used


@contextlib.contextmanager
def servers(root: Path) -> Iterator[Servers]:
    env = qm_env(
        "",
        PARTICIPANTS,
        {"gpu": TOKEN},
        QM_MAX_QUEUED_PER_USER="1000",
        QM_FILES_URL=(root / "files").as_uri(),
    )
    with redis_server(root / "redis") as redis, moto_server() as endpoint, comfyui(root / "comfy") as comfy:
        make_bucket(endpoint, BUCKET)
        env["QM_REDIS_URL"] = redis.url
        with qm_process(env, log_path=root / "qm.log") as qm:
            keys = SecretStr("test")
            s3 = S3Settings(endpoint_url=endpoint, access_key_id=keys, secret_access_key=keys)
            yield Servers(qm.url, comfy, s3, roles(qm.pids()))


async def timings(http: httpx.AsyncClient, comfy_url: str) -> dict[str, tuple[float, float]]:
    reply = await http.get(f"{comfy_url}/__double__/timings")
    return {job_id: (span[0], span[1]) for job_id, span in reply.json().items()}


async def direct(http: httpx.AsyncClient, comfy_url: str, phase: Phase) -> float:
    """Submit every job to the double at once; seconds until the last one stopped executing."""
    started = time.perf_counter()
    ids = []
    for index in range(phase.jobs):
        reply = await http.post(f"{comfy_url}/prompt", json={"prompt": phase.graph(index, 0)})
        reply.raise_for_status()
        ids.append(reply.json()["prompt_id"])
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        spans = await timings(http, comfy_url)
        if all(spans.get(job_id, (0.0, 0.0))[1] > 0 for job_id in ids):
            return max(spans[job_id][1] for job_id in ids) - started
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the double did not run the {phase.name} jobs within 600 s")


async def stored_floor(
    http: httpx.AsyncClient, comfy_url: str, folder: Path, storage: Storage, phase: Phase
) -> float:
    """Submit every job to the double at once and put each output in the bucket as soon as the double
    says it is written (its ``executed`` message), all puts in parallel; seconds until the last is
    stored. The double writes the files in ``folder``, its output folder; nothing else runs."""
    client_id = f"floor-{time.monotonic_ns()}"
    ws_url = comfy_url.replace("http", "ws", 1) + f"/ws?clientId={client_id}"
    async with websockets.connect(ws_url, max_size=None) as socket:
        started = time.perf_counter()
        pending = set()
        for index in range(phase.jobs):
            body = {"prompt": phase.graph(index, 2 * phase.jobs), "client_id": client_id}
            reply = await http.post(f"{comfy_url}/prompt", json=body)
            reply.raise_for_status()
            pending.add(reply.json()["prompt_id"])
        puts = []
        while pending:
            message = await socket.recv()
            if isinstance(message, bytes):
                continue
            event = json.loads(message)
            data = event.get("data") or {}
            if event["type"] == "executed" and data.get("prompt_id") in pending:
                for ref in output_files({"outputs": {data["node"]: data["output"]}}):
                    chunks = file_chunks(folder / ref.subfolder / ref.filename)
                    puts.append(asyncio.create_task(storage.put(storage_key("floor", ref), chunks)))
            elif event["type"] == "executing" and data.get("node") is None:
                pending.discard(data.get("prompt_id"))
        await asyncio.gather(*puts)
        return time.perf_counter() - started


async def submit(http: httpx.AsyncClient, qm_url: str, phase: Phase) -> list[str]:
    """Queue every job with the queue manager, the two participants taking turns."""
    ids = []
    users = list(PARTICIPANTS.items())
    for index in range(phase.jobs):
        user, password = users[index % len(users)]
        body = {"prompt": phase.graph(index, phase.jobs)}
        reply = await http.post(f"{qm_url}/api/jobs", json=body, auth=(user, password))
        reply.raise_for_status()
        ids.append(reply.json()["id"])
    return ids


async def through_platform(agent: Agent, queue: QueueClient, phase: Phase) -> float:
    """Run the queued jobs with one pull worker; seconds from its first claim to the last report."""
    worker = PullWorker(agent, queue)
    outcomes: list[str] = []
    run_lease = agent.run_lease

    async def counted(*args: Any, **kwargs: Any) -> str:
        outcome = await run_lease(*args, **kwargs)
        outcomes.append(outcome)
        return outcome

    with patch.object(agent, "run_lease", counted):
        await worker.run(max_jobs=phase.jobs)
    ended = time.monotonic()
    if outcomes.count("succeeded") != phase.jobs:
        raise RuntimeError(f"{phase.name}: the worker's outcomes were {outcomes}: the measurement is void")
    assert worker.first_claim_at is not None
    return ended - worker.first_claim_at


def gaps_ms(spans: list[tuple[float, float]]) -> list[float]:
    """Idle time of the GPU slot between consecutive executions."""
    ordered = sorted(spans)
    return [(ordered[i + 1][0] - ordered[i][1]) * 1000 for i in range(len(ordered) - 1)]


@dataclass
class PhaseResult:
    ratio: float
    gaps: list[float]  # through the platform
    direct_gaps: list[float]
    cpu_ms_per_job: dict[str, float]
    floor_ratio: float | None = None


async def run_phase(
    http: httpx.AsyncClient, found: Servers, agent: Agent, queue: QueueClient, phase: Phase, floor: bool
) -> PhaseResult:
    knobs = {"node_seconds": phase.node_seconds, "output_bytes": phase.output_bytes}
    (await http.post(f"{found.comfy_url}/__double__/knobs", json=knobs)).raise_for_status()
    direct_s = await direct(http, found.comfy_url, phase)
    direct_ids = set((await timings(http, found.comfy_url)).keys())
    floor_s = None
    if floor:
        output = agent.files.folders.output
        floor_s = await stored_floor(http, found.comfy_url, output, agent.storage, phase)
    ids = await submit(http, found.qm_url, phase)
    before = cpu_seconds(found.pids)
    platform_s = await through_platform(agent, queue, phase)
    after = cpu_seconds(found.pids)
    spans = await timings(http, found.comfy_url)
    cpu = {role: round((after[role] - used) * 1000 / phase.jobs, 2) for role, used in before.items()}
    return PhaseResult(
        platform_s / direct_s,
        gaps_ms([spans[job_id] for job_id in ids]),
        gaps_ms([span for job_id, span in spans.items() if job_id in direct_ids]),
        cpu,
        None if floor_s is None else floor_s / direct_s,
    )


def worker_agent(root: Path, found: Servers) -> tuple[Agent, QueueClient]:
    settings = WorkerSettings(
        queue_url=found.qm_url,
        token=SecretStr(TOKEN),
        pool="gpu",
        worker_id="bench-gpu",
        comfyui_url=found.comfy_url,
        data_dir=root / "comfy",  # the folders the ComfyUI double was started with
        storage_url=f"s3://{BUCKET}",
    )
    storage: Storage = open_storage(settings.storage_url, found.s3)
    return Agent(settings, storage), QueueClient(found.qm_url, TOKEN)


def percentile(values: list[float], q: int) -> float:
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 2)


async def measure(root: Path, found: Servers, phases: list[Phase]) -> dict[str, Any]:
    agent, queue = worker_agent(root, found)
    await agent.start()
    result: dict[str, Any] = {}
    gaps: list[float] = []
    direct_gaps: list[float] = []
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            for phase in phases:
                ran = await run_phase(http, found, agent, queue, phase, floor=phase.name == NOOP.name)
                result[f"{phase.name}_makespan_ratio"] = round(ran.ratio, 3)
                if ran.floor_ratio is not None:
                    result[f"{phase.name}_floor_ratio"] = round(ran.floor_ratio, 3)
                    result[f"{phase.name}_cpu_ms_per_job"] = ran.cpu_ms_per_job
                gaps += ran.gaps
                result[f"{phase.name}_gap_ms_p50"] = round(statistics.median(ran.gaps), 2)
                direct_gaps += ran.direct_gaps
    finally:
        await agent.stop()
        await queue.aclose()
    result["gap_ms_p50"] = percentile(gaps, 50)
    result["gap_ms_p99"] = percentile(gaps, 99)
    result["direct_gap_ms_p50"] = percentile(direct_gaps, 50)
    return result


def run(phases: list[Phase]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, servers(Path(tmp)) as found:
        return asyncio.run(measure(Path(tmp), found, phases))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noop-jobs", type=int, default=NOOP.jobs)
    parser.add_argument("--video-jobs", type=int, default=VIDEO.jobs)
    args = parser.parse_args()
    phases = [
        Phase(NOOP.name, args.noop_jobs, NOOP.node_seconds, NOOP.output_bytes, NOOP.first_color),
        Phase(VIDEO.name, args.video_jobs, VIDEO.node_seconds, VIDEO.output_bytes, VIDEO.first_color),
    ]
    print(json.dumps(run([phase for phase in phases if phase.jobs > 0])))


if __name__ == "__main__":
    main()
