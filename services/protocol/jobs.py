"""Jobs as they travel between participants, the queue manager and workers.

One id end to end: a job's id is the ComfyUI ``prompt_id`` (a UUID unless the client chose another name).
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

UI_FORMAT_HINT = (
    "this looks like a workflow in ComfyUI's UI (graph) format, with 'nodes' and 'links'. "
    "Submit the API format instead: in ComfyUI open the workflow menu and choose "
    "'Export (API)' (or enable 'Dev mode' in the settings and use 'Save (API Format)')."
)


ANNOTATIONS = {" [input]": "input", " [output]": "output", " [temp]": "temp"}


def split_annotation(name: str, default: str = "input") -> tuple[str, str]:
    """``"cat.png [output]"`` -> ``("cat.png", "output")``: ComfyUI's annotated file names."""
    for suffix, kind in ANNOTATIONS.items():
        if name.endswith(suffix):
            return name.removesuffix(suffix), kind
    return name, default


class JobState(StrEnum):
    QUEUED = "queued"
    LEASED = "leased"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


MAX_NAME_BYTES = 200
"""Longest part of a file name or subfolder, in UTF-8 bytes: file systems allow 255 and storage adds
a temporary suffix while writing (and `` (1)`` for a second file of the same name)."""


def check_file_path(value: str, what: str) -> str:
    """``value`` if it is a relative path of usable parts, else ValueError saying how to fix it."""
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ValueError(f"{what} {value!r} contains a control character (NUL, newline, ...): remove it")
    if value.startswith("/"):
        raise ValueError(f"{what} {value!r} must be a relative name, without a leading '/'")
    for part in value.replace("\\", "/").split("/"):
        if part in ("", ".", ".."):
            raise ValueError(
                f"{what} {value!r} must be a relative name without '..', '.' or empty parts ('a//b')"
            )
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise ValueError(f"{what} {value!r} is too long: shorten each part to {MAX_NAME_BYTES} bytes")
    return value


class FileRef(BaseModel):
    """A user file as ComfyUI names it: ``filename`` inside ``subfolder`` of folder ``type``."""

    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=255)
    subfolder: str = Field(default="", max_length=255)
    type: Literal["input", "output", "temp"] = "input"

    @field_validator("filename")
    @classmethod
    def _usable_filename(cls, value: str) -> str:
        return check_file_path(value, "file name")

    @field_validator("subfolder")
    @classmethod
    def _usable_subfolder(cls, value: str) -> str:
        return check_file_path(value, "subfolder") if value else value


class NodeSpec(BaseModel):
    """One node of an API-format graph: ``{"class_type": ..., "inputs": {...}}``."""

    model_config = ConfigDict(extra="allow")

    class_type: str = Field(min_length=1)
    inputs: dict[str, Any] = Field(default_factory=dict)


def validate_api_workflow(prompt: Any) -> dict[str, NodeSpec]:
    """Return the graph as NodeSpecs or raise ValueError with a message a participant can act on."""
    if not isinstance(prompt, dict) or not prompt:
        raise ValueError("the workflow must be a non-empty JSON object of node id -> node")
    if "nodes" in prompt and "links" in prompt:
        raise ValueError(UI_FORMAT_HINT)
    graph: dict[str, NodeSpec] = {}
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            raise ValueError(
                f"node {node_id!r} has no 'class_type'; every node of an API-format workflow is "
                '{"class_type": "...", "inputs": {...}}'
            )
        graph[str(node_id)] = NodeSpec.model_validate(node)
    return graph


PROMPT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
"""The prompt ids a client may choose: it keys the job in Redis and stands in URLs and file names."""


class JobSubmit(BaseModel):
    """What a participant (or the workspace's ``POST /prompt``) sends to queue a job."""

    model_config = ConfigDict(extra="ignore")

    prompt: dict[str, NodeSpec]
    prompt_id: str | None = Field(
        default=None,
        description="ComfyUI's client-chosen prompt_id (any name of letters, digits, '.', '_', ':' or '-', "
        "up to 128; usually a UUID): it names the job everywhere, so one already in use is refused",
    )
    client_id: str | None = Field(default=None, max_length=128)
    inputs: list[FileRef] = Field(default_factory=list, max_length=64)
    extra_data: dict[str, Any] = Field(default_factory=dict)
    front: bool = Field(
        default=False, description="ComfyUI's: run before the participant's other waiting jobs"
    )
    pool: str | None = Field(default=None, description="only run on this pool (admin choice)")
    outputs_to_execute: list[str] = Field(
        default_factory=list, description="the output nodes that run (set by the workspace's checks)"
    )

    @field_validator("prompt", mode="before")
    @classmethod
    def _api_format(cls, value: Any) -> dict[str, NodeSpec]:
        return validate_api_workflow(value)

    @field_validator("prompt_id")
    @classmethod
    def _job_name(cls, value: str | None) -> str | None:
        if value is not None and not PROMPT_ID.fullmatch(value):
            raise ValueError(
                "prompt_id must be 1-128 letters, digits, '.', '_', ':' or '-' starting with a letter or "
                "digit (a UUID does): leave it out and one is chosen for you"
            )
        return value


class JobError(BaseModel):
    """Why a job failed, in ComfyUI's terms where ComfyUI said so."""

    type: str = Field(description="exception type or ComfyUI error type")
    message: str
    node_id: str | None = None
    node_type: str | None = None
    details: str | None = None
    retryable: bool = False
    comfy: dict[str, Any] | None = Field(
        default=None,
        description="ComfyUI's own account of the end: its execution_error or execution_interrupted "
        "data (executed, current_inputs, current_outputs, traceback), or the node_errors of a prompt "
        "the GPU's ComfyUI refused",
    )


class OutputFile(BaseModel):
    """One output a job produced, stored in user-file storage under its owner's prefix."""

    node_id: str
    kind: str = Field(description="the key in ComfyUI's history outputs: images, gifs, videos, audio, ...")
    filename: str
    subfolder: str = ""
    type: Literal["output", "temp"] = "output"
    size: int = 0
    content_type: str = "application/octet-stream"


class JobLine(BaseModel):
    """A job without its workflow: who, where, in what state (a line of the admin page's queue)."""

    id: str
    user: str
    pool: str | None = None
    priority: int = 0
    state: JobState = JobState.QUEUED
    attempts: int = 0
    max_attempts: int = 3
    comfyui_losses: int = Field(
        default=0, description="ComfyUI deaths or hangs this job was running in (never counted as attempts)"
    )
    queued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker_id: str | None = None
    error: JobError | None = None
    position: int | None = Field(
        default=None,
        description="0-based place in line while queued: the waiting jobs that can take the same GPUs "
        "(its pool's and unpinned ones) and run before it, as its owner's 'My place in line' shows",
    )
    cancel_requested: bool = False
    number: int | None = Field(
        default=None, description="the queue number given at submit, increasing (negative: with front)"
    )


class Job(JobLine):
    """A job record as the queue manager stores and shows it: its line and its workflow."""

    prompt: dict[str, Any]
    inputs: list[FileRef] = Field(default_factory=list)
    client_id: str | None = None
    extra_data: dict[str, Any] = Field(default_factory=dict)
    outputs: list[OutputFile] = Field(default_factory=list)
    outputs_to_execute: list[str] = Field(default_factory=list)
    cached_nodes: list[str] = Field(default_factory=list, description="nodes ComfyUI answered from cache")


def storage_key(user: str, ref: FileRef | OutputFile) -> str:
    """Where a user's file lives in user-file storage: one prefix per participant."""
    sub = f"{ref.subfolder.strip('/')}/" if ref.subfolder else ""
    return f"users/{user}/{ref.type}/{sub}{ref.filename}"
