"""``python -m services.worker``: the worker agent's commands (settings from ``WORKER_*``)."""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import sys
from typing import TYPE_CHECKING

import typer
import uvicorn
from pydantic import ValidationError

from services.worker.settings import WorkerSettings

if TYPE_CHECKING:
    from services.worker.queue_client import QueueClient


def _startup_errors() -> tuple[type[Exception], ...]:
    from services.storage import StorageError
    from services.worker.agent import WarmupFailedError
    from services.worker.models import ModelError
    from services.worker.queue_client import QueueRefusedError
    from services.worker.supervisor import ComfyNotReadyError

    return (QueueRefusedError, ComfyNotReadyError, ModelError, WarmupFailedError, StorageError)


app = typer.Typer(
    help="comfy-workshop worker agent: runs participants' jobs on ComfyUI.", no_args_is_help=True
)


def _settings() -> WorkerSettings:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return WorkerSettings()
    except ValidationError as exc:
        typer.echo(f"invalid worker settings (WORKER_* environment variables):\n{exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def pull() -> None:
    """Register with the queue manager and run jobs claimed from it until SIGTERM (instances, local GPUs)."""
    from services.worker.agent import Agent
    from services.worker.pull import run_pull
    from services.worker.queue_client import QueueClient

    settings = _settings()
    queue = QueueClient(settings.queue_url, settings.token.get_secret_value(), settings.retry_seconds)
    try:
        asyncio.run(run_pull(Agent(settings), queue))
    except _startup_errors() as exc:
        typer.echo(f"worker stopped: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command("serve-push")
def serve_push() -> None:
    """Serve the push handler for Verda serverless containers: POST /lease, GET /health."""
    from services.worker.push import PushServer, verda_app

    settings = _settings()
    # uvicorn finishes the running request (its job; it takes no further one) within the grace
    # period, else cancels it, which releases the lease; it then re-raises SIGTERM to the handler
    # below, so the container exits 0.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    config = uvicorn.Config(
        verda_app(settings),
        host=settings.push_host,
        port=settings.push_port,
        log_level="info",
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
    )
    PushServer(config).run()


@app.command()
def runpod() -> None:
    """Run as a RunPod serverless worker (handler gets the lease in event["input"])."""
    from services.worker.push import start_runpod

    _settings()
    start_runpod()


@app.command()
def health() -> None:
    """Exit 0 when this worker's ComfyUI answers (the image's HEALTHCHECK)."""
    import httpx

    settings = WorkerSettings()
    url = settings.comfyui_url or f"http://127.0.0.1:{settings.comfyui_port}"
    try:
        httpx.get(f"{url}/system_stats", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        typer.echo(f"ComfyUI at {url} is not healthy: {exc}", err=True)
        raise typer.Exit(1) from exc


async def _leave(queue: QueueClient, worker_id: str) -> None:
    """Take the finished sync off the admin page; the models are in place whatever it answers."""
    import httpx

    from services.worker.queue_client import QueueRefusedError

    try:
        await queue.deregister(worker_id)
    except (httpx.HTTPError, QueueRefusedError) as exc:
        typer.echo(f"the admin page may show {worker_id} until it is gone: {exc}", err=True)


@app.command("sync-models")
def sync_models() -> None:
    """Make the manifest's models present and verified, then exit (a GPU host fills its models folder
    or shared volume this way before its workers start). A progress bar here, and on the admin page
    when WORKER_TOKEN is set: the sync shows there as starting while it runs, and leaves once its
    models are ready (a failed sync stays, with its reason, until it shows as gone)."""
    from services.worker.models import ModelError, ensure_models, queue_reporter
    from services.worker.queue_client import QueueClient

    settings = _settings()
    if settings.models_manifest is None and not settings.models_manifest_json:
        typer.echo("WORKER_MODELS_MANIFEST(_JSON) is not set: nothing to sync", err=True)
        raise typer.Exit(2)

    async def sync() -> list[str]:
        token = settings.token.get_secret_value()
        queue = QueueClient(settings.queue_url, token, retry_seconds=10.0)
        try:
            held = await ensure_models(settings, report=queue_reporter(settings, queue) if token else None)
            if token:
                await _leave(queue, settings.worker_id)
            return held
        finally:
            await queue.aclose()

    try:
        held = asyncio.run(sync())
    except ModelError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"{len(held)} model files ready")


if __name__ == "__main__":
    sys.exit(app())
