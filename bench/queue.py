"""Queue manager latency and throughput over real HTTP, against a real Redis (AOF, fsync always).

    python -m bench.queue [--jobs 1000] [--workers 20] [--users 20]
    {"dispatch_ms_p50": ..., "dispatch_ms_p99": ..., "jobs_per_s": ..., "event_ms_p99": ..., ...}

- ``dispatch_ms``: one submitter queues jobs one after the other while ``--workers`` workers
  long-poll ``claim``; the time from sending the submit to a worker holding the job.
- ``event_ms``: a worker's progress event (three per job) until the owner's ``/api/events``
  WebSocket delivers it, during the dispatch run (``event_ms_p99_throughput_phase``: the same
  while the throughput run saturates server and benchmark client alike).
- ``jobs_per_s``: ``--jobs`` more jobs submitted by 10 concurrent clients, each run through the
  full lifecycle (submit, claim, three progress events, complete); jobs over wall time.
  ``server_cpu_ms_per_job`` is the queue manager's CPU time per job in that run: on a shared
  machine it tells what one free core would sustain (1000 / it), whatever the neighbours do;
  ``client_cpu_ms_per_job`` is the same for this benchmark's own client (workers, submitters,
  listeners), which shares the two cores with the server and Redis.

The queue manager runs as its own process (uvicorn + uvloop + httptools), as in production. The
client side shares the machine, so it is kept lean: uvloop, and one pool of keep-alive HTTP/1.1
connections (``bench/client.py``) instead of httpx, whose per-request CPU cost rivalled the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop
from websockets.asyncio.client import connect

from bench.client import Client
from devkit.qm_server import QueueManagerProcess, qm_env
from devkit.servers import RedisServer

PROMPT = {"1": {"class_type": "EmptyImage", "inputs": {}}, "2": {"class_type": "SaveImage", "inputs": {}}}
TOKEN = "bench-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:pw-{user}".encode()).decode()}


@dataclass
class Measures:
    submitted_at: dict[str, float] = field(default_factory=dict)
    held_at: dict[str, float] = field(default_factory=dict)
    event_ms: list[float] = field(default_factory=list)
    event_ms_loaded: list[float] = field(default_factory=list)
    completed: set[str] = field(default_factory=set)
    all_done: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0
    measuring_dispatch: bool = True
    server_cpu_ms_per_job: float = 0.0
    client_cpu_ms_per_job: float = 0.0


async def worker(http: Client, worker_id: str, measures: Measures) -> None:
    """A worker that runs every job it gets: claim, three progress events, complete."""
    registration = {"worker_id": worker_id, "capabilities": {"pool": "bench", "provider": "bench"}}
    await http.post("/api/workers/register", registration, headers=BEARER)
    while True:
        reply = await http.post(f"/api/workers/{worker_id}/claim", params={"wait": 25}, headers=BEARER)
        if reply.status_code != 200:
            continue
        held_at = time.perf_counter()
        lease = reply.json()
        job_id, token = lease["job"]["id"], lease["token"]
        if measures.measuring_dispatch:
            measures.held_at[job_id] = held_at
        for step in range(3):
            data = {"value": step + 1, "max": 3, "prompt_id": job_id, "sent": time.perf_counter()}
            batch = {"token": token, "events": [{"type": "progress", "data": data}]}
            await http.post(f"/api/leases/{job_id}/events", batch, headers=BEARER)
        await http.post(f"/api/leases/{job_id}/complete", {"token": token}, headers=BEARER)
        measures.completed.add(job_id)
        if len(measures.completed) >= measures.expected:
            measures.all_done.set()


async def listen(url: str, user: str, measures: Measures, ready: asyncio.Event) -> None:
    """The owner's event stream: progress events carry the worker's send time."""
    async with connect(url.replace("http", "ws") + "/api/events", additional_headers=basic(user)) as socket:
        ready.set()
        async for message in socket:
            event = json.loads(message)
            if event["type"] == "progress":
                into = measures.event_ms if measures.measuring_dispatch else measures.event_ms_loaded
                into.append((time.perf_counter() - event["data"]["sent"]) * 1000)


async def submit(http: Client, user: str, measures: Measures) -> None:
    started = time.perf_counter()
    reply = await http.post("/api/jobs", {"prompt": PROMPT}, headers=basic(user))
    reply.raise_for_status()
    measures.submitted_at[reply.json()["id"]] = started


async def wait_until_idle(measures: Measures, count: int) -> None:
    measures.expected = count
    if len(measures.completed) < count:
        measures.all_done.clear()
        await asyncio.wait_for(measures.all_done.wait(), timeout=600)


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) the server processes have used so far, from /proc."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def run(url: str, jobs: int, workers: int, users: list[str], pids: list[int]) -> dict[str, Any]:
    measures = Measures(expected=jobs)
    async with Client(url, connections=workers + 20) as http:
        ready = [asyncio.Event() for _ in users]
        pairs = zip(users, ready, strict=True)
        listeners = [asyncio.create_task(listen(url, user, measures, up)) for user, up in pairs]
        await asyncio.gather(*(r.wait() for r in ready))
        pool = [asyncio.create_task(worker(http, f"bench-{n}", measures)) for n in range(workers)]
        # Dispatch: one job at a time into a queue whose workers are idle and long-polling.
        for n in range(jobs):
            await submit(http, users[n % len(users)], measures)
        await wait_until_idle(measures, jobs)
        # Throughput: the same number of jobs from 10 concurrent clients, full lifecycle.
        measures.measuring_dispatch = False
        started, cpu_before, client_before = time.perf_counter(), cpu_seconds(pids), time.process_time()
        per_client = [users[i % len(users)] for i in range(jobs)]
        for chunk in range(0, jobs, 10):
            await asyncio.gather(*(submit(http, user, measures) for user in per_client[chunk : chunk + 10]))
        await wait_until_idle(measures, 2 * jobs)
        elapsed = time.perf_counter() - started
        measures.server_cpu_ms_per_job = (cpu_seconds(pids) - cpu_before) * 1000 / jobs
        measures.client_cpu_ms_per_job = (time.process_time() - client_before) * 1000 / jobs
        for task in pool + listeners:
            task.cancel()
        await asyncio.gather(*pool, *listeners, return_exceptions=True)
    return summary(measures, jobs, workers, elapsed)


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return 0.0
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 2)


def summary(measures: Measures, jobs: int, workers: int, elapsed: float) -> dict[str, Any]:
    held, sent = measures.held_at, measures.submitted_at
    dispatch_ms = [(held[job_id] - sent[job_id]) * 1000 for job_id in held if job_id in sent]
    return {
        "dispatch_ms_p50": percentile(dispatch_ms, 50),
        "dispatch_ms_p99": percentile(dispatch_ms, 99),
        "jobs_per_s": round(jobs / elapsed, 1),
        "server_cpu_ms_per_job": round(measures.server_cpu_ms_per_job, 2),
        "client_cpu_ms_per_job": round(measures.client_cpu_ms_per_job, 2),
        "event_ms_p99": percentile(measures.event_ms, 99),
        "event_ms_p50": percentile(measures.event_ms, 50),
        "event_ms_p99_throughput_phase": percentile(measures.event_ms_loaded, 99),
        "jobs": 2 * jobs,
        "workers": workers,
        "events": len(measures.event_ms) + len(measures.event_ms_loaded),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument(
        "--processes", type=int, default=1, help="queue manager processes (uvicorn --workers)"
    )
    args = parser.parse_args()
    users = [f"bench{n:02d}" for n in range(args.users)]
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        env = qm_env(
            redis.url, {u: f"pw-{u}" for u in users}, {"bench": TOKEN}, QM_MAX_QUEUED_PER_USER=str(args.jobs)
        )
        server = QueueManagerProcess(env, log_path=Path(tmp) / "qm.log", processes=args.processes).start()
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                result = runner.run(run(server.url, args.jobs, args.workers, users, server.pids()))
        except Exception:
            print((Path(tmp) / "qm.log").read_text()[-5000:], file=sys.stderr)  # why the server failed
            raise
        finally:
            server.stop()
            redis.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
