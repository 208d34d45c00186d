"""ComfyUI's wire format (0.3.64), in one place: what the workspace answers and sends as ComfyUI.

- ``POST /prompt`` refusals: ``{"error": problem, "node_errors": {id: {"errors": [problem],
  "class_type", "dependent_outputs"}}}``, each problem ``{"type", "message", "details", "extra_info"}``.
- Socket messages ``{"type", "data"}``: ``status`` (``queue_remaining``; ``sid`` on connect only), the
  end of a job (``execution_success``, ``execution_error``, ``execution_interrupted``, each with a
  ``timestamp``) and the last word ``executing {node: null}``; ComfyUI's other job events
  (``execution_start``, ``execution_cached``, ``executing``, ``progress``, ``progress_state``,
  ``executed``) are the GPU's own and pass through unchanged.
- Binary preview frames: 4-byte big-endian event type (1 = preview image), 4-byte image format
  (1 JPEG, 2 PNG), the image bytes; forwarded between worker and queue manager as ``b_preview``
  events (base64 ``image`` and ``format``).
- Records: a ``/queue`` item ``[number, prompt_id, prompt, extra_data, outputs_to_execute]``
  (``number`` is the job's queue number, given at submit and increasing; a job's place in the shared
  queue is the workspace's own ``/workshop/places``), and a ``/history`` entry
  ``{"prompt": <queue item>, "outputs": {node: {kind: [file]}}, "status": {"status_str",
  "completed", "messages": [[event, data], ...]}, "meta": {node: {...}}}``.
"""

from __future__ import annotations

import base64
import html
import json
import struct
from typing import Any

from services.protocol.jobs import Job, JobError, JobState

DROPPED_EXTRA = ("auth_token_comfy_org", "api_key_comfy_org")
TERMINAL = frozenset({"execution_success", "execution_error", "execution_interrupted"})
PLACE = "comfy-workshop.place"
"""The workshop's own message: where the participant's next waiting job is in the shared line."""
WORKSPACE_OWN = frozenset({"status", "feature_flags", PLACE, "logs", "graphChanged", "promptQueued"})
"""Messages no worker's (a fake one's, on a leaked pool token) ever pass: the frontend takes
``status``'s ``sid`` for its client id and ``feature_flags`` for the server's; ``logs`` would fill
its terminal panel with the GPU's server log (other participants' jobs, when real: the workspace
serves none); ``graphChanged`` and ``promptQueued`` are the frontend's own events, which ComfyUI
never sends."""
PREVIEW_IMAGE = 1
PREVIEW_FORMATS = {1: "jpeg", 2: "png"}
FORMAT_CODES = {"jpeg": 1, "jpg": 1, "png": 2}
MAX_PREVIEW_BYTES = 256 * 1024
"""Larger previews are not forwarded (sampler previews are small; a full image arrives as an output)."""


# --- refusals -------------------------------------------------------------------------------------


def problem(
    kind: str, message: str, details: str = "", extra_info: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info or {}}


def prompt_error(
    kind: str, message: str, details: str | None = None, node_errors: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A ``POST /prompt`` refusal (400) the frontend shows, outlining the nodes in ``node_errors``."""
    return {
        "error": problem(kind, message, message if details is None else details),
        "node_errors": node_errors or {},
    }


# --- socket messages ------------------------------------------------------------------------------


def message(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "data": data}


def status(queue_remaining: int, sid: str | None = None) -> dict[str, Any]:
    """``status``: sent to every socket of the user when their queue changes; with ``sid`` on connect."""
    data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": queue_remaining}}}
    if sid is not None:
        data["sid"] = sid
    return message("status", data)


def idle(job_id: str) -> dict[str, Any]:
    """ComfyUI's last word on every job, success or not: the frontend ends the run on it."""
    return message("executing", {"node": None, "prompt_id": job_id})


def ending(job_id: str, state: JobState, error: JobError | None, timestamp: int) -> dict[str, Any]:
    """``execution_success``, ``execution_interrupted`` or ``execution_error`` for a job's end."""
    if state is JobState.SUCCEEDED:
        return message("execution_success", {"prompt_id": job_id, "timestamp": timestamp})
    own = dict(error.comfy) if error is not None and error.comfy else {}
    node = {
        "prompt_id": job_id,
        "node_id": own.pop("node_id", None) or (error.node_id if error else None),
        "node_type": own.pop("node_type", None) or (error.node_type if error else None),
        "executed": own.pop("executed", []),
    }
    if state is JobState.CANCELLED:
        return message("execution_interrupted", {**node, "timestamp": timestamp})
    failure = {
        "exception_message": error.message if error else "the job failed",
        "exception_type": error.type if error else "Error",
        "traceback": [error.details] if error and error.details else [],
        "current_inputs": {},
        "current_outputs": [],
    }
    own.pop("prompt_id", None)
    own.pop("timestamp", None)
    return message("execution_error", {**node, **failure, **own, "timestamp": timestamp})


def as_text(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """A GPU's event with the texts the stock frontend renders as HTML (``innerHTML``) escaped, so
    they show as the text they are: a node's progress text (``progress_text``) and a chat node's
    answers (``display_component`` of ``ChatHistoryWidget``, ``props.history``: JSON). What a fake
    worker or a hostile custom node writes there is never markup on a participant's page."""
    if kind == "progress_text" and isinstance(data.get("text"), str):
        return {**data, "text": html.escape(data["text"], quote=False)}
    if kind == "display_component":
        given = data.get("props")
        props: dict[str, Any] = given if isinstance(given, dict) else {}
        return {**data, "props": {**props, "history": _history_as_text(props.get("history"))}}
    return data


def _history_as_text(history: object) -> str:
    """A chat history (JSON list of ``{prompt, response, ...}``) with each response escaped; ``[]``
    for anything else."""
    try:
        entries = json.loads(history) if isinstance(history, str) else None
    except ValueError:
        entries = None
    if not isinstance(entries, list):
        return "[]"
    shown = [
        {**entry, "response": html.escape(str(entry.get("response", "")), quote=False)}
        for entry in entries
        if isinstance(entry, dict)
    ]
    return json.dumps(shown)


def preview_frame(data: dict[str, Any]) -> bytes | None:
    """ComfyUI's binary preview frame from a ``b_preview`` event's data, or None if malformed."""
    try:
        image = base64.b64decode(data["image"], validate=True)
    except (KeyError, ValueError, TypeError):
        return None
    kind = FORMAT_CODES.get(str(data.get("format", "jpeg")).lower(), 1)
    return struct.pack(">II", PREVIEW_IMAGE, kind) + image


def preview_data(frame: bytes) -> dict[str, Any] | None:
    """A frame's ``b_preview`` data (``{"image": <base64>, "format": "png"|"jpeg"}``), or None for
    other frames (progress text, previews with metadata) and oversized ones."""
    if len(frame) < 8:
        return None
    event, kind = struct.unpack(">II", frame[:8])
    image = frame[8:]
    if event != PREVIEW_IMAGE or kind not in PREVIEW_FORMATS or not image or len(image) > MAX_PREVIEW_BYTES:
        return None
    return {"image": base64.b64encode(image).decode("ascii"), "format": PREVIEW_FORMATS[kind]}


# --- records --------------------------------------------------------------------------------------


def millis(job: Job) -> int:
    moment = job.finished_at or job.started_at or job.queued_at
    return int(moment.timestamp() * 1000)


def queue_number(job: Job) -> int:
    """The number ComfyUI gave the prompt at submit; a record from before numbers: its queue time."""
    return job.number if job.number is not None else int(job.queued_at.timestamp() * 1000)


def outputs_to_execute(job: Job) -> list[str]:
    return job.outputs_to_execute or sorted({out.node_id for out in job.outputs})


def extra_data(job: Job) -> dict[str, Any]:
    extra = dict(job.extra_data)
    if job.client_id is not None:
        extra["client_id"] = job.client_id
    return extra


def queue_item(job: Job) -> list[Any]:
    return [queue_number(job), job.id, job.prompt, extra_data(job), outputs_to_execute(job)]


def queue_answer(jobs: list[Job]) -> dict[str, list[list[Any]]]:
    """``GET /queue``: the participant's running and pending jobs, each list by number."""
    running = sorted((j for j in jobs if j.state in (JobState.LEASED, JobState.RUNNING)), key=queue_number)
    pending = sorted((j for j in jobs if j.state is JobState.QUEUED), key=queue_number)
    return {
        "queue_running": [queue_item(j) for j in running],
        "queue_pending": [queue_item(j) for j in pending],
    }


def outputs_of(job: Job) -> dict[str, dict[str, list[dict[str, str]]]]:
    outputs: dict[str, dict[str, list[dict[str, str]]]] = {}
    for out in job.outputs:
        item = {"filename": out.filename, "subfolder": out.subfolder, "type": out.type}
        outputs.setdefault(out.node_id, {}).setdefault(out.kind, []).append(item)
    return outputs


def status_of(job: Job) -> dict[str, Any]:
    """A finished job's ``status``, with the messages ComfyUI keeps for it."""
    started = int((job.started_at or job.queued_at).timestamp() * 1000)
    begin = {"prompt_id": job.id, "timestamp": started}
    end = ending(job.id, job.state, job.error, millis(job))
    messages: list[list[Any]] = [
        ["execution_start", begin],
        ["execution_cached", {"nodes": job.cached_nodes, **begin}],
        [end["type"], end["data"]],
    ]
    succeeded = job.state is JobState.SUCCEEDED
    return {"status_str": "success" if succeeded else "error", "completed": succeeded, "messages": messages}


def history_entry(job: Job) -> dict[str, Any]:
    """One ``/history`` value for a finished job."""
    meta = {
        node: {"node_id": node, "display_node": node, "parent_node": None, "real_node_id": node}
        for node in sorted({out.node_id for out in job.outputs})
    }
    prompt = [queue_number(job), job.id, job.prompt, extra_data(job), outputs_to_execute(job)]
    return {"prompt": prompt, "outputs": outputs_of(job), "status": status_of(job), "meta": meta}


def in_history(job: Job) -> bool:
    """Finished after it ran: ComfyUI keeps no history of a prompt deleted while it waited."""
    return job.state.finished and not (job.state is JobState.CANCELLED and job.started_at is None)


def history_answer(
    jobs: list[Job], max_items: int | None = None, offset: int | None = None
) -> dict[str, Any]:
    """``GET /history``: finished jobs, oldest first; ``offset`` skips from the oldest, and with
    ``max_items`` but no ``offset`` the newest ``max_items`` are given, as ComfyUI pages them."""
    done = sorted((j for j in jobs if in_history(j)), key=millis)
    start = offset if offset is not None else -1
    if start < 0 and max_items is not None:
        start = len(done) - max_items
    window = done[max(start, 0) :]
    if max_items is not None:
        window = window[: max(max_items, 1)]  # ComfyUI gives one item for max_items=0 with an offset
    return {job.id: history_entry(job) for job in window}
