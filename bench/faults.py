"""Chaos run: jobs keep flowing while worker processes, the queue manager and Redis are SIGKILLed.

    python -m bench.faults [--jobs 500] [--workers 6]
    {"jobs": ..., "lost": 0, "duplicates": ..., "duplicates_unexplained": 0, "requeue_s_max": ...}

- ``jobs``: submissions the queue manager accepted (answered 2xx).
- ``lost``: accepted jobs that never succeeded.
- ``duplicates``: jobs that started on more than one worker; ``duplicates_unexplained`` counts
  those whose earlier start was not on a worker killed while running it (should be 0).
- ``requeue_s_max``: the longest time from killing a worker mid-job to that job starting again.

Workers are separate processes (``--worker``) that claim, "work" 100-300 ms, and complete,
logging each start and finish with a timestamp; the orchestrator kills them and reads the logs.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.queue import BEARER, PROMPT, TOKEN, basic
from devkit.qm_server import QueueManagerProcess, qm_env
from devkit.servers import RedisServer

USERS = [f"chaos{n}" for n in range(10)]
ADMIN = {"Authorization": "Basic " + base64.b64encode(b"admin:admin-password").decode()}
SETTINGS = {
    "QM_LEASE_SECONDS": "10",
    "QM_RETRY_BACKOFF_SECONDS": "0.5",
    "QM_MAX_ATTEMPTS": "10",
    "QM_REAP_INTERVAL_SECONDS": "0.2",
    "QM_MAX_QUEUED_PER_USER": "1000",
}
NETWORK_ERRORS = (httpx.TransportError,)


# --- the worker process -------------------------------------------------------------------------


def run_worker(url: str, worker_id: str, log_path: Path) -> None:
    """Claim, work, complete, forever; survive queue manager and Redis restarts by retrying."""
    log = log_path.open("a", buffering=1)
    with httpx.Client(base_url=url, timeout=30) as http:
        while True:
            lease = claim(http, worker_id)
            if lease is None:
                continue
            job_id, token = lease["job"]["id"], lease["token"]
            log.write(json.dumps({"t": time.time(), "ev": "start", "job": job_id}) + "\n")
            time.sleep(random.uniform(0.1, 0.3))  # the "work"
            if complete(http, job_id, token):
                log.write(json.dumps({"t": time.time(), "ev": "done", "job": job_id}) + "\n")


def claim(http: httpx.Client, worker_id: str) -> dict[str, Any] | None:
    try:
        reply = http.post(f"/api/workers/{worker_id}/claim", params={"wait": 5}, headers=BEARER)
        if reply.status_code == 404:
            body = {"worker_id": worker_id, "capabilities": {"pool": "chaos", "provider": "bench"}}
            http.post("/api/workers/register", json=body, headers=BEARER)
    except NETWORK_ERRORS:
        time.sleep(0.2)  # the queue manager is restarting
        return None
    return dict(reply.json()) if reply.status_code == 200 else None


def complete(http: httpx.Client, job_id: str, token: str) -> bool:
    """Report success until the queue manager gives a definite answer (204 done, 409 not ours)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            reply = http.post(f"/api/leases/{job_id}/complete", json={"token": token}, headers=BEARER)
        except NETWORK_ERRORS:
            reply = None
        if reply is not None and reply.status_code in (204, 409):
            return reply.status_code == 204
        time.sleep(0.2)
    return False


# --- the orchestrator ---------------------------------------------------------------------------


@dataclass
class Chaos:
    url: str
    logs: Path
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    kills: list[tuple[str, float, str | None]] = field(default_factory=list)  # worker, when, its job
    accepted: list[str] = field(default_factory=list)
    spawned: int = 0

    def spawn(self) -> None:
        worker_id = f"chaos-{self.spawned}"
        self.spawned += 1
        command = [
            sys.executable,
            "-m",
            "bench.faults",
            "--worker",
            worker_id,
            "--url",
            self.url,
            "--log",
            str(self.logs / f"{worker_id}.jsonl"),
        ]
        self.workers[worker_id] = subprocess.Popen(command, stdout=subprocess.DEVNULL)

    def kill_busy_worker(self) -> None:
        """SIGKILL a worker that is running a job (waiting up to 3 s for one to be), start another."""
        busy: dict[str, str] = {}
        deadline = time.monotonic() + 3
        while not busy and time.monotonic() < deadline:
            busy = {w: job for w in self.workers if (job := in_flight(self.logs / f"{w}.jsonl"))}
            time.sleep(0.02)  # polling the workers' logs
        victim = random.choice(sorted(busy or self.workers))
        self.workers.pop(victim).kill()
        self.kills.append((victim, time.time(), in_flight(self.logs / f"{victim}.jsonl")))
        self.spawn()

    def submit(self, http: httpx.Client, n: int) -> None:
        for _ in range(600):
            try:
                reply = http.post("/api/jobs", json={"prompt": PROMPT}, headers=basic(USERS[n % len(USERS)]))
            except NETWORK_ERRORS:
                reply = None
            if reply is not None and reply.status_code == 201:
                self.accepted.append(reply.json()["id"])
                return
            time.sleep(0.1)  # the queue manager or Redis is down: try again


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def in_flight(path: Path) -> str | None:
    entries = read_log(path)
    return entries[-1]["job"] if entries and entries[-1]["ev"] == "start" else None


def run(jobs: int, workers: int, tmp: Path) -> dict[str, Any]:
    redis = RedisServer(tmp / "redis").start()
    env = qm_env(redis.url, {u: f"pw-{u}" for u in USERS}, {"chaos": TOKEN}, **SETTINGS)
    server = QueueManagerProcess(env, log_path=tmp / "qm.log").start()
    chaos = Chaos(server.url, tmp)
    try:
        for _ in range(workers):
            chaos.spawn()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for n in range(jobs):
                chaos.submit(http, n)
                disrupt(chaos, server, redis, n, jobs)
            states = wait_for_all(http, chaos.accepted, deadline_s=300)
    finally:
        for process in chaos.workers.values():
            process.kill()
        server.stop()
        redis.stop()
    return tally(chaos, states)


def disrupt(chaos: Chaos, server: QueueManagerProcess, redis: RedisServer, n: int, jobs: int) -> None:
    """Every 40 submissions kill a busy worker; at 1/3 restart the queue manager; at 2/3 kill Redis."""
    if n % 40 == 20:
        chaos.kill_busy_worker()
    if n == jobs // 3:
        server.kill()
        server.start()
    if n == 2 * jobs // 3:
        redis.kill()
        redis.start()


def wait_for_all(http: httpx.Client, ids: list[str], deadline_s: float) -> dict[str, str]:
    deadline = time.monotonic() + deadline_s
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        try:
            snapshot = http.get("/api/admin/snapshot", headers=ADMIN).json()
            states = {job["id"]: job["state"] for job in snapshot["jobs"]}
        except (*NETWORK_ERRORS, ValueError):
            pass
        if all(states.get(job_id) == "succeeded" for job_id in ids):
            break
        time.sleep(0.5)  # polling the queue for the end of the run
    return states


def tally(chaos: Chaos, states: dict[str, str]) -> dict[str, Any]:
    starts: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for path in chaos.logs.glob("chaos-*.jsonl"):
        for entry in read_log(path):
            if entry["ev"] == "start":
                starts[entry["job"]].append((entry["t"], path.stem))
    killed_mid_job = {(worker, job) for worker, _, job in chaos.kills if job}
    duplicates = {job for job, runs in starts.items() if len(runs) > 1}
    unexplained = {
        job
        for job in duplicates
        if any((worker, job) not in killed_mid_job for _, worker in sorted(starts[job])[:-1])
    }
    return {
        "jobs": len(chaos.accepted),
        "lost": sum(1 for job_id in chaos.accepted if states.get(job_id) != "succeeded"),
        "duplicates": len(duplicates),
        "duplicates_unexplained": len(unexplained),
        "requeue_s_max": requeue_max(chaos, starts),
        "workers_killed": len(chaos.kills),
        "killed_mid_job": len(killed_mid_job),
    }


def requeue_max(chaos: Chaos, starts: dict[str, list[tuple[float, str]]]) -> float:
    waits = []
    for worker, killed_at, job in chaos.kills:
        later = [t for t, who in starts.get(job or "", []) if who != worker and t >= killed_at]
        if job and later:
            waits.append(min(later) - killed_at)
    return round(max(waits, default=0.0), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.url, args.worker, args.log)
        return
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.jobs, args.workers, Path(tmp))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
