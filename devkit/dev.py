"""``make dev``: the whole platform from this checkout as plain processes, stopped cleanly by Ctrl-C.

Redis, the queue manager (uvicorn), and one pull worker attached to the ComfyUI double, or to a
ComfyUI you already run (``--comfyui-url``). State lives in ``.dev/`` so a restart keeps the queue,
the files and the participants' workflows; ``--fresh`` starts empty. No Docker, no cloud account.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from devkit.qm_server import QueueManagerProcess
from devkit.servers import ManagedProcess, RedisServer, free_port, http_get, wait_until

ROOT = Path(__file__).resolve().parents[1]
POOL = "dev"
DEMO_USERS = ("alice", "bob")


@dataclass(frozen=True)
class Logins:
    """The demo accounts: each participant's password is their name plus ``-dev``."""

    admin_password: str = "admin-dev"  # noqa: S105 - a local development login, never deployed
    worker_token: str = "worker-dev-token"  # noqa: S105 - a local development token, never deployed

    @staticmethod
    def password(user: str) -> str:
        return f"{user}-dev"


def qm_environment(redis_url: str, files: Path, logins: Logins) -> dict[str, str]:
    """``QM_*`` for a development queue manager: demo participants, one pool, files on disk."""
    return {
        "QM_ENV": "development",
        "QM_REDIS_URL": redis_url,
        "QM_ADMIN_PASSWORD": logins.admin_password,
        "QM_PARTICIPANTS": json.dumps({user: logins.password(user) for user in DEMO_USERS}),
        "QM_WORKER_TOKENS": json.dumps({POOL: logins.worker_token}),
        "QM_FILES_URL": files.as_uri(),
        "QM_LOG_LEVEL": "INFO",
    }


def worker_environment(qm_url: str, comfyui_url: str, root: Path, logins: Logins) -> dict[str, str]:
    """``WORKER_*`` for one pull worker attached to ``comfyui_url``, sharing the files folder."""
    return {
        "WORKER_QUEUE_URL": qm_url,
        "WORKER_TOKEN": logins.worker_token,
        "WORKER_POOL": POOL,
        "WORKER_ID": "dev-worker",
        "WORKER_DEVICE": "cpu",
        "WORKER_COMFYUI_URL": comfyui_url,
        "WORKER_DATA_DIR": str(root / "worker"),
        "WORKER_STORAGE_URL": (root / "files").as_uri(),
        "WORKER_MODELS_DIR": str(root / "models"),
    }


@dataclass
class Child(ManagedProcess):
    """A Python module run as a child process, its output going to a log file under ``.dev/``."""

    module: tuple[str, ...]
    env: dict[str, str]
    log: Path

    def start(self) -> Child:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", *self.module],
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=log,
            )
        return self

    def alive(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"{' '.join(self.module)} exited: see {self.log}")
        return True


def comfyui_double(root: Path) -> tuple[Child, str]:
    port = free_port()
    child = Child(
        ("devkit.doubles.comfyui", "--port", str(port), "--base-directory", str(root / "worker")),
        {},
        root / "logs" / "comfyui-double.log",
    ).start()
    url = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: child.alive() and http_get(f"{url}/system_stats", timeout=1).is_success, 60, "ComfyUI double"
    )
    return child, url


@contextlib.contextmanager
def running(process: ManagedProcess) -> Iterator[None]:
    try:
        yield
    finally:
        process.stop()


def banner(qm_url: str, redis_url: str, comfyui_url: str, logins: Logins, root: Path) -> str:
    users = "\n".join(f"    {qm_url}/w/{u}/   login {u} / {logins.password(u)}" for u in DEMO_USERS)
    return (
        f"comfy-workshop is running from this checkout (state in {root}, logs in {root / 'logs'}):\n"
        f"  workspaces:\n{users}\n"
        f"  admin page: {qm_url}/admin   login admin / {logins.admin_password}\n"
        f"  ComfyUI behind the worker: {comfyui_url}\n"
        f"  Redis: {redis_url}\n"
        "Press Ctrl-C to stop everything."
    )


def serve(root: Path, port: int, comfyui_url: str | None) -> None:
    logins = Logins()
    (root / "logs").mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        redis = RedisServer(root / "redis").start()
        stack.enter_context(running(redis))
        qm = QueueManagerProcess(
            qm_environment(redis.url, root / "files", logins),
            port=port,
            log_path=root / "logs" / "queue-manager.log",
        )
        stack.enter_context(running(qm.start()))
        if comfyui_url is None:
            double, comfyui_url = comfyui_double(root)
            stack.enter_context(running(double))
        worker = Child(
            ("services.worker", "pull"),
            worker_environment(qm.url, comfyui_url, root, logins),
            root / "logs" / "worker.log",
        ).start()
        stack.enter_context(running(worker))
        typer.echo(banner(qm.url, redis.url, comfyui_url, logins, root))
        wait_for_stop(worker)


def wait_for_stop(worker: Child) -> None:
    """Block until Ctrl-C or SIGTERM; a worker that dies is reported, not silently left dead."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # also when started with Ctrl-C ignored (``nohup … &``)
    with contextlib.suppress(KeyboardInterrupt):
        assert worker.process is not None
        code = worker.process.wait()
        typer.echo(f"the worker exited with {code}: see {worker.log}", err=True)
    typer.echo("stopping…")


def main(
    comfyui_url: Annotated[
        str | None,
        typer.Option(
            help="attach the worker to this ComfyUI, not the double; start that ComfyUI with "
            "--input-directory <state>/worker/input --output-directory <state>/worker/output "
            "--temp-directory <state>/worker (ComfyUI keeps its temp files in temp/ inside it)"
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="the queue manager's port on 127.0.0.1")] = 8000,
    state: Annotated[Path, typer.Option(help="where Redis, files and logs are kept")] = ROOT / ".dev",
    fresh: Annotated[bool, typer.Option(help="delete the kept state first")] = False,
) -> None:
    """Run the platform from this checkout: Redis, the queue manager and a worker, until Ctrl-C."""
    if fresh:
        shutil.rmtree(state, ignore_errors=True)
    serve(state.resolve(), port, comfyui_url)


if __name__ == "__main__":
    typer.run(main)
