"""ComfyUI as a supervised child process, or an already running server attached by URL.

The child gets the worker's input, output and temp folders and an ``extra_model_paths.yaml`` that
wires in the shared model storage (never copied). When it dies it is started again; anyone running
a job learns of the death through ``death`` (an event per process generation) and fails the job as
retryable, since ComfyUI's queue and history die with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import yaml

from services.worker.comfy_client import ComfyClient, ComfyUnavailableError
from services.worker.job_files import ComfyFolders
from services.worker.settings import WorkerSettings

log = logging.getLogger(__name__)
MODEL_FOLDERS = (
    "checkpoints",
    "vae",
    "loras",
    "controlnet",
    "upscale_models",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "clip",
    "unet",
    "embeddings",
    "style_models",
    "hypernetworks",
    "vae_approx",
)


class ComfyNotReadyError(Exception):
    """ComfyUI did not become ready in time, or exited while starting."""


def extra_model_paths(bases: list[Path]) -> str:
    """``extra_model_paths.yaml`` text: every model folder under each base, first base the default."""
    config = {}
    for index, base in enumerate(bases):
        entry: dict[str, object] = {"base_path": str(base), **{name: name for name in MODEL_FOLDERS}}
        if index == 0:
            entry["is_default"] = True
        config[f"workshop_{index}"] = entry
    return yaml.safe_dump(config, sort_keys=False)


async def wait_ready(client: ComfyClient, limit: float, alive: asyncio.Event | None = None) -> float:
    """Poll ``/system_stats`` until it answers; return the seconds it took."""
    started = time.monotonic()
    delay = 0.02
    while time.monotonic() - started < limit:
        if alive is not None and alive.is_set():
            raise ComfyNotReadyError("ComfyUI exited while starting: see its log above")
        with contextlib.suppress(ComfyUnavailableError):
            await client.system_stats()
            return time.monotonic() - started
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise ComfyNotReadyError(
        f"ComfyUI at {client.base_url} did not answer /system_stats within {limit:.0f}s: check its log, "
        "or raise WORKER_READY_TIMEOUT"
    )


class AttachedComfy:
    """A ComfyUI someone else runs (``WORKER_COMFYUI_URL``): deaths show up as lost jobs only."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.death = asyncio.Event()
        self.up = asyncio.Event()

    async def start(self, client: ComfyClient, limit: float) -> None:
        await wait_ready(client, limit)
        self.up.set()

    async def stop(self) -> None:
        return None


class ComfyProcess:
    """ComfyUI's ``main.py`` (or a stand-in, ``WORKER_COMFYUI_COMMAND``) as a child process."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.url = f"http://127.0.0.1:{settings.comfyui_port}"
        self.death = asyncio.Event()
        self.up = asyncio.Event()  # set while a started process answers; cleared when it dies
        self.restarts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    def command(self) -> list[str]:
        data = self.settings.data_dir
        config = data / "extra_model_paths.yaml"
        bases = [p for p in (self.settings.shared_models_dir, self.settings.models_dir) if p is not None]
        folders = ComfyFolders.under(data)
        for folder in (folders.input, folders.output, folders.temp):
            folder.mkdir(parents=True, exist_ok=True)
        config.write_text(extra_model_paths(bases))
        return [
            *self.settings.launcher,
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.settings.comfyui_port),
            *folders.flags(),
            "--extra-model-paths-config",
            str(config),
            "--disable-auto-launch",
            *self.settings.comfyui_flags,
        ]

    async def start(self, client: ComfyClient, limit: float) -> None:
        self._stopping = False
        await self._spawn()
        await wait_ready(client, limit, self.death)
        self.up.set()
        self._watch = asyncio.create_task(self._supervise(client), name="comfyui-supervisor")

    async def _spawn(self) -> None:
        self.death = asyncio.Event()
        self._process = await asyncio.create_subprocess_exec(*self.command())
        log.info("ComfyUI started (pid %s)", self._process.pid)
        asyncio.get_running_loop().create_task(self._notice_exit(self._process, self.death))

    async def _notice_exit(self, process: asyncio.subprocess.Process, death: asyncio.Event) -> None:
        await process.wait()
        self.up.clear()
        death.set()

    async def _supervise(self, client: ComfyClient) -> None:
        while not self._stopping:
            await self.death.wait()
            if self._stopping:
                return
            self.restarts += 1
            log.error("ComfyUI exited (code %s); restarting (restart %d)", self._returncode(), self.restarts)
            try:
                await self._spawn()
                await wait_ready(client, self.settings.ready_timeout, self.death)
                self.up.set()
            except ComfyNotReadyError as exc:
                log.error("%s", exc)
                await asyncio.sleep(min(30.0, 2.0**self.restarts))

    def _returncode(self) -> int | None:
        return self._process.returncode if self._process else None

    async def stop(self) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), timeout=10)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
