"""Operator commands run inside the queue manager's container (settings from ``QM_*``)::

    python -m services.queue_manager.cli snapshot --out /data/queue.json
    python -m services.queue_manager.cli restore --in /data/queue.json
    python -m services.queue_manager.cli drain --timeout 300

They talk to Redis directly (only the queue manager's container can reach it), so they work
whether or not the HTTP server is up. Exit code 0 means done; 1 means drain timed out with jobs
still running; 2 means a bad file or unreachable Redis (the message says which).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from pydantic import ValidationError
from redis.exceptions import RedisError

from services.queue_manager.main import connect
from services.queue_manager.settings import Settings
from services.queue_manager.snapshot import Snapshot, restore_snapshot, take_snapshot
from services.queue_manager.store import Store

app = typer.Typer(help="Snapshot, restore and drain the workshop queue.", no_args_is_help=True)
T = TypeVar("T")


def _with_store(action: Callable[[Store], Awaitable[T]]) -> T:
    try:
        settings = Settings()
    except ValidationError as exc:
        typer.echo(f"the QM_* settings are not valid: {exc}", err=True)
        raise typer.Exit(2) from None

    async def run() -> T:
        redis = connect(settings)
        try:
            return await action(Store(redis, settings))
        finally:
            await redis.aclose()

    try:
        return asyncio.run(run())
    except RedisError as exc:
        typer.echo(f"cannot reach Redis at QM_REDIS_URL: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def snapshot(out: Annotated[Path, typer.Option("--out", help="file to write the JSON snapshot to")]) -> None:
    """Write every job (waiting, running, finished, dead-lettered) to a JSON file."""
    taken = _with_store(take_snapshot)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(taken.model_dump_json())
    tmp.replace(out)  # never leave a half-written snapshot behind
    typer.echo(f"snapshot of {len(taken.jobs)} jobs written to {out}")


@app.command()
def restore(source: Annotated[Path, typer.Option("--in", help="a file written by `snapshot`")]) -> None:
    """Load a snapshot: waiting and interrupted jobs queue again in their old order."""
    try:
        loaded = Snapshot.model_validate_json(source.read_text())
    except (OSError, ValidationError) as exc:
        typer.echo(f"{source} is not a readable queue snapshot: {exc}", err=True)
        raise typer.Exit(2) from None
    result = _with_store(lambda store: restore_snapshot(store, loaded))
    typer.echo(f"restored {result.restored} jobs ({result.requeued} queued again, {result.skipped} skipped)")


@app.command()
def drain(timeout: Annotated[float, typer.Option(help="seconds to wait for running jobs")] = 300) -> None:
    """Stop dispatch and wait until no job runs (queued jobs stay for the snapshot)."""
    result = _with_store(lambda store: store.drain(timeout))
    typer.echo(f"drained={result.drained} running={result.running} queued={result.queued}")
    if not result.drained:
        sys.exit(1)


if __name__ == "__main__":
    app()
