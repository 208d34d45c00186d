"""Operator commands run inside the queue manager's container (settings from ``QM_*``)::

    python -m services.queue_manager.cli snapshot --out /data/queue.json
    python -m services.queue_manager.cli restore --in /data/queue.json
    python -m services.queue_manager.cli drain --timeout 300
    python -m services.queue_manager.cli save      # snapshot + sha256 into the vault (QM_FILES_URL)
    python -m services.queue_manager.cli load      # the morning: restore from the vault, checked

They talk to Redis directly (only the queue manager's container can reach it), so they work
whether or not the HTTP server is up. Exit code 0 means done; 1 means drain timed out with jobs
still running; 2 means a bad file or unreachable Redis (the message says which).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from pydantic import ValidationError
from redis.exceptions import RedisError

from services.queue_manager.queue_admin import DrainResult
from services.queue_manager.settings import Settings
from services.queue_manager.snapshot import (
    RestoreResult,
    Snapshot,
    SnapshotError,
    absent_owners,
    check_carried,
    mark_started,
    open_saved_snapshot,
    open_snapshot_file,
    restore_snapshot,
    save_for_the_night,
    snapshot_json,
    still_running,
    stranded_pools,
)
from services.queue_manager.store import Store, connect
from services.storage import Storage, StorageError, open_storage
from services.storage.local import LocalStorage

app = typer.Typer(help="Snapshot, restore and drain the workshop queue.", no_args_is_help=True)
T = TypeVar("T")


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        typer.echo(f"the QM_* settings are not valid: {exc}", err=True)
        raise typer.Exit(2) from None


def _with_store(action: Callable[[Store], Awaitable[T]]) -> T:
    settings = _settings()

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
    """Write every job (waiting, running, finished, dead-lettered) and every saved file, setting and
    round to a JSON file, streamed (never all of it in memory; never a half-written file left)."""

    async def run(store: Store) -> int:
        await check_carried(store)
        return await LocalStorage(out.parent).put(out.name, snapshot_json(store, datetime.now(UTC)))

    try:
        size = _with_store(run)
    except (StorageError, OSError, SnapshotError) as exc:
        typer.echo(f"cannot write the snapshot to {out}: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"snapshot written to {out} ({size} bytes)")


@app.command()
def restore(source: Annotated[Path, typer.Option("--in", help="a file written by `snapshot`")]) -> None:
    """Load a snapshot: waiting and interrupted jobs queue again in their old order. It is checked
    whole before anything is written, then restored one job and one key at a time."""

    async def run(store: Store) -> RestoreResult:
        return await restore_snapshot(store, await open_snapshot_file(source, str(source)))

    try:
        result = _with_store(run)
    except (SnapshotError, StorageError, OSError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"restored {result.restored} jobs ({result.requeued} queued again, {result.skipped} skipped)")


@app.command()
def drain(timeout: Annotated[float, typer.Option(help="seconds to wait for running jobs")] = 300) -> None:
    """Stop dispatch and wait until no job runs (queued jobs stay for the snapshot)."""

    async def run(store: Store) -> tuple[DrainResult, list[str]]:
        result = await store.drain(timeout)
        return result, [] if result.drained else await still_running(store)

    result, running = _with_store(run)
    typer.echo(f"drained={result.drained} running={result.running} queued={result.queued}")
    if running:
        typer.echo(
            "still running (each that has not ended when the snapshot is taken runs again tomorrow morning): "
            + ", ".join(running)
        )
    if not result.drained:
        sys.exit(1)


def _with_vault(action: Callable[[Store, Storage], Awaitable[T]]) -> T:
    """Run ``action`` with the store and the user-file storage the snapshot lives in; a storage or
    snapshot problem exits 2 with its message (the destroy or up then stops: nothing is lost)."""
    try:
        storage = open_storage(_settings().files_url)
        return _with_store(lambda store: action(store, storage))
    except (StorageError, OSError, SnapshotError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


@app.command()
def save() -> None:
    """The evening: snapshot everything participants see into the vault, with its sha256 (a
    snapshot there that no morning restored is merged in first, never written over)."""

    async def run(store: Store, storage: Storage) -> str:
        saved = await save_for_the_night(store, storage)
        done = f"queue snapshot saved as {saved.key} ({saved.size} bytes)"
        if not saved.running:
            return done
        return (
            f"{done}\n{len(saved.running)} jobs were still running and run again tomorrow morning from the "
            "start, once the GPUs are up (their attempt not counted; what they made tonight stays in the "
            "vault): " + ", ".join(map(str, saved.running))
        )

    typer.echo(_with_vault(run))


def _strays_named(loaded: Snapshot, settings: Settings) -> str:
    """What the organizer must decide about the restored queue: jobs of people no longer in the
    config, and jobs pinned to pools it no longer has."""
    users = {*settings.participants, settings.admin_user}
    absent = absent_owners(loaded, users)
    stranded = stranded_pools(loaded, set(settings.worker_tokens))
    return "".join(
        f"\n{count} waiting jobs of {user}, no longer a participant, run unless you cancel them on the "
        "admin page (or give the name back in the config)"
        for user, count in sorted(absent.items())
    ) + "".join(
        f"\n{count} waiting jobs pinned to pool {pool}, which the config no longer has: no worker can take "
        "them until a pool of that name is back (QM_WORKER_TOKENS); cancel them on the admin page or add "
        "the pool again"
        for pool, count in sorted(stranded.items())
    )


@app.command()
def load() -> None:
    """The morning: restore the vault's snapshot after checking its sha256. Exits 2, restoring
    nothing, when the snapshot is corrupt or missing after the workshop's first day."""

    async def run(store: Store, storage: Storage) -> str:
        loaded = await open_saved_snapshot(storage)
        if loaded is None:
            await store.open_for_the_day()
            await mark_started(storage)
            return "no queue snapshot yet (the workshop's first day): starting with an empty queue"
        result = await restore_snapshot(store, loaded, resume=False)
        await store.open_for_the_day()
        await mark_started(storage)
        return (
            f"restored {result.restored} jobs ({result.requeued} queued again, {result.skipped} skipped) "
            f"and {result.keys} keys"
        ) + _strays_named(loaded.head, store.settings)

    typer.echo(_with_vault(run))


if __name__ == "__main__":
    app()
