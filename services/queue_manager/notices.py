"""What a participant is told about their jobs: lifecycle changes as ``UserEvent``s.

``queued`` and ``started`` are published by the Lua scripts that make those changes (submit.lua,
claim in lib.lua); the rest come from here. Workers forward ComfyUI's own events; those pass
through with the ComfyUI message in ``UserEvent.comfy`` except the terminal ones
(``execution_success``, ``execution_error``, ``execution_interrupted``): the queue manager announces
the end itself with ``finished``, so a participant's page hears exactly one end per job even when
the worker died before ComfyUI could say anything. The workspace ``/ws`` renders ``finished`` and
the queue changes in ComfyUI's format (``services.protocol.comfyui``).
"""

from __future__ import annotations

import time
from typing import Any

from services.protocol.comfyui import TERMINAL, WORKSPACE_OWN, as_text
from services.protocol.events import EventType, UserEvent
from services.protocol.jobs import JobError, JobState
from services.protocol.workers import JobEvent

WORKER_EVENT_TYPES = {"progress": EventType.PROGRESS, "executed": EventType.OUTPUTS}


def position(job_id: str, place: int, waiting: int | None = None) -> UserEvent:
    data = {"position": place} if waiting is None else {"position": place, "waiting": waiting}
    return UserEvent(type=EventType.POSITION, job_id=job_id, data=data)


def from_worker(job_id: str, event: JobEvent) -> UserEvent | None:
    """A worker-forwarded ComfyUI event, or None for terminal ones (``finished`` says those) and for
    the messages only the workspace sends (``WORKSPACE_OWN``)."""
    if event.type in TERMINAL or event.type in WORKSPACE_OWN:
        return None
    data = {**event.data, "prompt_id": job_id} if "prompt_id" in event.data else event.data
    data = as_text(event.type, data)
    kind = WORKER_EVENT_TYPES.get(event.type, EventType.NODE)
    return UserEvent(type=kind, job_id=job_id, data=data, comfy={"type": event.type, "data": data})


def finished(
    job_id: str,
    state: JobState | str,
    error: JobError | None = None,
    *,
    ran: bool = True,
    statuses: int | None = None,
) -> UserEvent:
    """The end of a job; ``ran=False`` for one cancelled while it waited (ComfyUI says nothing of
    those but the new queue ``status``; ``statuses`` of them, when given)."""
    data: dict[str, Any] = {"state": JobState(state).value, "timestamp": int(time.time() * 1000), "ran": ran}
    if statuses is not None:
        data["statuses"] = statuses
    if error is not None:
        data["error"] = error.model_dump(mode="json")
    return UserEvent(type=EventType.FINISHED, job_id=job_id, data=data)
