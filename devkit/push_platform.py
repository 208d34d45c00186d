"""A serverless GPU platform double: RunPod-style and Verda-style async endpoints over loopback HTTP.

It behaves as the providers do for what our dispatcher relies on: requests queue at the endpoint;
the autoscaler starts replicas (after a cold start) while requests wait, up to ``max_replicas``;
an idle replica stops after ``idle_timeout_s``; each replica bills its whole life rounded up to the
provider's billing increment. A replica runs a request by handing the lease to ``runner`` (the
worker core in the container; ``simulated_worker`` speaks the worker API to the queue manager),
which runs the request's chain of jobs before it returns; the request is outstanding until then.

RunPod: ``POST /run`` {"input": lease} -> {"id", "status"}; ``GET /status/{id}``; ``POST /cancel/{id}``.
Verda: ``POST /{deployment}/lease`` with ``Prefer: respond-async`` -> {"Id"};
``GET /status/{deployment}`` with ``X-Inference-Id`` -> {"Status"}.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Header, HTTPException, Request
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from devkit.servers import free_port

Runner = Callable[[dict[str, Any]], Awaitable[bool]]
RETRY_SECONDS = 30.0  # how long a simulated container sends a call again while the queue manager is away
RUNPOD_TO_VERDA = {"IN_QUEUE": "Queue", "IN_PROGRESS": "Inference", "COMPLETED": "Completed",
                   "FAILED": "Failed", "CANCELLED": "Failed"}  # fmt: skip


@dataclass
class Request_:
    id: str
    lease: dict[str, Any]
    status: str = "IN_QUEUE"
    queued_at: float = 0.0
    started_at: float | None = None


@dataclass
class Replica:
    started: float
    ready: float | None = None
    stopped: float | None = None
    busy_s: float = 0.0


@dataclass
class Platform:
    runner: Runner
    max_replicas: int = 4
    cold_start_s: float = 0.0
    idle_timeout_s: float = 0.5
    billing_increment_s: float = 0.0
    bill_cold_start: bool = True
    api_key: str = "push-key"
    deployment: str = "cw-serverless"
    refuse_next: int = 0
    crash_next: int = 0
    stall_next: int = 0
    late_next: int = 0  # that many submits are answered only after ``late_s`` (yet taken and run)
    late_s: float = 0.0
    requests: dict[str, Request_] = field(default_factory=dict)
    peak_outstanding: int = 0
    replicas: list[Replica] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._queue: asyncio.Queue[Request_] = asyncio.Queue()
        self._alive = 0  # replicas starting or up
        self._busy = 0  # replicas running a request
        self._tasks: set[asyncio.Task[None]] = set()

    # --- the endpoint ------------------------------------------------------------------------
    async def answer_late(self) -> None:
        """A submit the provider answers late (its API overloaded): it takes the request all the same."""
        if self.late_next > 0:
            self.late_next -= 1
            await asyncio.sleep(self.late_s)

    def accept(self, lease: dict[str, Any]) -> Request_:
        if self.refuse_next > 0:
            self.refuse_next -= 1
            raise HTTPException(500, "worker pool unavailable")
        req = Request_(f"req-{next(self._ids):05d}", lease, queued_at=time.monotonic())
        self.requests[req.id] = req
        self.peak_outstanding = max(self.peak_outstanding, len(self.outstanding()))
        self._queue.put_nowait(req)
        self._scale()
        return req

    def cancel(self, req_id: str) -> Request_:
        req = self._get(req_id)
        if req.status == "IN_QUEUE":
            req.status = "CANCELLED"
        return req

    def _get(self, req_id: str) -> Request_:
        if req_id not in self.requests:
            raise HTTPException(404, f"request {req_id} not found")
        return self.requests[req_id]

    # --- the autoscaler and replicas ---------------------------------------------------------
    def _scale(self) -> None:
        """As the providers' queue-based autoscalers: enough replicas for running plus waiting work."""
        wanted = min(self.max_replicas, self._busy + self._queue.qsize())
        for _ in range(wanted - self._alive):
            self._alive += 1
            task = asyncio.create_task(self._replica())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _replica(self) -> None:
        replica = Replica(started=time.monotonic())
        self.replicas.append(replica)
        try:
            await asyncio.sleep(self.cold_start_s)
            replica.ready = time.monotonic()
            while True:
                try:
                    req = await asyncio.wait_for(self._queue.get(), self.idle_timeout_s)
                except TimeoutError:
                    return
                await self._run(replica, req)
        finally:
            self._alive -= 1
            replica.stopped = time.monotonic()

    async def _run(self, replica: Replica, req: Request_) -> None:
        if req.status != "IN_QUEUE":
            return
        req.status, req.started_at = "IN_PROGRESS", time.monotonic()
        if self.crash_next > 0:
            self.crash_next -= 1
            req.status = "FAILED"
            return
        self._busy += 1
        try:
            if self.stall_next > 0:
                self.stall_next -= 1
                await asyncio.Event().wait()  # the worker died; the provider still says IN_PROGRESS
            ok = await self.runner(req.lease)
        except Exception:
            ok = False  # the container crashed: the provider reports the request failed
        finally:
            self._busy -= 1
        req.status = "COMPLETED" if ok else "FAILED"
        replica.busy_s += time.monotonic() - req.started_at

    # --- figures -------------------------------------------------------------------------------
    def billed_seconds(self) -> float:
        total = 0.0
        for r in self.replicas:
            start = r.started if self.bill_cold_start else (r.ready or r.stopped or r.started)
            life = (r.stopped or time.monotonic()) - start
            step = self.billing_increment_s
            total += -(-life // step) * step if step > 0 else life
        return total

    def busy_seconds(self) -> float:
        return sum(r.busy_s for r in self.replicas)

    def outstanding(self) -> list[Request_]:
        return [r for r in self.requests.values() if r.status in ("IN_QUEUE", "IN_PROGRESS")]

    def live_replicas(self) -> int:
        return sum(1 for r in self.replicas if r.stopped is None)

    def app(self) -> FastAPI:
        return _app(self)


def _app(platform: Platform) -> FastAPI:
    app = FastAPI()

    def authorised(authorization: str | None) -> None:
        if authorization != f"Bearer {platform.api_key}":
            raise HTTPException(401, "bad key")

    @app.post("/run")
    async def run(request: Request, authorization: str = Header(None)) -> dict[str, str]:
        authorised(authorization)
        req = platform.accept((await request.json())["input"])
        await platform.answer_late()
        return {"id": req.id, "status": req.status}

    @app.get("/status/{key}")
    async def status(
        key: str, authorization: str = Header(None), x_inference_id: str = Header("")
    ) -> dict[str, str]:
        """RunPod: /status/<request id>; Verda: /status/<deployment> with X-Inference-Id."""
        authorised(authorization)
        if x_inference_id:
            return {"Id": x_inference_id, "Status": RUNPOD_TO_VERDA[platform._get(x_inference_id).status]}
        return {"id": key, "status": platform._get(key).status}

    @app.post("/cancel/{req_id}")
    async def cancel(req_id: str, authorization: str = Header(None)) -> dict[str, str]:
        authorised(authorization)
        return {"id": req_id, "status": platform.cancel(req_id).status}

    @app.post("/{deployment}/lease")
    async def verda_run(
        request: Request, authorization: str = Header(None), prefer: str = Header("")
    ) -> dict[str, str]:
        authorised(authorization)
        if prefer != "respond-async":
            raise HTTPException(400, "only async requests in this double")
        req = platform.accept(await request.json())
        await platform.answer_late()
        return {"Id": req.id}

    return app


@contextlib.asynccontextmanager
async def serving(app: Any, port: int | None = None) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port inside the running event loop."""
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def simulated_worker(
    job_seconds: float,
    heartbeat_seconds: float,
    fail_users: frozenset[str] = frozenset(),
    crash_in_chain: int = 0,
) -> Runner:
    """The worker core's reporting, without ComfyUI: started event, heartbeats, then complete or
    fail; then, as the push front door does, the request's next job while its chain gives one.
    ``crash_in_chain``: that many times the container dies right after taking a chained job."""
    return SimulatedWorker(job_seconds, heartbeat_seconds, fail_users, crash_in_chain).run


@dataclass
class SimulatedWorker:
    job_seconds: float
    heartbeat_seconds: float
    fail_users: frozenset[str]
    crash_in_chain: int
    client: httpx.AsyncClient | None = None  # one per runner: TLS set-up per job would dominate the bench
    name: str = field(default_factory=lambda: f"simulated-{secrets.token_hex(4)}")  # its WORKER_ID

    async def post(self, url: str, body: dict[str, Any], lease: dict[str, Any]) -> httpx.Response:
        """``body`` with the container's name, as the worker agent sends every call of a request."""
        body = {**body, "worker_id": self.name}
        if self.client is None:
            self.client = httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=200))
        headers = {"Authorization": f"Bearer {lease['reply_token']}"}
        # Sent again after a network error (a keep-alive connection the server just closed, a queue
        # manager restarting), as the worker agent's client does (``QueueClient``; for less long).
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(httpx.TransportError),
            stop=stop_after_delay(RETRY_SECONDS),
            wait=wait_exponential_jitter(multiplier=0.05, max=1.0),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self.client.post(url, json=body, headers=headers)
        raise AssertionError("unreachable")  # pragma: no cover

    async def run(self, lease: dict[str, Any]) -> bool:
        ok, current = True, lease
        for _ in range(100_000):  # bounded: the queue manager ends a chain at its max_jobs_per_request
            ok = await self.run_one(current) and ok
            following = await self.next_in_chain(lease, current["token"])
            if following is None:
                break
            current = following
        return ok

    async def run_one(self, lease: dict[str, Any]) -> bool:
        token, deadline = lease["token"], time.monotonic() + self.job_seconds
        base = f"{lease['reply_url']}/api/leases/{lease['job']['id']}"
        start = {"type": "execution_start", "data": {"prompt_id": lease["job"]["id"]}}
        started = await self.post(f"{base}/events", {"token": token, "events": [start]}, lease)
        if started.status_code == 409:
            return False
        while deadline - time.monotonic() > self.heartbeat_seconds:
            await asyncio.sleep(self.heartbeat_seconds)
            beat = await self.post(f"{base}/heartbeat", {"token": token}, lease)
            if beat.status_code == 409:
                return False
            if beat.json().get("cancel"):  # as the worker: ComfyUI interrupted, the job reported cancelled
                error: dict[str, Any] = {
                    "type": "Cancelled",
                    "message": "the job was cancelled before it finished",
                }
                await self.post(f"{base}/fail", {"token": token, "error": error}, lease)
                return True
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        if lease["job"]["user"] in self.fail_users:
            error = {"type": "OOM", "message": "out of memory", "retryable": False}
            await self.post(f"{base}/fail", {"token": token, "error": error}, lease)
            return True
        done = await self.post(f"{base}/complete", {"token": token, "outputs": []}, lease)
        return done.status_code == 204

    async def next_in_chain(self, first: dict[str, Any], after: str) -> dict[str, Any] | None:
        if not first.get("chain"):
            return None
        url = f"{first['reply_url']}/api/push/{first['chain']}/next"
        reply = await self.post(url, {"after": after}, first)
        if reply.status_code != 200:
            return None
        if self.crash_in_chain > 0:
            self.crash_in_chain -= 1
            raise RuntimeError("the container died holding a chained job")
        return {**reply.json(), "reply_url": first["reply_url"], "reply_token": first["reply_token"]}
