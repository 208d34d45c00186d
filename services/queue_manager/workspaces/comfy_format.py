"""Our job records in ComfyUI's own shapes: ``/queue`` items, ``/history`` entries, ``/prompt`` errors.

A ComfyUI queue item is ``[number, prompt_id, prompt, extra_data, outputs_to_execute]``. For a
pending job ``number`` is its 1-based place in the shared queue, so the participant's queue panel
shows where they stand; ``extra_data.queue_position`` says the same for scripts.
"""

from __future__ import annotations

from typing import Any

from services.protocol.jobs import Job, JobState

DROPPED_EXTRA = ("auth_token_comfy_org", "api_key_comfy_org")


def millis(job: Job) -> int:
    moment = job.finished_at or job.started_at or job.queued_at
    return int(moment.timestamp() * 1000)


def queue_number(job: Job) -> int:
    if job.state is JobState.QUEUED and job.position is not None:
        return job.position + 1
    return int(job.queued_at.timestamp() * 1000)


def output_nodes(job: Job) -> list[str]:
    return sorted({out.node_id for out in job.outputs})


def queue_item(job: Job) -> list[Any]:
    extra = {**job.extra_data, "client_id": job.client_id or ""}
    if job.position is not None:
        extra["queue_position"] = job.position
    return [queue_number(job), job.id, job.prompt, extra, output_nodes(job)]


def queue_answer(jobs: list[Job]) -> dict[str, list[list[Any]]]:
    """``GET /queue``: the participant's running and pending jobs."""
    running = [queue_item(j) for j in jobs if j.state in (JobState.LEASED, JobState.RUNNING)]
    pending = sorted(
        (j for j in jobs if j.state is JobState.QUEUED), key=lambda j: (j.position is None, j.position or 0)
    )
    return {"queue_running": running, "queue_pending": [queue_item(j) for j in pending]}


def outputs_of(job: Job) -> dict[str, dict[str, list[dict[str, str]]]]:
    outputs: dict[str, dict[str, list[dict[str, str]]]] = {}
    for out in job.outputs:
        item = {"filename": out.filename, "subfolder": out.subfolder, "type": out.type}
        outputs.setdefault(out.node_id, {}).setdefault(out.kind, []).append(item)
    return outputs


def status_of(job: Job) -> dict[str, Any]:
    started = int((job.started_at or job.queued_at).timestamp() * 1000)
    messages: list[list[Any]] = [["execution_start", {"prompt_id": job.id, "timestamp": started}]]
    end = {"prompt_id": job.id, "timestamp": millis(job)}
    if job.state is JobState.SUCCEEDED:
        messages.append(["execution_success", end])
    elif job.state is JobState.CANCELLED:
        messages.append(["execution_interrupted", {**end, "node_id": "", "node_type": "", "executed": []}])
    else:
        messages.append(["execution_error", {**end, **error_fields(job)}])
    return {
        "status_str": "success" if job.state is JobState.SUCCEEDED else "error",
        "completed": job.state is JobState.SUCCEEDED,
        "messages": messages,
    }


def error_fields(job: Job) -> dict[str, Any]:
    error = job.error
    return {
        "node_id": (error.node_id if error else None) or "",
        "node_type": (error.node_type if error else None) or "",
        "executed": [],
        "exception_type": error.type if error else "Cancelled",
        "exception_message": error.message if error else "the job was cancelled",
        "traceback": [error.details] if error and error.details else [],
        "current_inputs": {},
        "current_outputs": {},
    }


def history_entry(job: Job) -> dict[str, Any]:
    """One ``/history`` value for a finished job."""
    meta = {node: {"node_id": node, "display_node": node, "prompt_id": job.id} for node in output_nodes(job)}
    return {
        "prompt": [millis(job), job.id, job.prompt, {**job.extra_data, "client_id": job.client_id or ""}, []],
        "outputs": outputs_of(job),
        "status": status_of(job),
        "meta": meta,
    }


def history_answer(jobs: list[Job], max_items: int | None = None, offset: int = 0) -> dict[str, Any]:
    """``GET /history``: finished jobs, newest last (as ComfyUI orders them), ``max_items`` newest."""
    done = sorted((j for j in jobs if j.state.finished), key=millis)
    if max_items is not None:
        end = len(done) - max(offset, 0)
        done = done[max(end - max_items, 0) : end]
    return {job.id: history_entry(job) for job in done}


def prompt_error(kind: str, message: str, node_errors: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``POST /prompt`` refusal the frontend shows in its error dialog."""
    error = {"type": kind, "message": message, "details": message, "extra_info": {}}
    return {"error": error, "node_errors": node_errors or {}}


def node_error(class_type: str, kind: str, message: str) -> dict[str, Any]:
    problem = {"type": kind, "message": message, "details": message, "extra_info": {}}
    return {"errors": [problem], "class_type": class_type, "dependent_outputs": []}
