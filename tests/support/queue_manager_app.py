"""The real queue manager app for tests: on a free loopback port (uvicorn, own thread) or in a TestClient.

Participants ``alice``/``bob`` (passwords ``<name>-pw``), admin ``admin``/``admin-pw`` and worker
pool ``gpu`` (token ``gpu-token``); user files in a local directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from devkit.servers import free_port, wait_until
from services.protocol.jobs import OutputFile
from services.protocol.workers import Completion, Lease, WorkerCapabilities, WorkerRegistration
from services.queue_manager.main import create_app
from services.queue_manager.settings import Settings
from services.storage.local import LocalStorage

PARTICIPANTS = ("alice", "bob")
POOL, POOL_TOKEN = "gpu", "gpu-token"
ADMIN, ADMIN_PASSWORD = "admin", "admin-pw"
WORKER_AUTH = {"Authorization": f"Bearer {POOL_TOKEN}"}


def password(user: str) -> str:
    return f"{user}-pw"


def settings_for(redis_url: str, participants: tuple[str, ...] = PARTICIPANTS, **extra: Any) -> Settings:
    return Settings(
        env="development",
        redis_url=redis_url,
        admin_user=ADMIN,
        admin_password=SecretStr(ADMIN_PASSWORD),
        session_secret=SecretStr("test-session-secret-0123456789"),
        participants={user: SecretStr(password(user)) for user in participants},
        **{"worker_tokens": {POOL: SecretStr(POOL_TOKEN)}, **extra},
    )


def build_app(settings: Settings, files: Path) -> FastAPI:
    app = create_app(settings)
    app.state.storage = LocalStorage(files)
    return app


class LiveServer:
    """uvicorn serving ``app`` on ``url`` from its own thread (for browsers, WebSocket clients and
    workers); ``stop`` and ``start`` again at will on the same port, or use it as a context manager."""

    def __init__(self, app: FastAPI) -> None:
        self.app, self.port = app, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> LiveServer:
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", ws="websockets-sansio"
        )
        server = uvicorn.Server(config)
        self.server = server
        self._thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
        self._thread.start()
        wait_until(lambda: server.started, timeout=30, what=f"queue manager on {self.url}")
        return self

    def stop(self) -> None:
        if self.server is not None and self._thread is not None:
            # open sockets and long-polls must not hold it up
            self.server.should_exit = self.server.force_exit = True
            self._thread.join(timeout=15)
        self.server = self._thread = None

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def live_server(settings: Settings, files: Path) -> Iterator[LiveServer]:
    with LiveServer(build_app(settings, files)) as server:
        yield server


def login(client: httpx.Client, user: str, secret: str | None = None) -> httpx.Client:
    """Log ``client`` in through the real login route; it keeps the session cookie."""
    reply = client.post("/api/auth/login", json={"user": user, "password": secret or password(user)})
    reply.raise_for_status()
    return client


def catalogue_registration(
    worker_id: str,
    digest: str,
    catalogue: dict[str, Any],
    extensions: dict[str, str] | None = None,
    device: tuple[str, str] = ("", ""),
) -> WorkerRegistration:
    """A worker of pool ``gpu`` that publishes ``catalogue`` (version ``digest``) and its web
    ``extensions``, as a worker does on start; ``device`` is its ComfyUI's device name and type."""
    caps = WorkerCapabilities(
        pool=POOL, provider="local", gpu=device[0], device_type=device[1], catalogue_hash=digest
    )
    return WorkerRegistration(
        worker_id=worker_id, capabilities=caps, catalogue=catalogue, extensions=extensions or {}
    )


def register_worker(
    client: httpx.Client,
    catalogue: dict[str, Any],
    worker_id: str = "w1",
    digest: str = "cat-v1",
    extensions: dict[str, str] | None = None,
    device: tuple[str, str] = ("test", ""),
) -> dict[str, Any]:
    """Register ``catalogue_registration(...)`` through the worker API."""
    body = catalogue_registration(worker_id, digest, catalogue, extensions, device)
    reply = client.post(
        "/api/workers/register",
        content=body.model_dump_json(),
        headers={**WORKER_AUTH, "Content-Type": "application/json"},
    )
    reply.raise_for_status()
    result: dict[str, Any] = reply.json()
    return result


def run_on_worker(worker: httpx.Client, outputs: list[OutputFile]) -> str:
    """Claim the next job as worker ``w1`` and complete it with ``outputs``; returns its id."""
    claimed = worker.post("/api/workers/w1/claim", params={"wait": 5}, headers=WORKER_AUTH)
    lease = Lease.model_validate(claimed.json())
    done = Completion(token=lease.token, outputs=outputs)
    url = f"/api/leases/{lease.job.id}/complete"
    worker.post(url, json=done.model_dump(mode="json"), headers=WORKER_AUTH).raise_for_status()
    return lease.job.id


def approve_offered_catalogue(url: str, extension: str, route: str = "/extensions") -> None:
    """The admin approves the catalogue a worker offered with web extensions (their JavaScript runs
    in every page) or example workflows, and alice's workspace lists ``extension`` at ``route``."""
    with httpx.Client(base_url=url, auth=(ADMIN, ADMIN_PASSWORD)) as admin:
        wait_until(lambda: admin.get("/api/admin/catalogues").json()["pending"], what="the worker's offer")
        offers: list[dict[str, Any]] = admin.get("/api/admin/catalogues").json()["pending"]
        for offer in offers:
            admin.post(f"/api/admin/catalogues/{offer['digest']}/approve").raise_for_status()
    with httpx.Client(base_url=url, auth=("alice", password("alice"))) as alice:
        wait_until(lambda: extension in alice.get(f"/w/alice/api{route}").json(), what=f"{extension} listed")
