"""Job records as Redis stores them (a hash of strings) and as the API shows them (``Job``)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from services.protocol.jobs import Job, JobError, JobLine, JobSubmit, OutputFile


def now_ms() -> int:
    return int(time.time() * 1000)


def ms_to_datetime(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromtimestamp(int(float(value)) / 1000, tz=UTC)


def spec_json(submit: JobSubmit) -> str:
    """The part of a job Lua never reads, kept as one opaque JSON string."""
    prompt = {node_id: node.model_dump(mode="json") for node_id, node in submit.prompt.items()}
    return json.dumps(
        {
            "prompt": prompt,
            "inputs": [ref.model_dump(mode="json") for ref in submit.inputs],
            "client_id": submit.client_id,
            "extra_data": submit.extra_data,
            "outputs_to_execute": submit.outputs_to_execute,
        },
        separators=(",", ":"),
    )


HOLD_FIELDS = ("state", "hold_worker", "hold_expires")


def held_for(fields: dict[str, str], now: int) -> str | None:
    """The busy worker a queued job is held (prepared) for, while its hold lasts; None when the
    job is not held (``held_by_other`` in lib.lua reads the same fields). ``fields``: the job's
    hash, or at least ``HOLD_FIELDS``."""
    holder = fields.get("hold_worker")
    if fields.get("state") != "queued" or not holder or float(fields.get("hold_expires") or 0) <= now:
        return None
    return holder


def pairs_to_dict(flat: list[Any]) -> dict[str, str]:
    """An HGETALL answer that came back through Lua as a flat list."""
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}


LINE_FIELDS = (
    *("id", "user", "pool", "priority", "state", "attempts", "max_attempts", "comfyui_losses"),
    *("queued_at", "started_at", "finished_at", "worker_id", "error", "cancel", "number"),
)
"""The fields of a job's hash its ``JobLine`` reads: all but the workflow (``spec``) and outputs."""


def line_values(fields: dict[str, str], position: int | None) -> dict[str, Any]:
    """The ``JobLine`` fields of a job's hash (or at least its ``LINE_FIELDS``)."""
    error = fields.get("error")
    return {
        "id": fields["id"],
        "user": fields["user"],
        "pool": fields.get("pool") or None,
        "priority": int(fields.get("priority") or 0),
        "state": fields["state"],
        "attempts": int(fields.get("attempts") or 0),
        "max_attempts": int(fields.get("max_attempts") or 1),
        "comfyui_losses": int(fields.get("comfyui_losses") or 0),
        "queued_at": ms_to_datetime(fields.get("queued_at")) or datetime.now(UTC),
        "started_at": ms_to_datetime(fields.get("started_at")),
        "finished_at": ms_to_datetime(fields.get("finished_at")),
        "worker_id": fields.get("worker_id") or None,
        "error": JobError.model_validate_json(error) if error else None,
        "position": position,
        "cancel_requested": fields.get("cancel") == "1",
        "number": int(fields["number"]) if fields.get("number") else None,
    }


def line_from_hash(fields: dict[str, str], position: int | None = None) -> JobLine:
    return JobLine(**line_values(fields, position))


def job_from_hash(fields: dict[str, str], position: int | None = None) -> Job:
    spec = json.loads(fields.get("spec") or "{}")
    outputs = json.loads(fields["outputs"]) if fields.get("outputs") else []
    return Job(
        **line_values(fields, position),
        prompt=spec.get("prompt", {}),
        inputs=spec.get("inputs", []),
        client_id=spec.get("client_id"),
        extra_data=spec.get("extra_data", {}),
        outputs=[OutputFile.model_validate(o) for o in outputs],
        outputs_to_execute=spec.get("outputs_to_execute", []),
        cached_nodes=json.loads(fields["cached"]) if fields.get("cached") else [],
    )
