"""Worker tests run the agent against the ComfyUI double and, where a queue is involved, the real
queue manager (uvicorn on loopback, own thread) on the real test Redis."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from services.protocol.jobs import Job
from services.storage import Storage
from services.storage.local import LocalStorage
from services.worker.agent import Agent
from services.worker.pull import PullWorker
from services.worker.queue_client import QueueClient
from services.worker.settings import WorkerSettings
from tests.doubles.comfyui import ComfyUIDouble
from tests.support.queue_manager_app import POOL, POOL_TOKEN, build_app, password, settings_for
from tests.support.servers import free_port, wait_until

GRAPH: dict[str, Any] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "t"}},
}


def graph(color: int = 0, batch: int = 1, prefix: str = "t") -> dict[str, Any]:
    """A fresh (uncached) no-model graph: vary ``color`` to defeat ComfyUI's cache."""
    inputs = {"width": 64, "height": 64, "batch_size": batch, "color": color}
    return {
        **GRAPH,
        "1": {"class_type": "EmptyImage", "inputs": inputs},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


class QueueManagerServer:
    """The real queue manager under uvicorn on a fixed loopback port; stop and start it again at will."""

    def __init__(self, app: FastAPI) -> None:
        self.app, self.port = app, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", ws="websockets-sansio"
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
        self._thread.start()
        wait_until(lambda: server.started, timeout=30, what=f"queue manager on {self.url}")

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = self._server.force_exit = True  # do not wait for long-polls
            self._thread.join(timeout=15)
        self._server = self._thread = None


@pytest.fixture
def files(tmp_path: Path) -> Path:
    return tmp_path / "files"


@pytest.fixture
def comfy(tmp_path: Path) -> Iterator[ComfyUIDouble]:
    with ComfyUIDouble(tmp_path / "comfy") as double:
        yield double


@pytest.fixture
def qm_factory(redis_url: str, files: Path) -> Iterator[Callable[..., QueueManagerServer]]:
    """Start the real queue manager with a given lease term (seconds) and other settings."""
    servers: list[QueueManagerServer] = []

    def start(lease_seconds: float = 3.0, **extra: Any) -> QueueManagerServer:
        settings = settings_for(
            redis_url,
            lease_seconds=lease_seconds,
            reap_interval_seconds=0.1,
            retry_backoff_seconds=0,
            **extra,
        )
        server = QueueManagerServer(build_app(settings, files))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def qm(qm_factory: Callable[..., QueueManagerServer]) -> QueueManagerServer:
    return qm_factory()


def worker_settings(comfy: ComfyUIDouble, qm_url: str, tmp_path: Path, **extra: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "queue_url": qm_url,
        "token": POOL_TOKEN,
        "pool": POOL,
        "provider": "local",
        "worker_id": "w-test",
        "comfyui_url": comfy.url,
        "data_dir": comfy.folders.input.parent,  # the folders ComfyUI uses
        "storage_url": f"file://{tmp_path}/files",
        "ws_silence_seconds": 0.5,
        "poll_seconds": 0.1,
        "retry_seconds": 30.0,
        "shutdown_grace_seconds": 5.0,
    }
    return WorkerSettings(**{**values, **extra})


def child_worker_settings(comfy: ComfyUIDouble, qm_url: str, tmp_path: Path, **extra: Any) -> WorkerSettings:
    """A worker that starts the ComfyUI double as its own child process, as on a GPU box."""
    double = [sys.executable, "-m", "tests.doubles.comfyui", "--node-seconds", "0.3", "--progress-steps", "3"]
    values: dict[str, Any] = {
        "comfyui_url": None,
        "comfyui_command": double,
        "comfyui_port": free_port(),
        "warmup": False,
        "ready_timeout": 30,
    }
    return worker_settings(comfy, qm_url, tmp_path, **{**values, **extra})


class RunningWorker:
    def __init__(self, agent: Agent, worker: PullWorker, task: asyncio.Task[None]) -> None:
        self.agent, self.worker, self.task = agent, worker, task


@contextlib.asynccontextmanager
async def pull_worker(
    settings: WorkerSettings, storage: Storage | None = None
) -> AsyncIterator[RunningWorker]:
    """An agent attached to the double, pulling from the queue manager until the block ends."""
    agent = Agent(settings, storage or LocalStorage(Path(settings.storage_url.removeprefix("file://"))))
    queue = QueueClient(settings.queue_url, settings.token.get_secret_value(), settings.retry_seconds)
    await agent.start()
    worker = PullWorker(agent, queue)
    task = asyncio.create_task(worker.run())
    try:
        yield RunningWorker(agent, worker, task)
    finally:
        worker.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=15)
        await agent.stop()
        await queue.aclose()


def participant(qm: QueueManagerServer, user: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=qm.url, auth=(user, password(user)), timeout=10)


@pytest.fixture
async def alice(qm: QueueManagerServer) -> AsyncIterator[httpx.AsyncClient]:
    async with participant(qm, "alice") as client:
        yield client


def put_input(files: Path, user: str, name: str, data: bytes) -> None:
    """A participant's uploaded input file, as the queue manager stores it."""
    path = files / "users" / user / "input" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


async def submit(client: httpx.AsyncClient, prompt: dict[str, Any], **extra: Any) -> str:
    reply = await client.post("/api/jobs", json={"prompt": prompt, **extra})
    assert reply.status_code == 201, reply.text
    return str(reply.json()["id"])


async def finished(client: httpx.AsyncClient, job_id: str, timeout: float = 20.0) -> Job:
    """Wait (bounded) until the job reaches a final state and return it."""
    async with asyncio.timeout(timeout):
        while True:
            job = Job.model_validate((await client.get(f"/api/jobs/{job_id}")).json())
            if job.state.finished:
                return job
            await asyncio.sleep(0.05)  # polling the participant API for a state change
