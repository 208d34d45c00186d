"""What a participant is told about their jobs: lifecycle changes as ``UserEvent``s, each with the
message ComfyUI itself would send where it has one (``UserEvent.comfy``, forwarded by the
workspace ``/ws``).

Workers forward ComfyUI's own events; those pass through unchanged except the terminal ones
(``execution_success``, ``execution_error``, ``execution_interrupted``): the queue manager sends the
terminal message itself with ``finished``, so a participant's page hears exactly one end per job
even when the worker died before ComfyUI could say anything.
"""

from __future__ import annotations

import time
from typing import Any

from services.protocol.events import EventType, UserEvent
from services.protocol.jobs import Job, JobError, JobState
from services.protocol.workers import JobEvent

TERMINAL_COMFY = frozenset({"execution_success", "execution_error", "execution_interrupted"})
WORKER_EVENT_TYPES = {"progress": EventType.PROGRESS, "executed": EventType.OUTPUTS}


def queued(job_id: str, position: int, queue_remaining: int) -> UserEvent:
    status = {"status": {"exec_info": {"queue_remaining": queue_remaining}}}
    return UserEvent(
        type=EventType.QUEUED,
        job_id=job_id,
        data={"position": position},
        comfy={"type": "status", "data": status},
    )


def position(job_id: str, place: int, waiting: int | None = None) -> UserEvent:
    data = {"position": place} if waiting is None else {"position": place, "waiting": waiting}
    return UserEvent(type=EventType.POSITION, job_id=job_id, data=data)


def started(job: Job) -> UserEvent:
    data = {"worker_id": job.worker_id, "attempt": job.attempts, "pool": job.pool}
    return UserEvent(type=EventType.STARTED, job_id=job.id, data=data)


def from_worker(job_id: str, event: JobEvent) -> UserEvent | None:
    """A worker-forwarded ComfyUI event, or None for terminal ones (``finished`` says those)."""
    if event.type in TERMINAL_COMFY:
        return None
    data = {**event.data, "prompt_id": job_id} if "prompt_id" in event.data else event.data
    kind = WORKER_EVENT_TYPES.get(event.type, EventType.NODE)
    return UserEvent(type=kind, job_id=job_id, data=data, comfy={"type": event.type, "data": data})


def finished(job_id: str, state: JobState | str, error: JobError | None = None) -> UserEvent:
    state = JobState(state)
    data: dict[str, Any] = {"state": state.value}
    if error is not None:
        data["error"] = error.model_dump(mode="json")
    return UserEvent(type=EventType.FINISHED, job_id=job_id, data=data, comfy=_terminal(job_id, state, error))


def _terminal(job_id: str, state: JobState, error: JobError | None) -> dict[str, Any]:
    stamp = int(time.time() * 1000)
    if state == JobState.SUCCEEDED:
        return {"type": "execution_success", "data": {"prompt_id": job_id, "timestamp": stamp}}
    node = {"node_id": error.node_id if error else None, "node_type": error.node_type if error else None}
    if state == JobState.CANCELLED:
        return {"type": "execution_interrupted", "data": {"prompt_id": job_id, **node, "executed": []}}
    failure = {
        "exception_type": error.type if error else "Error",
        "exception_message": error.message if error else "the job failed",
        "traceback": [error.details] if error and error.details else [],
        "executed": [],
        "current_inputs": {},
        "current_outputs": {},
    }
    return {"type": "execution_error", "data": {"prompt_id": job_id, **node, "timestamp": stamp, **failure}}
