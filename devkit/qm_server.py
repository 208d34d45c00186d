"""The queue manager as a real process (uvicorn with uvloop and httptools), for fault tests and
benchmarks that SIGKILL it. Settings travel as ``QM_*`` environment variables, as in production."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from devkit.servers import TEST_FILES_URL, ManagedProcess, free_port, http_get, wait_until

ROOT = Path(__file__).resolve().parents[1]


def qm_env(
    redis_url: str, participants: Mapping[str, str], tokens: Mapping[str, str], **extra: str
) -> dict[str, str]:
    """The environment a queue manager process needs, like the container gets it."""
    return {
        "QM_ENV": "test",
        "QM_REDIS_URL": redis_url,
        "QM_ADMIN_PASSWORD": "admin-password",
        "QM_SESSION_SECRET": "s" * 32,
        "QM_PARTICIPANTS": json.dumps(dict(participants)),
        "QM_WORKER_TOKENS": json.dumps(dict(tokens)),
        "QM_LOG_LEVEL": "WARNING",
        "QM_FILES_URL": TEST_FILES_URL,
        **extra,
    }


@dataclass
class QueueManagerProcess(ManagedProcess):
    env: dict[str, str]
    port: int = 0
    log_path: Path | None = None
    processes: int = 1
    extra_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> QueueManagerProcess:
        self.port = self.port or free_port()
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "services.queue_manager.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
            "--workers",
            str(self.processes),
            *self.extra_args,
        ]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **self.env}, stdout=log, stderr=log
        )
        wait_until(self._ready, timeout=90, what=f"queue manager on port {self.port}")
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"queue manager exited with {self.process.returncode} (log: {self.log_path})")
        return http_get(f"{self.url}/ready", timeout=1).status_code == 200

    def pids(self) -> list[int]:
        """The server process and, with several ``processes``, its workers."""
        if self.process is None:
            return []
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [self.process.pid, *(int(pid) for pid in children.read_text().split())]


@contextlib.contextmanager
def queue_manager(env: dict[str, str], log_path: Path | None = None) -> Iterator[QueueManagerProcess]:
    server = QueueManagerProcess(env, log_path=log_path).start()
    try:
        yield server
    finally:
        server.stop()
