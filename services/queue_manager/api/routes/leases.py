"""What a lease holder reports: heartbeats, events, completion, failure, release.

Each call carries the lease token; anyone else's call is refused with 409 (``StaleLease``), a
call with another pool's token than the holder's with 403 (``WorkerInAnotherPool``), and one with a
push request's reply token that names another container than the request's with 403 (``named``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response, status

from services.protocol.workers import (
    Completion,
    EventBatch,
    Failure,
    HeartbeatReply,
    LeaseCall,
    Release,
    StartCall,
    StartReply,
)
from services.queue_manager.api.deps import HolderDep, JobId, StoreDep, WorkerPool, named
from services.queue_manager.errors import WorkerInAnotherPool

router = APIRouter(prefix="/api/leases/{job_id}", tags=["leases"])
NO_CONTENT = status.HTTP_204_NO_CONTENT


async def held_in_pool(job_id: JobId, holder: HolderDep, store: StoreDep) -> str:
    """The caller's pool, once the job's lease holder is known not to be another pool's worker."""
    await store.check_lease_pool(job_id, holder.pool)
    return holder.pool


LeasePool = Annotated[str, Depends(held_in_pool)]
Beat = Annotated[LeaseCall, Depends(named(LeaseCall))]
Events = Annotated[EventBatch, Depends(named(EventBatch))]
Done = Annotated[Completion, Depends(named(Completion))]
Failed = Annotated[Failure, Depends(named(Failure))]
GiveBack = Annotated[Release, Depends(named(Release))]
STALE: dict[int | str, dict[str, Any]] = {409: {"description": "the lease is not held with this token"}}


@router.post("/heartbeat", responses=STALE)
async def heartbeat(
    job_id: JobId,
    call: Beat,
    pool: LeasePool,
    store: StoreDep,
    wait: Annotated[
        float, Query(ge=0, le=60, description="seconds to hold the reply open for a cancel (<= lease / 2)")
    ] = 0,
    renew: Annotated[bool, Query(description="false: only check the lease (it was just granted)")] = True,
    ran: Annotated[
        bool,
        Query(
            description="true: ComfyUI is done with the job (its outputs may still be on their way to "
            "storage): it holds no GPU, so the pool's maximum job time no longer ends it"
        ),
    ] = False,
) -> HeartbeatReply:
    """Renew the lease; ``cancel`` says the owner wants the job interrupted. With ``wait`` the reply
    comes the moment the owner cancels, or after ``wait`` seconds."""
    reply = await store.heartbeat(job_id, call.token, wait, renew, ran)
    await store.holder_report(call.worker_id, pool, job_id, busy=True)
    return reply


@router.post("/events", status_code=NO_CONTENT, responses=STALE)
async def events(job_id: JobId, batch: Events, _: LeasePool, store: StoreDep) -> Response:
    """Forward ComfyUI events to the job's owner (also renews the lease)."""
    await store.record_events(job_id, batch)
    return Response(status_code=NO_CONTENT)


@router.post("/complete", status_code=NO_CONTENT, responses=STALE)
async def complete(job_id: JobId, completion: Done, pool: LeasePool, store: StoreDep) -> Response:
    """The job succeeded with these outputs (a repeat by the holder is a no-op)."""
    await store.complete(job_id, completion, pool)
    await store.holder_report(completion.worker_id, pool, job_id, busy=False)
    return Response(status_code=NO_CONTENT)


@router.post("/fail", status_code=NO_CONTENT, responses=STALE)
async def fail(job_id: JobId, failure: Failed, pool: LeasePool, store: StoreDep) -> Response:
    """The job failed; retryable failures are requeued until the attempts run out."""
    await store.fail(job_id, failure, pool)
    await store.holder_report(failure.worker_id, pool, job_id, busy=False)
    return Response(status_code=NO_CONTENT)


@router.post("/release", status_code=NO_CONTENT, responses=STALE)
async def release(job_id: JobId, call: GiveBack, pool: LeasePool, store: StoreDep) -> Response:
    """Give the job back unfinished (shutdown, or the worker's ComfyUI is down); the attempt does not
    count, and a job lost in ComfyUI deaths ``QM_MAX_COMFYUI_LOSSES`` times is failed instead."""
    await store.release(job_id, call.token, comfyui_lost=call.comfyui_lost)
    await store.holder_report(call.worker_id, pool, job_id, busy=False)
    return Response(status_code=NO_CONTENT)


@router.post("/start")
async def start(job_id: JobId, call: StartCall, pool: WorkerPool, store: StoreDep) -> StartReply:
    """The worker's GPU is free: start the job it prepared (``claim?prepare=1``) if it is still
    held for it and still next in line, or else lease it the job to run instead; with
    ``hold_next``, the reply also holds the job after that one for the worker (``held``)."""
    registered = await store.worker_pool(call.worker_id)  # a registered worker only, as for claims
    if registered != pool:
        raise WorkerInAnotherPool(call.worker_id, registered, pool)
    return await store.start(job_id, call, pool)
