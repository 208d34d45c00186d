"""A pytest plugin that runs ComfyUI's own ``tests/execution`` through a comfy-workshop workspace.

Loaded by ``devkit/comfyui_suite.py`` into the pytest process it starts in ComfyUI's checkout and
Python (``-p comfy_workshop_shim``, this folder on ``PYTHONPATH``): standard library only, since it
runs in ComfyUI's venv, not ours. What it changes in the suite, nothing else:

* The suite's client talks to ``http://<listen>:<port>/<route>`` and ``ws://<listen>:<port>/ws``: those
  go to the participant's workspace instead (``<workspace>/<route>``, ``<workspace>/ws``) with her
  session cookie on every request and on the socket. Other addresses are left alone.
* Each test class starts a fresh server (``subprocess.Popen(['python', 'main.py', ...])``): that
  starts the real ComfyUI with the suite's arguments (its own output, input and temp folders, and the
  workshop's extension, as a worker's own ComfyUI loads it) and a
  pull worker of this checkout attached to it, empties the participant's queue and history, and
  returns once the worker is idle; the class's ``kill()`` stops both.

The settings come as JSON in ``COMFY_WORKSHOP_SUITE`` (``SuiteConfig``).
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_VARIABLE = "COMFY_WORKSHOP_SUITE"
READY_SECONDS = 300.0  # a CPU ComfyUI on two busy cores answers in 5-60 s; the worker then registers
STOP_SECONDS = 30.0
EXTENSION = "services/worker/comfyui_extension"  # the worker's ComfyUI loads it (supervisor.EXTENSION_DIR)
FOLDER_ARGS = ("--output-directory", "--input-directory", "--temp-directory")
_ORIGINAL_URLOPEN = urllib.request.urlopen  # the plugin's own calls, and every other address
_ORIGINAL_POPEN = subprocess.Popen


@dataclass(frozen=True)
class SuiteConfig:
    """Where the workspace is, how to log in to it, and how to start a worker."""

    workspace: str  # http://127.0.0.1:<port>/w/<user>
    cookie: str  # the participant's session: qm_session=...
    admin: str  # an Authorization header for the admin API (to see the worker idle)
    queue_url: str  # http://127.0.0.1:<port>
    worker_python: str
    worker_cwd: str
    worker_env: dict[str, str]
    logs: str

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> SuiteConfig:
        raw = (environ if environ is not None else dict(os.environ)).get(CONFIG_VARIABLE)
        if not raw:
            raise RuntimeError(
                f"{CONFIG_VARIABLE} is not set: run the suite with python -m devkit.comfyui_suite"
            )
        return cls(**json.loads(raw))


def workspace_url(url: str, server: str, workspace: str) -> str:
    """``url`` on the suite's server (``host:port``) moved to the workspace; any other URL as is."""
    parts = urllib.parse.urlsplit(url)
    if parts.netloc != server:
        return url
    base = urllib.parse.urlsplit(workspace)
    scheme = {"http": base.scheme, "ws": "wss" if base.scheme == "https" else "ws"}.get(
        parts.scheme, parts.scheme
    )
    path = base.path.rstrip("/") + "/" + parts.path.lstrip("/")
    return urllib.parse.urlunsplit((scheme, base.netloc, path, parts.query, parts.fragment))


def is_server_start(args: Any) -> bool:
    """The suite's ``_server`` fixtures start ComfyUI as ``['python', 'main.py', ...]``."""
    return isinstance(args, Sequence) and not isinstance(args, str) and "main.py" in list(args)[:3]


def comfyui_command(
    args: Sequence[str], python: str, folders: Path, extension: Path | None = None
) -> list[str]:
    """The suite's ComfyUI command with this venv's Python and the class's own folders (the worker
    stages inputs into ``input/`` and reads ``output/`` and ``temp/`` under its data folder), and the
    workshop's extension loaded from ``extension`` (an ``extra_model_paths.yaml``), as a worker's own
    ComfyUI has it."""
    rest = list(args)[list(args).index("main.py") + 1 :]
    kept: list[str] = []
    skip = False
    for arg in rest:
        if skip:
            skip = False
            continue
        if arg in FOLDER_ARGS:
            skip = True
            continue
        kept.append(arg)
    return [
        python,
        "main.py",
        *kept,
        "--output-directory",
        str(folders / "output"),
        "--input-directory",
        str(folders / "input"),
        "--temp-directory",
        str(folders),
        *(["--extra-model-paths-config", str(extension)] if extension is not None else []),
    ]


def argument(args: Sequence[str], name: str, default: str) -> str:
    values = list(args)
    return values[values.index(name) + 1] if name in values[:-1] else default


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    """``devkit.servers.wait_until``, which this module cannot import (it runs in ComfyUI's venv)."""
    deadline = time.monotonic() + seconds
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{what} not reached within {seconds:.0f} s (last error: {last!r})")


def _call(url: str, headers: dict[str, str], body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={**headers, "Content-Type": "application/json"})  # noqa: S310 - the loopback workspace
    with _ORIGINAL_URLOPEN(request, timeout=10) as reply:
        text = reply.read()
    return json.loads(text) if text else None


class ServerStandIn:
    """What the suite's ``subprocess.Popen`` of ComfyUI returns: ComfyUI and its worker, stopped
    together by ``kill()``."""

    _numbers = itertools.count(1)

    def __init__(self, args: Sequence[str], config: SuiteConfig) -> None:
        self.config = config
        number = next(self._numbers)
        self.worker_id = f"suite-{number}"
        folders = Path(config.logs) / f"server-{number}"
        (folders / "input").mkdir(parents=True, exist_ok=True)
        (folders / "output").mkdir(parents=True, exist_ok=True)
        port = argument(args, "--port", "8188")
        extension = folders / "workshop-extension.yaml"
        extension.write_text(f"comfy_workshop:\n    custom_nodes: {Path(config.worker_cwd) / EXTENSION}\n")
        command = comfyui_command(args, sys.executable, folders, extension)
        with open(folders / "comfyui.log", "ab") as log:
            self.comfyui = _ORIGINAL_POPEN(command, stdout=log, stderr=log)
        env = {
            **os.environ,
            **config.worker_env,
            "WORKER_ID": self.worker_id,
            "WORKER_COMFYUI_URL": f"http://127.0.0.1:{port}",
            "WORKER_DATA_DIR": str(folders),
            "WORKER_WARMUP": "false",  # the suite expects a fresh ComfyUI: nothing cached
        }
        env.pop("PYTHONPATH", None)
        with open(folders / "worker.log", "ab") as log:
            self.worker = _ORIGINAL_POPEN(
                [config.worker_python, "-m", "services.worker", "pull"],
                cwd=config.worker_cwd,
                env=env,
                stdout=log,
                stderr=log,
            )
        self.pid = self.comfyui.pid
        self.returncode: int | None = None
        self._fresh_workspace()
        wait_for(self._worker_idle, READY_SECONDS, f"worker {self.worker_id} idle on ComfyUI port {port}")

    def _fresh_workspace(self) -> None:
        """A fresh server has no queue and no history: neither has the workspace then."""
        cookie = {"Cookie": self.config.cookie}
        _call(f"{self.config.workspace}/api/queue", cookie, {"clear": True})
        _call(f"{self.config.workspace}/api/history", cookie, {"clear": True})

    def _worker_idle(self) -> bool:
        for process in (self.comfyui, self.worker):
            if process.poll() is not None:
                raise RuntimeError(
                    f"{process.args!r} exited with {process.returncode}: see {self.config.logs}"
                )
        workers = _call(f"{self.config.queue_url}/api/admin/workers", {"Authorization": self.config.admin})
        return any(w["worker_id"] == self.worker_id and w["state"] == "idle" for w in workers)

    def poll(self) -> int | None:
        return self.comfyui.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.comfyui.wait(timeout)

    def terminate(self) -> None:
        self.kill()

    def kill(self) -> None:
        """The worker leaves first (SIGTERM: it drains), then ComfyUI goes."""
        self.worker.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.worker.wait(STOP_SECONDS)
        self.worker.kill()
        self.worker.wait()
        self.comfyui.kill()
        self.returncode = self.comfyui.wait()


def with_session(
    request: str | urllib.request.Request, server: str, config: SuiteConfig
) -> urllib.request.Request:
    """A ``urlopen`` argument (URL or ``Request``) moved to the workspace with the session cookie."""
    if isinstance(request, str):
        request = urllib.request.Request(request)  # noqa: S310 - the suite's own URLs
    moved = workspace_url(request.full_url, server, config.workspace)
    if moved == request.full_url:
        return request
    copy = urllib.request.Request(  # noqa: S310 - moved to the loopback workspace
        moved, data=request.data, headers=dict(request.header_items()), method=request.get_method()
    )
    copy.add_header("Cookie", config.cookie)
    return copy


def install(server: str, config: SuiteConfig) -> None:
    """Point the suite's client and server start at the workspace (see the module's docstring)."""

    def urlopen(request: Any, *args: Any, **kwargs: Any) -> Any:
        return _ORIGINAL_URLOPEN(with_session(request, server, config), *args, **kwargs)

    def popen(args: Any, *rest: Any, **kwargs: Any) -> Any:
        if is_server_start(args):
            return ServerStandIn(args, config)
        return _ORIGINAL_POPEN(args, *rest, **kwargs)

    urllib.request.urlopen = urlopen  # type: ignore[assignment]
    subprocess.Popen = popen  # type: ignore[assignment, misc]
    websocket: Any = importlib.import_module("websocket")
    connect = websocket.WebSocket.connect

    def connect_to_workspace(self: Any, url: str, **options: Any) -> Any:
        moved = workspace_url(url, server, config.workspace)
        if moved != url:
            options["header"] = [*options.get("header", []), f"Cookie: {config.cookie}"]
        return connect(self, moved, **options)

    websocket.WebSocket.connect = connect_to_workspace


def pytest_configure(config: Any) -> None:
    server = f"{config.getoption('listen')}:{config.getoption('port')}"
    install(server, SuiteConfig.from_environment())
