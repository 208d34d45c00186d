"""ComfyUI as a supervised child process, or an already running server attached by URL.

The child gets the worker's input, output and temp folders and an ``extra_model_paths.yaml`` that
wires in the shared model storage (never copied). When it dies it is started again; anyone running
a job learns of the death through ``death`` (an event per ComfyUI generation) and gives the job
back, since ComfyUI's queue and history die with it.

``up`` is set while ComfyUI answers; the worker claims only then. Whoever finds ComfyUI gone or
silent (a job's call that failed, the socket closing) calls ``lost``: ``up`` is cleared and
``/system_stats`` is probed until it answers again, however long that takes. An attached ComfyUI
is someone else's to restart; a child that is alive but silent for ``comfyui_timeout`` is killed,
and restarted like any other death.
"""

from __future__ import annotations

import abc
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


STUCK_POLL_SECONDS = 1.0  # how often a stuck attached ComfyUI is asked whether it holds a prompt still


EXTENSION_DIR = Path(__file__).resolve().parent / "comfyui_extension"


class ComfyNotReadyError(Exception):
    """ComfyUI did not become ready in time, or exited while starting."""


def extra_model_paths(bases: list[Path]) -> str:
    """``extra_model_paths.yaml`` text: every model folder under each base, first base the default,
    and the workshop's own extension as a custom-nodes folder (``comfyui_extension``: it says which
    node classes check their own inputs)."""
    config: dict[str, dict[str, object]] = {}
    for index, base in enumerate(bases):
        entry: dict[str, object] = {"base_path": str(base), **{name: name for name in MODEL_FOLDERS}}
        if index == 0:
            entry["is_default"] = True
        config[f"workshop_{index}"] = entry
    config["comfy_workshop"] = {"custom_nodes": str(EXTENSION_DIR)}
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


async def wait_back(client: ComfyClient) -> None:
    """Probe ``/system_stats`` until ComfyUI answers again, with no time limit (an outage may last)."""
    delay = 0.05
    while True:
        try:
            await client.system_stats()
            return
        except ComfyUnavailableError:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)


class ComfyServer(abc.ABC):
    """What both kinds share: ``up`` while ComfyUI answers, ``death`` per generation, ``lost``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.death = asyncio.Event()
        self.up = asyncio.Event()
        self.problem = ""  # why no job can run here until someone acts, and the fix ('' = none)
        self._recovery: asyncio.Task[None] | None = None

    def lost(self, client: ComfyClient, reason: str) -> None:
        """ComfyUI was found gone or silent: no claims until it answers again."""
        if not self.up.is_set():
            return  # already known, and already being waited for
        log.error("ComfyUI lost (%s): no new jobs until it answers again", reason)
        self.up.clear()
        self._recovery = asyncio.create_task(self._recover(client), name="comfyui-recovery")

    @abc.abstractmethod
    def stuck(self, client: ComfyClient, reason: str) -> None:
        """ComfyUI answers but goes on running a prompt it was told to stop (``reason``)."""

    @abc.abstractmethod
    async def _recover(self, client: ComfyClient) -> None:
        """Wait until ComfyUI answers again, then set ``up``."""

    def _stop_recovery(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()


class AttachedComfy(ComfyServer):
    """A ComfyUI someone else runs (``WORKER_COMFYUI_URL``): it is waited for, never restarted."""

    async def start(self, client: ComfyClient, limit: float) -> None:
        await wait_ready(client, limit)
        self.up.set()

    def stuck(self, client: ComfyClient, reason: str) -> None:
        """Someone else's to restart: said in the log and on the admin page (``problem``, naming the
        fix), and no claims until ComfyUI holds no prompt (restarted, or the node ended at last); a
        job taken meanwhile would only wait for the prompt and go back, again and again."""
        if self.problem:
            return  # already known, and already being waited for
        self.problem = (
            f"{reason}: restart ComfyUI at {self.url} to free the GPU; this worker takes no job until "
            "ComfyUI holds no prompt"
        )
        log.error("%s", self.problem)
        self.up.clear()
        self._stop_recovery()
        self._recovery = asyncio.create_task(self._until_free(client), name="comfyui-stuck")

    async def _until_free(self, client: ComfyClient) -> None:
        while True:
            with contextlib.suppress(ComfyUnavailableError):
                running, pending = await client.queue()
                if not running and not pending:
                    break
            await asyncio.sleep(STUCK_POLL_SECONDS)
        self.problem = ""
        self.up.set()
        log.info("ComfyUI at %s holds no prompt any more: claiming resumes", self.url)

    async def _recover(self, client: ComfyClient) -> None:
        # ``death`` is left alone: a running job learns from ComfyUI itself whether it still has
        # the job (a dropped socket alone does not mean that ComfyUI lost it).
        await wait_back(client)
        self.up.set()
        log.info("ComfyUI at %s answers again: claiming resumes", self.url)

    async def stop(self) -> None:
        self._stop_recovery()


class ComfyProcess(ComfyServer):
    """ComfyUI's ``main.py`` (or a stand-in, ``WORKER_COMFYUI_COMMAND``) as a child process."""

    def __init__(self, settings: WorkerSettings) -> None:
        super().__init__(f"http://127.0.0.1:{settings.comfyui_port}")
        self.settings = settings
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

    def stuck(self, client: ComfyClient, reason: str) -> None:
        """Killed, and restarted like any other death: nothing else frees the GPU of a node that hangs."""
        process = self._process
        if process is None or process.returncode is not None:
            return  # already gone: the supervisor restarts it
        log.error("%s: killing ComfyUI (pid %s) to free the GPU", reason, process.pid)
        self.up.clear()  # no claims until the restarted one answers
        process.kill()

    def _returncode(self) -> int | None:
        return self._process.returncode if self._process else None

    async def _recover(self, client: ComfyClient) -> None:
        """Alive but silent: wait for an answer, or kill it after ``comfyui_timeout`` (an exit is
        the supervisor's to handle: it restarts the process and sets ``up``)."""
        process, limit = self._process, self.settings.comfyui_timeout
        try:
            await wait_ready(client, limit, self.death)
        except ComfyNotReadyError:
            if process is self._process and process is not None and process.returncode is None:
                log.error("ComfyUI (pid %s) has not answered for %.0fs: killing it", process.pid, limit)
                process.kill()
            return
        self.up.set()
        log.info("ComfyUI answers again: claiming resumes")

    async def stop(self) -> None:
        self._stopping = True
        self._stop_recovery()
        if self._watch is not None:
            self._watch.cancel()
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), timeout=10)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
