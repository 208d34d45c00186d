"""A participant's own jobs: submit, list, read, cancel. Nobody sees anyone else's."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import BaseModel

from services.protocol.jobs import Job, JobSubmit
from services.queue_manager.api.deps import CurrentPrincipal, CurrentUser, JobId, StoreDep

router = APIRouter(prefix="/api/jobs", tags=["jobs"])


class CancelReply(BaseModel):
    job_id: str
    outcome: Literal["cancelled", "requested", "finished"]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=Job,
    responses={429: {"description": "queued limit"}},
)
async def submit(body: JobSubmit, principal: CurrentPrincipal, store: StoreDep) -> Response:
    """Queue an API-format ComfyUI workflow; the answer carries the job id and queue position."""
    if body.pool is not None and not principal.admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only the admin may pin a job to a pool: drop 'pool'")
    job = await store.submit(principal.user, body, pool=body.pool)
    # Serialised once: the response_model path would dump, re-validate and dump the graph again.
    return Response(job.model_dump_json(), status_code=status.HTTP_201_CREATED, media_type="application/json")


@router.get("")
async def list_jobs(user: CurrentUser, store: StoreDep) -> list[Job]:
    """Your jobs, newest first (finished ones until their retention ends)."""
    return await store.list_jobs(user)


@router.get("/{job_id}")
async def get_job(job_id: JobId, user: CurrentUser, store: StoreDep) -> Job:
    """One of your jobs, with its queue position while it waits."""
    return await store.get_for(job_id, user)


@router.post("/{job_id}/cancel")
async def cancel(job_id: JobId, user: CurrentUser, store: StoreDep) -> CancelReply:
    """Cancel one of your jobs: removed if waiting, interrupted if running."""
    outcome = await store.cancel(job_id, user=user)
    return CancelReply(job_id=job_id, outcome=outcome)
