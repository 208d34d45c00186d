"""``/prompt``, ``/queue``, ``/history``, ``/interrupt``, ``/free``: ComfyUI's queue routes on our queue.

"Queue" in the workspace puts the job on the shared queue as the logged-in participant; the queue
and history panels show only that participant's jobs. Cancelling and interrupting act only on jobs
the participant owns; clearing the history hides entries from the panel (the records expire by
themselves after the retention time).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from services.protocol.jobs import Job, JobState, JobSubmit
from services.queue_manager.errors import JobNotFound, QueueError
from services.queue_manager.workspaces import comfy_format
from services.queue_manager.workspaces.deps import Context, Participant, UserFilesDep
from services.queue_manager.workspaces.prompts import PromptProblem, check_against, referenced_inputs

router = APIRouter()


def hidden_key(ctx: Context, user: str) -> str:
    return ctx.store.keys.hidden(user)


async def own_jobs(ctx: Context, user: str) -> list[Job]:
    """The participant's kept jobs, the waiting ones with their place in the shared queue."""
    jobs = await ctx.store.list_jobs(user)
    for job in jobs:
        if job.state is JobState.QUEUED:
            job.position = await ctx.store.position(job.id)
    return jobs


async def visible_jobs(ctx: Context, user: str) -> list[Job]:
    hidden = {
        h.decode() if isinstance(h, bytes) else h for h in await ctx.redis.smembers(hidden_key(ctx, user))
    }
    return [job for job in await ctx.store.list_jobs(user) if job.id not in hidden]


async def cancel_own(ctx: Context, user: str, job_ids: set[str]) -> None:
    for job_id in job_ids:
        with contextlib.suppress(JobNotFound):
            await ctx.store.cancel(job_id, user=user)


def remaining(jobs: list[Job]) -> int:
    return sum(1 for job in jobs if not job.state.finished)


async def read_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object; ``{}`` for an empty, malformed or non-object body."""
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:  # not JSON, or not UTF-8
        return {}
    return body if isinstance(body, dict) else {}


def ids(value: Any) -> set[str]:
    """``delete`` lists as ComfyUI takes them: a list of ids (anything else deletes nothing)."""
    return {str(item) for item in value} if isinstance(value, list) else set()


@router.get("/api/prompt")
async def queue_status(ctx: Context, user: Participant) -> dict[str, Any]:
    """What the frontend polls when it has no socket: the participant's jobs not yet finished."""
    return {"exec_info": {"queue_remaining": remaining(await ctx.store.list_jobs(user))}}


@router.post("/api/prompt")
async def queue_prompt(request: Request, ctx: Context, user: Participant, files: UserFilesDep) -> Response:
    """Check the API-format graph against the workers' nodes and put it on the shared queue."""
    body = await read_object(request)
    if not body.get("prompt"):
        return JSONResponse(comfy_format.prompt_error("no_prompt", "No prompt provided"), status_code=400)
    try:
        catalogue = await ctx.catalogue.current()
        check_against(body["prompt"], catalogue.nodes)
        body["inputs"] = referenced_inputs(body["prompt"], set(await files.inputs()))
        body["extra_data"] = _kept_extra(body.get("extra_data"), body.get("partial_execution_targets"))
        job = await ctx.store.submit(user, JobSubmit.model_validate(body))
    except PromptProblem as exc:
        error = comfy_format.prompt_error(exc.kind, exc.message, exc.node_errors)
        return JSONResponse(error, status_code=400)
    except ValidationError as exc:
        message = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        return JSONResponse(comfy_format.prompt_error("invalid_prompt", message), status_code=400)
    except QueueError as exc:
        return JSONResponse(comfy_format.prompt_error("queue_refused", exc.message), status_code=exc.status)
    number = comfy_format.queue_number(job)
    return JSONResponse({"prompt_id": job.id, "number": number, "node_errors": {}})


def _kept_extra(extra: Any, targets: Any) -> dict[str, Any]:
    """``extra_data`` without the participant's Comfy account tokens, which must never be stored.

    "Run selected nodes" (``partial_execution_targets``) travels in ``extra_data`` under that key:
    the worker hands it to its ComfyUI's ``POST /prompt`` at the top level, where ComfyUI reads it.
    """
    given = extra if isinstance(extra, dict) else {}
    kept = {k: v for k, v in given.items() if k not in comfy_format.DROPPED_EXTRA and v is not None}
    if isinstance(targets, list) and targets:
        kept["partial_execution_targets"] = [str(t) for t in targets]
    return kept


@router.get("/api/queue")
async def queue(ctx: Context, user: Participant) -> dict[str, Any]:
    return comfy_format.queue_answer(await own_jobs(ctx, user))


@router.post("/api/queue")
async def edit_queue(request: Request, ctx: Context, user: Participant) -> Response:
    """``{"delete": [ids]}`` cancels those of the participant's queued jobs; ``{"clear": true}`` all."""
    body = await read_object(request)
    jobs = await ctx.store.list_jobs(user)
    queued = {job.id for job in jobs if job.state is JobState.QUEUED}
    await cancel_own(ctx, user, queued if body.get("clear") else queued & ids(body.get("delete")))
    return Response(status_code=200)


@router.post("/api/interrupt")
async def interrupt(request: Request, ctx: Context, user: Participant) -> Response:
    """Cancel the participant's running job (the given ``prompt_id``, or all of theirs that run)."""
    wanted = (await read_object(request)).get("prompt_id")
    if wanted is not None and not isinstance(wanted, str):
        message = f"prompt_id must be a string (the id POST /prompt answered), not {type(wanted).__name__}"
        return JSONResponse({"error": message}, status_code=400)
    running = {
        j.id for j in await ctx.store.list_jobs(user) if j.state in (JobState.LEASED, JobState.RUNNING)
    }
    await cancel_own(ctx, user, running if wanted is None else running & {wanted})
    return Response(status_code=200)


@router.post("/api/free")
async def free(user: Participant) -> Response:
    """Freeing GPU memory is the workers' business: accepted and ignored, so the menu item works."""
    return Response(status_code=200)


@router.get("/api/history")
async def history(request: Request, ctx: Context, user: Participant) -> Response:
    try:
        limit = count_param(request, "max_items")
        start = count_param(request, "offset") or 0
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse(comfy_format.history_answer(await visible_jobs(ctx, user), limit, start))


def count_param(request: Request, name: str) -> int | None:
    """A whole-number query parameter (None when absent); ValueError naming it when it is not one."""
    value = request.query_params.get(name)
    if not value:
        return None
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"{name} must be a whole number like 64, not {value!r}")
    return int(value)


@router.get("/api/history/{prompt_id}")
async def history_of(prompt_id: str, ctx: Context, user: Participant) -> dict[str, Any]:
    """One finished job of the participant; ``{}`` while it runs or when it is not theirs."""
    jobs = [job for job in await visible_jobs(ctx, user) if job.id == prompt_id]
    return comfy_format.history_answer(jobs)


@router.post("/api/history")
async def edit_history(request: Request, ctx: Context, user: Participant) -> Response:
    body = await read_object(request)
    finished = {job.id for job in await ctx.store.list_jobs(user) if job.state.finished}
    targets = finished if body.get("clear") else finished & ids(body.get("delete"))
    if targets:
        await ctx.redis.sadd(hidden_key(ctx, user), *targets)
    return Response(status_code=200)
