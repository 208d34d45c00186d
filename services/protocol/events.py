"""Events on a participant's stream (``/api/events`` WebSocket and the workspace ``/ws``)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class EventType(StrEnum):
    QUEUED = "queued"
    POSITION = "position"
    STARTED = "started"
    PROGRESS = "progress"
    NODE = "node"
    OUTPUTS = "outputs"
    FINISHED = "finished"


class UserEvent(BaseModel):
    type: EventType
    job_id: str
    data: dict[str, Any] = Field(default_factory=dict)
    comfy: dict[str, Any] | None = Field(
        default=None, description="the same event in ComfyUI's own message format, for the workspace /ws"
    )
