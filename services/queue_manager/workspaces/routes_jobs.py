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

from services.protocol import comfyui
from services.protocol.jobs import Job, JobState, JobSubmit
from services.queue_manager.errors import JobNotFound, QueueError, WorkshopClosed
from services.queue_manager.scripts import HideArgs
from services.queue_manager.workspaces.deps import Context, Participant, UserFilesDep
from services.queue_manager.workspaces.prompts import check
from services.queue_manager.workspaces.validation import PromptProblem

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


async def cancel_own(ctx: Context, user: str, job_ids: set[str], *, one_status: bool = False) -> None:
    """Cancel those of the participant's jobs; ``one_status``: the page hears one queue ``status``
    for all of them (a cleared queue), not one per job."""
    for index, job_id in enumerate(sorted(job_ids), 1):
        statuses = int(index == len(job_ids)) if one_status else None
        with contextlib.suppress(JobNotFound):
            await ctx.store.cancel(job_id, user=user, statuses=statuses)


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


@router.get("/prompt")
async def queue_status(ctx: Context, user: Participant) -> dict[str, Any]:
    """What the frontend polls when it has no socket: the participant's jobs not yet finished."""
    return {"exec_info": {"queue_remaining": remaining(await ctx.store.list_jobs(user))}}


@router.post("/prompt")
async def queue_prompt(request: Request, ctx: Context, user: Participant, files: UserFilesDep) -> Response:
    """Check the API-format graph as ComfyUI does (on the workers' nodes and the participant's own
    files) and put it on the shared queue; a refusal is ComfyUI's 400 with ``node_errors``."""
    body = await read_object(request)
    if "prompt" not in body:
        return JSONResponse(comfyui.prompt_error("no_prompt", "No prompt provided"), status_code=400)
    try:
        catalogue = await ctx.catalogue.current()
        verdict, body["inputs"] = await check(body, catalogue.nodes, files)
        body["outputs_to_execute"] = verdict.outputs if verdict else []
        body["extra_data"] = _kept_extra(body.get("extra_data"), body.get("partial_execution_targets"))
        job = await ctx.store.submit(user, JobSubmit.model_validate(body))
    except PromptProblem as exc:
        error = comfyui.prompt_error(exc.kind, exc.message, exc.details, exc.node_errors)
        return JSONResponse(error, status_code=400)
    except ValidationError as exc:
        message = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        return JSONResponse(comfyui.prompt_error("invalid_prompt", message), status_code=400)
    except QueueError as exc:
        return JSONResponse(comfyui.prompt_error("queue_refused", exc.message), status_code=exc.status)
    node_errors = verdict.node_errors if verdict else {}
    return JSONResponse(
        {"prompt_id": job.id, "number": comfyui.queue_number(job), "node_errors": node_errors}
    )


def _kept_extra(extra: Any, targets: Any) -> dict[str, Any]:
    """``extra_data`` without the participant's Comfy account tokens, which must never be stored.

    "Run selected nodes" (``partial_execution_targets``) travels in ``extra_data`` under that key:
    the worker hands it to its ComfyUI's ``POST /prompt`` at the top level, where ComfyUI reads it.
    """
    given = extra if isinstance(extra, dict) else {}
    kept = {k: v for k, v in given.items() if k not in comfyui.DROPPED_EXTRA and v is not None}
    if isinstance(targets, list) and targets:
        kept["partial_execution_targets"] = [str(t) for t in targets]
    return kept


@router.get("/queue")
async def queue(ctx: Context, user: Participant) -> dict[str, Any]:
    return comfyui.queue_answer(await own_jobs(ctx, user))


@router.get("/workshop/places")
async def places(ctx: Context, user: Participant) -> dict[str, Any]:
    """Where the participant's jobs stand in the shared queue (1 = next), for "My place in line":
    ComfyUI's queue shows only this participant's jobs, so it cannot say how many run first."""
    jobs = await own_jobs(ctx, user)
    waiting = sorted(
        (j for j in jobs if j.state is JobState.QUEUED), key=lambda j: (j.position is None, j.position)
    )
    return {
        "running": [j.id for j in jobs if j.state in (JobState.LEASED, JobState.RUNNING)],
        "waiting": [{"prompt_id": j.id, "place": (j.position or 0) + 1} for j in waiting],
    }


@router.post("/queue")
async def edit_queue(request: Request, ctx: Context, user: Participant) -> Response:
    """``{"delete": [ids]}`` cancels those of the participant's queued jobs; ``{"clear": true}`` all."""
    body = await read_object(request)
    jobs = await ctx.store.list_jobs(user)
    queued = {job.id for job in jobs if job.state is JobState.QUEUED}
    if body.get("clear"):
        await cancel_own(ctx, user, queued, one_status=True)
    else:
        await cancel_own(ctx, user, queued & ids(body.get("delete")))
    return Response(status_code=200)


@router.post("/interrupt")
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


@router.post("/free")
async def free(user: Participant) -> Response:
    """Freeing GPU memory is the workers' business: accepted and ignored, so the menu item works."""
    return Response(status_code=200)


@router.get("/history")
async def history(request: Request, ctx: Context, user: Participant) -> Response:
    """Finished jobs, oldest first, paged as ComfyUI pages them (``max_items``, ``offset``)."""
    try:
        limit, start = (whole(request, name) for name in ("max_items", "offset"))
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse(comfyui.history_answer(await visible_jobs(ctx, user), limit, start))


MAX_DIGITS = 18
"""Longer counts are refused by name (Python's ``int`` refuses past 4300 digits, naming only itself)."""


def whole(request: Request, name: str) -> int | None:
    """A count query parameter (None when absent); ValueError naming it when it is no whole number
    (ComfyUI's own ``int()`` answers 500 to those). Negative ones page as in ComfyUI, whose own
    default ``offset`` is -1."""
    value = request.query_params.get(name)
    if value is None:
        return None
    digits = value.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()) or len(digits) > MAX_DIGITS:
        raise ValueError(
            f"{name} must be a whole number like 64 (at most {MAX_DIGITS} digits), not {value[:40]!r}"
        )
    return int(value)


@router.get("/history/{prompt_id}")
async def history_of(prompt_id: str, ctx: Context, user: Participant) -> dict[str, Any]:
    """One finished job of the participant; ``{}`` while it runs or when it is not theirs."""
    jobs = [job for job in await visible_jobs(ctx, user) if job.id == prompt_id]
    return comfyui.history_answer(jobs)


@router.post("/history")
async def edit_history(request: Request, ctx: Context, user: Participant) -> Response:
    body = await read_object(request)
    finished = {job.id for job in await ctx.store.list_jobs(user) if job.state.finished}
    targets = finished if body.get("clear") else finished & ids(body.get("delete"))
    if targets:
        reply = await ctx.store.scripts.run(HideArgs(ctx.store.prefix, user, tuple(sorted(targets))))
        if reply[0] == "closed":
            raise WorkshopClosed()
    return Response(status_code=200)
