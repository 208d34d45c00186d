"""Worker registration and long-poll claim (route table: ``services/protocol/workers.py``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status

from services.protocol.workers import Lease, RegisterReply, WorkerRegistration
from services.queue_manager.api.deps import StoreDep, WorkerPool
from services.queue_manager.errors import WorkerInAnotherPool

router = APIRouter(prefix="/api/workers", tags=["workers"])
WORKER_ID_PATH = Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")


async def own_worker(worker_id: str, pool: str, store: StoreDep) -> None:
    """404 for a worker id nobody registered, 403 for one another pool's token registered."""
    registered_pool = await store.worker_pool(worker_id)
    if registered_pool != pool:
        raise WorkerInAnotherPool(worker_id, registered_pool, pool)


@router.post("/register")
async def register(registration: WorkerRegistration, pool: WorkerPool, store: StoreDep) -> RegisterReply:
    """Register (or re-register) a worker of the caller's pool."""
    if registration.capabilities.pool != pool:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"this token belongs to pool {pool!r}, but the worker says it is in pool "
            f"{registration.capabilities.pool!r}: fix the worker's pool or its token",
        )
    return await store.register(registration)


@router.post(
    "/{worker_id}/claim", response_model=Lease, responses={204: {"description": "no job within wait"}}
)
async def claim(
    worker_id: Annotated[str, WORKER_ID_PATH],
    request: Request,
    pool: WorkerPool,
    store: StoreDep,
    wait: Annotated[float, Query(ge=0, le=60, description="seconds to wait for a job")] = 0,
    prepare: Annotated[bool, Query(description="busy: hold the next job, start it later")] = False,
    hold_next: Annotated[
        bool, Query(description="idle: also hold the job after the one leased (Lease.held)")
    ] = False,
    claim_id: Annotated[
        str,
        Query(
            max_length=64,
            pattern=r"^[A-Za-z0-9_-]*$",
            description="idle: the claim's id, sent again with a repeat after a lost reply, which then "
            "gets the same lease",
        ),
    ] = "",
) -> Response:
    """Lease the next job for this worker, waiting up to ``wait`` seconds; 204 when none came."""
    if prepare and hold_next:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "hold_next is for an idle worker's claim, which leases a job and holds the one after it; "
            "a claim with prepare=1 only holds one job: send one of the two",
        )
    await own_worker(worker_id, pool, store)
    wait = min(wait, store.settings.claim_wait_max_seconds)
    gone = request.is_disconnected
    lease = await store.claim(
        worker_id, pool, wait=wait, prepare=prepare, hold_next=hold_next, gone=gone, claim_id=claim_id
    )
    if lease is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    if await request.is_disconnected():  # the worker gave up waiting: nobody holds them
        if lease.prepared:
            await store.release(lease.job.id, lease.token)
        else:
            await store.unclaimed(worker_id, claim_id, lease)
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    # Serialised once here: FastAPI's response_model path would dump, re-validate and dump again
    # the whole workflow graph (the schema still says Lease).
    return Response(lease.model_dump_json(), media_type="application/json")


@router.post("/{worker_id}/drain", status_code=status.HTTP_204_NO_CONTENT)
async def drain(worker_id: Annotated[str, WORKER_ID_PATH], pool: WorkerPool, store: StoreDep) -> Response:
    """The worker is shutting down: it claims no more, finishes or releases its job, then leaves."""
    await own_worker(worker_id, pool, store)
    await store.mark_draining(worker_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{worker_id}/deregister", status_code=status.HTTP_204_NO_CONTENT)
async def deregister(
    worker_id: Annotated[str, WORKER_ID_PATH], pool: WorkerPool, store: StoreDep
) -> Response:
    """The worker is gone for good (a GPU host's models sync that finished): its record leaves the
    admin page. Only the pool's own workers, and none holding a job (409)."""
    await own_worker(worker_id, pool, store)
    await store.deregister(worker_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
