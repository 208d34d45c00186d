"""The queue manager's API tests: settings on the test Redis (participants ``ada``/``bob``, admin,
worker pools ``gpu`` and ``cpu``), their request headers, and the job and registration bodies."""

from __future__ import annotations

import base64
from typing import Any

from devkit.servers import TEST_FILES_URL
from services.protocol.jobs import JobSubmit
from services.protocol.workers import WorkerCapabilities, WorkerRegistration
from services.queue_manager.settings import Settings

PASSWORDS = {"ada": "ada-password", "bob": "bob-password"}
ADMIN_PASSWORD = "admin-password"
TOKENS = {"gpu": "gpu-token-0123456789", "cpu": "cpu-token-0123456789"}
PROMPT = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
}


def make_settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "redis_url": redis_url,
        "admin_password": ADMIN_PASSWORD,
        "session_secret": "s" * 32,
        "participants": PASSWORDS,
        "worker_tokens": TOKENS,
        "lease_seconds": 5,
        "retry_backoff_seconds": 0,
        "reap_interval_seconds": 0.1,
        "files_url": TEST_FILES_URL,  # not /var/lib's default
    }
    return Settings(**{**values, **overrides})


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def user_auth(user: str) -> dict[str, str]:
    return basic(user, PASSWORDS[user])


ADMIN = basic("admin", ADMIN_PASSWORD)
GPU = {"Authorization": f"Bearer {TOKENS['gpu']}"}
CPU = {"Authorization": f"Bearer {TOKENS['cpu']}"}


def job(**fields: Any) -> JobSubmit:
    return JobSubmit(prompt=PROMPT, **fields)


def registration(worker_id: str, pool: str = "gpu") -> WorkerRegistration:
    capabilities = WorkerCapabilities(pool=pool, provider="local")
    return WorkerRegistration(worker_id=worker_id, capabilities=capabilities)
