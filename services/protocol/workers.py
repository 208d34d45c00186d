"""The worker API: registration, claim, lease heartbeats, events and results.

Routes (all under the queue manager's base URL, all with ``Authorization: Bearer <pool token>``):

| route | body | answer |
|---|---|---|
| ``POST /api/workers/register`` | ``WorkerRegistration`` | ``RegisterReply`` |
| ``POST /api/workers/{worker_id}/claim?wait=25`` | none | 200 ``Lease`` or 204 |
| ``POST /api/workers/{worker_id}/claim?wait=25&prepare=1`` | none | 200 ``Lease`` (held) or 204 |
| ``POST /api/workers/{worker_id}/claim?wait=25&hold_next=1`` | none | 200 ``Lease`` (``held``: next) or 204 |
| ``POST /api/workers/{worker_id}/claim?wait=25&claim_id=<id>`` | none | the same; a repeat: the same lease |
| ``POST /api/workers/{worker_id}/drain`` | none | 204 (stopping: no more leases or holds; draining) |
| ``POST /api/workers/{worker_id}/deregister`` | none | 204 (gone: its hold ends); 409 while it runs a job |
| ``POST /api/leases/{job_id}/heartbeat?wait=7`` | ``LeaseCall`` | ``HeartbeatReply``, at once on a cancel |
| ``POST /api/leases/{job_id}/events`` | ``EventBatch`` | 204; 409 when the lease is not held |
| ``POST /api/leases/{job_id}/complete`` | ``Completion`` | 204; 409 when the lease is not held |
| ``POST /api/leases/{job_id}/fail`` | ``Failure`` | 204; 409 when the lease is not held |
| ``POST /api/leases/{job_id}/release`` | ``Release`` | 204 (requeued, attempt not counted) |
| ``POST /api/leases/{job_id}/start`` | ``StartCall`` | ``StartReply`` (what to run, next held) |
| ``POST /api/push/{chain}/next`` | ``NextCall`` | 200 ``Lease`` (this push request's next job) or 204 |
| ``POST /api/push/{chain}/end`` | ``ChainCall`` | 204 (this push request takes no more jobs) |

A busy worker prepares its next job while the current one runs: ``claim?prepare=1`` holds the
first job no other worker holds. The job stays queued (its owner sees it waiting, an idle worker's
claim takes it, a cancel ends it at once) until the worker's GPU is free and ``start`` leases it;
heartbeats renew the hold and say whether it is still held; ``release`` with the hold token gives
it up. Holds count no attempt. ``start`` with ``hold_next`` also holds the job after the one it
leases, in the same atomic step and by the same rules, so a worker with a steady queue chains its
jobs start to start and claims ahead only when ``start`` had nothing to hold. An idle worker's
claim does the same with ``hold_next=1`` (``Lease.held``), so its first job is followed by a
``start`` too, not by a claim ahead; a worker that does not ask gets a plain ``Lease`` as before.
A worker holds one job at most: any claim (idle or ahead) first ends the hold the worker still
has (it will not start that job), and so do registering again (a restarted worker knows of no
hold), ``drain`` (a worker shutting down starts nothing more, and is leased or held nothing after
it: its claims, one parked before the drain included, get 204 at once) and ``deregister``.
A claim repeated after its reply was lost holds that job again instead of leaving it held for a
token nobody has, which busy workers would pass by though it is first in line. An idle claim may
name itself (``claim_id``, which the worker's client sends again when it retries the call): a repeat
gets the lease the first call made, same token and attempt, while that job is still leased to the
worker, instead of the next job while the first waits, leased to nobody, for its lease to lapse,
whether the claim's own step leased it or a submit handed it to the claim as it waited. A waiting claim
whose caller hung up (a worker drops its claim ahead when its GPU falls free first, and claims as
an idle worker instead) claims nothing once woken, so it never takes that worker's new hold.

A push container's request carries ``Lease.chain``: after each job the container asks
``push/{chain}/next`` for the job the queue gives an idle worker of its pool now, and runs it in
the same request, until a 204 (``services/queue_manager/push_requests.py``). Its lease and push
calls may send the request's own ``reply_token`` instead of the pool token; with it they name the
container (``worker_id``), and the first name the request's calls send is the only one they may
send after (403 for another), they act on the request's own jobs only (409 for another's), and
``next`` names the job it follows (``after``).

Completion and failure are idempotent for the lease holder: repeating the same call after a
network error answers 204 again and changes nothing, so a retry never completes a job twice.

A completion or failure carries the job's trailing events (``events``, those the worker had not
sent yet when the job ended): the queue manager publishes them to the job's owner, in order and
under the ``/events`` route's rules and limits (at most ``MAX_EVENTS``, the body within
``QM_MAX_BODY_BYTES``), just before it announces the end, so a short job costs no ``/events``
call of its own. Only the call that ends the lease publishes them: a repeat publishes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, ValidationInfo, field_validator

from services.protocol.jobs import Job, JobError, OutputFile


class WorkerState(StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"
    GONE = "gone"


def _cut(limit: int) -> BeforeValidator:
    """A string as a worker reported it (ComfyUI's names, a models sync's reason), cut to ``limit``
    characters: what the admin page shows is the start of it, and one sent with a leaked pool token
    must not make the admin page megabytes."""
    return BeforeValidator(lambda value: value[:limit] if isinstance(value, str) else value)


class ModelsProgress(BaseModel):
    """A worker's models sync, shown per pool on the admin page while the worker is not ready."""

    state: str = Field(default="checking", max_length=16, description="checking|waiting|syncing|ready|failed")
    message: Annotated[str, _cut(2000)] = Field(
        default="", description="why it waits or failed (its first 2000 characters: the worker logs it whole)"
    )
    files_done: int = Field(default=0, ge=0)
    files_total: int = Field(default=0, ge=0)
    bytes_done: int = Field(default=0, ge=0)
    bytes_total: int = Field(default=0, ge=0)
    rate_bytes_per_s: int = Field(default=0, ge=0)
    eta_seconds: float | None = None


MAX_MODELS = 2000  # files in one models manifest (pulumi preview refuses more: services/worker/manifest.py)
MAX_MODEL_PATH = 512  # characters in one model's path, likewise


class WorkerCapabilities(BaseModel):
    pool: str = Field(min_length=1, max_length=64)
    provider: str = Field(min_length=1, max_length=64)
    gpu: Annotated[str, _cut(200)] = ""
    device_type: Annotated[str, _cut(32)] = Field(
        default="", description="ComfyUI's device type: cuda, cpu, mps, xpu, ..."
    )
    vram_mb: int = 0
    comfyui_version: Annotated[str, _cut(64)] = ""
    catalogue_hash: str = Field(default="", max_length=128)
    models: list[Annotated[str, Field(max_length=MAX_MODEL_PATH)]] = Field(
        default_factory=list, max_length=MAX_MODELS
    )
    models_sync: ModelsProgress | None = Field(
        default=None, description="set while the worker syncs its models: it is starting, not ready"
    )
    problem: str = Field(
        default="",
        max_length=2000,
        description="why the worker takes no job now and what fixes it (e.g. its attached ComfyUI still "
        "runs a prompt it was told to stop); '' when nothing keeps it from taking jobs",
    )


class WorkerRegistration(BaseModel):
    worker_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    capabilities: WorkerCapabilities
    catalogue: dict[str, Any] | None = Field(
        default=None, description="ComfyUI /object_info, sent when the server lacks this catalogue_hash"
    )
    extensions: dict[str, str] = Field(
        default_factory=dict,
        description="custom nodes' web extension files, sent with the catalogue: the path ComfyUI "
        "serves each under /extensions/ (``<pack>/<file>.js``) -> its JavaScript source",
    )
    templates: dict[str, str] = Field(
        default_factory=dict,
        description="custom nodes' example workflows, sent with the catalogue: the path ComfyUI serves "
        "each under /api/workflow_templates/ (``<pack>/<name>.json``) -> its JSON text",
    )

    @field_validator("extensions", "templates")
    @classmethod
    def _published_paths(cls, files: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        valid, what, shape, route = PUBLISHED[info.field_name or ""]
        for path in files:
            if not valid(path):
                raise ValueError(
                    f"{what} path {path[:200]!r} is not '{shape}' under {route} (no empty, '.' or '..' "
                    "parts, no backslashes, at most 512 characters)"
                )
        return files


def _safe_parts(path: str) -> list[str] | None:
    """The ``/`` parts of a relative path that stays inside its folder, or None."""
    parts = path.split("/")
    safe = 0 < len(path) <= 512 and "\\" not in path
    return (
        parts if safe and all(part not in ("", ".", "..") and part.isprintable() for part in parts) else None
    )


def is_extension_path(path: str) -> bool:
    """A relative ``<pack>/.../<file>.js`` path that stays inside the extensions folder."""
    parts = _safe_parts(path)
    return parts is not None and len(parts) >= 2 and path.endswith(".js")


TEMPLATE_FILES = "workflow_templates/"
"""Where a catalogue version keeps its example workflows among its web extension files, which the
admin approves alike: no extension path ends in ``.json``."""


def catalogue_files(registration: WorkerRegistration) -> dict[str, str]:
    """The files a registration publishes with its catalogue: web extensions and example workflows."""
    templates = {TEMPLATE_FILES + path: text for path, text in registration.templates.items()}
    return {**registration.extensions, **templates}


def template_of(path: str) -> str | None:
    """The ``<pack>/<name>.json`` of a catalogue file that is an example workflow, else None."""
    rest = path.removeprefix(TEMPLATE_FILES)
    return rest if rest != path and is_template_path(rest) else None


def is_template_path(path: str) -> bool:
    """A ``<pack>/<name>.json`` path: a custom node pack's example workflow (one folder deep, as
    ComfyUI lists them)."""
    parts = _safe_parts(path)
    return parts is not None and len(parts) == 2 and path.endswith(".json")


PUBLISHED: dict[str, tuple[Callable[[str], bool], str, str, str]] = {
    "extensions": (is_extension_path, "web extension", "<pack>/<file>.js", "/extensions/"),
    "templates": (is_template_path, "example workflow", "<pack>/<name>.json", "/api/workflow_templates/"),
}
"""A registration's published files: which paths are valid, and how a refusal names them."""


class RegisterReply(BaseModel):
    worker_id: str
    lease_seconds: float
    heartbeat_seconds: float
    claim_wait_seconds: float
    catalogue_known: bool = True


class Lease(BaseModel):
    """A job leased to one worker. Only the holder of ``token`` may report on it."""

    job: Job
    token: str
    expires_at: datetime
    lease_seconds: float
    reply_url: str | None = Field(default=None, description="push pools: queue manager base URL")
    reply_token: str | None = Field(
        default=None, description="push pools: this request's bearer token for the lease and push routes"
    )
    chain: str | None = Field(
        default=None,
        max_length=64,
        description="push pools: this request's chain; after the job the container asks "
        "``POST /api/push/{chain}/next`` for another, until 204",
    )
    prepared: bool = Field(
        default=False,
        description="claimed ahead by a busy worker: the job is only held (still queued, an idle worker "
        "may take it) until the worker starts it with ``POST /api/leases/{id}/start``",
    )
    held: Lease | None = Field(
        default=None,
        description="asked with ``claim?hold_next=1`` (an idle worker's claim): the job held for this "
        "worker to run after this one (``prepared``), by the same rules and in the same step as "
        "``start``'s ``hold_next``; None when the queue has none for it now",
    )


class HolderCall(BaseModel):
    """A lease or push call; a push container names itself in it."""

    worker_id: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="push containers: their own registered id, so the admin page shows them busy while "
        "they run a lease the dispatcher claimed (pull workers hold their leases under their own id). "
        "Required with a reply token: the request's calls may name only the container that first used it",
    )

    def lease_token(self) -> str | None:
        """The lease token the call acts with, if any (a reply token acts only with its request's)."""
        return None


class ChainCall(HolderCall):
    """A push container's call on its request's chain (``end``; ``next`` is a ``NextCall``)."""


class NextCall(ChainCall):
    after: str = Field(
        min_length=1,
        max_length=128,
        description="the lease token of the job this container is done with (the request's latest): "
        "a repeat after a lost reply gets the same next job again, a call after an older one none",
    )

    def lease_token(self) -> str:
        return self.after


class LeaseCall(HolderCall):
    token: str = Field(min_length=1)

    def lease_token(self) -> str:
        return self.token


class Release(LeaseCall):
    """Give a job back unfinished (shutdown, or this worker's ComfyUI is down): never an attempt."""

    comfyui_lost: bool = Field(
        default=False,
        description="ComfyUI died or went silent while running the job: counted as a ComfyUI loss, "
        "and a job in too many of those is failed as their likely cause",
    )


class HeartbeatReply(BaseModel):
    expires_at: datetime
    cancel: bool = False
    holding: str | None = Field(
        default=None, description="the job this worker prepared and still holds (its hold renewed too)"
    )


class StartCall(LeaseCall):
    """Start the prepared job held with ``token``: the worker's GPU is free."""

    worker_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    hold_next: bool = Field(
        default=False,
        description="also hold the job after the one this worker runs now (``StartReply.held``), "
        "as ``claim?prepare=1`` with no wait would, so the worker needs no claim for its next job",
    )


class StartReply(BaseModel):
    """``started``: the prepared job is now leased with its hold token. Otherwise it was taken by
    an idle worker, cancelled or outranked, and ``lease`` is what to run instead (None: nothing).
    ``held`` (asked with ``hold_next``): the job held for this worker to run after the one it runs
    now (started or ``lease``), by the same rules as a prepare-claim; None when the queue has none
    for it now, and always when it has nothing to run."""

    started: bool
    lease: Lease | None = None
    held: Lease | None = Field(default=None, description="the next job, held (``Lease.prepared``)")


class JobEvent(BaseModel):
    """A ComfyUI-style event a worker forwards: ``type`` and ``data`` as ComfyUI sent them."""

    type: str = Field(min_length=1, max_length=64)
    data: dict[str, Any] = Field(default_factory=dict)


MAX_EVENTS = 256  # per call: an ``/events`` batch, or the events a completion or failure carries
Events = Annotated[list[JobEvent], Field(max_length=MAX_EVENTS)]


class EventBatch(LeaseCall):
    events: Events


class JobTiming(BaseModel):
    """How the job used its GPU, as the worker measured it (seconds): what the admin sees per pool."""

    gpu_seconds: float | None = Field(default=None, ge=0, description="ComfyUI ran it: submit to its end")
    idle_gap_seconds: float | None = Field(
        default=None, ge=0, description="the GPU idle before it, while it was already queued"
    )
    upload_seconds: float | None = Field(default=None, ge=0, description="its outputs into storage")


TRAILING = (
    "the job's last events, still unsent when it ended: published to its owner before its end, as an "
    "``/events`` call would (same rules and limits), and only by the call that ends the lease"
)


class Completion(LeaseCall):
    outputs: list[OutputFile] = Field(default_factory=list)
    timing: JobTiming | None = None
    events: Events = Field(default_factory=list, description=TRAILING)


class Failure(LeaseCall):
    error: JobError
    timing: JobTiming | None = None
    events: Events = Field(default_factory=list, description=TRAILING)
