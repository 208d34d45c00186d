"""The organizer's API: queue, workers, node catalogue approval, users, pause/resume, priorities,
cancel, dead letters, drain, snapshot and restore. Every route needs the admin login."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from services.protocol.jobs import Job
from services.queue_manager.api.deps import AdminUser, JobId, LoginsDep, StoreDep, shared
from services.queue_manager.api.routes.jobs import CancelReply
from services.queue_manager.auth import Authenticator
from services.queue_manager.catalogues import CatalogueState
from services.queue_manager.errors import UnknownUser
from services.queue_manager.queue_admin import DrainResult, QueueOverview, UserSummary
from services.queue_manager.registry import WorkerInfo
from services.queue_manager.settings import USER_NAME
from services.queue_manager.snapshot import RestoreResult, Snapshot, restore_by_organizer, snapshot_download

router = APIRouter(prefix="/api/admin", tags=["admin"])
UserName = Annotated[str, Path(pattern=f"^{USER_NAME.pattern}$", description="a participant's name")]
Digest = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
MAX_DRAIN_SECONDS = 100
"""The longest a drain here waits: under the public site's 120 s for an answer (nginx's
``proxy_read_timeout`` of ``location /``), which cuts a longer wait off with a 504."""


async def known_user(user: UserName, request: Request, store: StoreDep) -> str:
    """A name the admin's user actions may take: a participant's, the admin's, or that of anyone
    with jobs (a participant since removed from the settings); 404 for a typo."""
    auth = shared(request, "auth", Authenticator)
    if user in auth.participants or user == auth.admin_user or await store.submitted(user):
        return user
    raise UnknownUser(user)


KnownUser = Annotated[str, Depends(known_user)]


class PriorityChange(BaseModel):
    priority: int = Field(ge=-100, le=100, description="higher runs first under 'priority' scheduling")


class UserPriorityReply(BaseModel):
    user: str
    priority: int
    moved: int


class SessionsEnded(BaseModel):
    user: str
    ended: int = Field(description="how many of the user's login sessions were open")


@router.get("/queue")
async def queue(_: AdminUser, store: StoreDep) -> QueueOverview:
    """Every waiting, running, backing-off and dead-lettered job, in dispatch order."""
    return await store.overview()


@router.get("/workers")
async def workers(_: AdminUser, store: StoreDep) -> list[WorkerInfo]:
    """Registered workers with their state, current job and last-seen time."""
    return await store.list_workers()


@router.get("/catalogues")
async def catalogues(_: AdminUser, store: StoreDep) -> CatalogueState:
    """The node catalogue version participants get, and the versions waiting for approval."""
    return await store.catalogue_state()


@router.post("/catalogues/{digest}/approve", status_code=status.HTTP_204_NO_CONTENT)
async def approve_catalogue(digest: Digest, _: AdminUser, store: StoreDep) -> Response:
    """Serve this waiting catalogue version (and its web extensions) to every workspace."""
    await store.approve_catalogue(digest)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/users")
async def users(_: AdminUser, store: StoreDep) -> list[UserSummary]:
    """Users who submitted, with priority and queued/running counts."""
    return await store.users()


@router.post("/pause", status_code=status.HTTP_204_NO_CONTENT)
async def pause(_: AdminUser, store: StoreDep) -> Response:
    """Stop handing out jobs (running ones continue)."""
    await store.pause()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/resume", status_code=status.HTTP_204_NO_CONTENT)
async def resume(_: AdminUser, store: StoreDep) -> Response:
    """Hand out jobs again (409 before the morning's restore ran, with ``QM_RESTORE_FIRST``)."""
    await store.resume_by_organizer()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/jobs/{job_id}/priority")
async def job_priority(job_id: JobId, change: PriorityChange, _: AdminUser, store: StoreDep) -> Job:
    """Set one job's priority."""
    return await store.set_job_priority(job_id, change.priority)


@router.post("/users/{user}/priority")
async def user_priority(
    user: KnownUser, change: PriorityChange, _: AdminUser, store: StoreDep
) -> UserPriorityReply:
    """Set a user's priority bonus for their waiting and future jobs."""
    moved = await store.set_user_priority(user, change.priority)
    return UserPriorityReply(user=user, priority=change.priority, moved=moved)


@router.delete("/users/{user}/sessions")
async def end_sessions(user: KnownUser, _: AdminUser, logins: LoginsDep) -> SessionsEnded:
    """Log a user out everywhere: every session cookie of theirs stops working at once (a lost
    laptop, a shared screen). HTTP Basic still works for whoever knows the password."""
    return SessionsEnded(user=user, ended=await logins.sessions.revoke(user))


@router.post("/jobs/{job_id}/cancel")
async def cancel(job_id: JobId, _: AdminUser, store: StoreDep) -> CancelReply:
    """Cancel anyone's job."""
    outcome = await store.cancel(job_id)
    return CancelReply(job_id=job_id, outcome=outcome)


@router.post("/dead/{job_id}/requeue")
async def requeue_dead(job_id: JobId, _: AdminUser, store: StoreDep) -> Job:
    """Put a dead-lettered job back in line with fresh attempts."""
    return await store.requeue_dead(job_id)


@router.post("/drain")
async def drain(_: AdminUser, store: StoreDep, seconds: Annotated[float, Query(ge=0)] = 60) -> DrainResult:
    """Pause dispatch and wait (up to ``seconds``, at most ``MAX_DRAIN_SECONDS``) until no job is
    running."""
    if seconds > MAX_DRAIN_SECONDS:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"a drain here waits {MAX_DRAIN_SECONDS} s at most (the site answers within 120 s): drain again, "
            f"or on the server run `python -m services.queue_manager.cli drain --timeout {seconds:g}`",
        )
    return await store.drain(seconds)


@router.get("/snapshot", response_class=StreamingResponse, responses={200: {"model": Snapshot}})
async def snapshot(_: AdminUser, store: StoreDep) -> StreamingResponse:
    """The whole queue as JSON (waiting, running, finished and dead-lettered jobs, and the saved
    files, settings and rounds), streamed as the evening's save streams it; 409 naming a key or job
    no snapshot can carry, before anything is sent (``snapshot_download``)."""
    return StreamingResponse(await snapshot_download(store), media_type="application/json")


SNAPSHOT_BODY = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Snapshot"}}}}


@router.post("/restore", openapi_extra={"requestBody": {**SNAPSHOT_BODY, "required": True}})
async def restore(request: Request, _: AdminUser, store: StoreDep) -> RestoreResult:
    """Load a snapshot (the JSON ``GET /snapshot`` gave); jobs that already exist are skipped, and
    one that is no snapshot gets a 422 naming the fault, writing nothing (``restore_by_organizer``)."""
    return await restore_by_organizer(store, request.stream())
