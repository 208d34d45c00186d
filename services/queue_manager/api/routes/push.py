"""A push container asks for more work within its request (``services/queue_manager/push_requests.py``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response, status

from services.protocol.workers import ChainCall, Lease
from services.queue_manager.api.deps import HolderPool, StoreDep
from services.queue_manager.push_requests import Chains

router = APIRouter(prefix="/api/push/{chain_id}", tags=["push"])
ChainId = Annotated[str, Path(min_length=16, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
REFUSED: dict[int | str, dict[str, Any]] = {
    403: {"description": "the chain belongs to another pool than this token's"},
    404: {"description": "no such chain (or it expired)"},
}


@router.post(
    "/next", response_model=Lease, responses={204: {"description": "the request is over"}, **REFUSED}
)
async def next_job(
    chain_id: ChainId, call: ChainCall, request: Request, pool: HolderPool, store: StoreDep
) -> Response:
    """The job this push request runs next (the one the queue gives an idle worker of the pool
    now), waiting up to the pool's linger for one; 204: the request takes no more, end it."""
    chains = Chains(store)
    lease = await chains.next(chain_id, pool, call.worker_id)
    if lease is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    if await request.is_disconnected():  # the container is gone: nobody holds the job
        await store.release(lease.job.id, lease.token)
        await chains.end(chain_id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    await store.holder_report(call.worker_id, pool, lease.job.id, busy=True)  # the admin page: busy now
    return Response(lease.model_dump_json(), media_type="application/json")


@router.post("/end", status_code=status.HTTP_204_NO_CONTENT, responses=REFUSED)
async def end(chain_id: ChainId, call: ChainCall, pool: HolderPool, store: StoreDep) -> Response:
    """The container ends its request now (stopping, or its ComfyUI is down): no more jobs in it."""
    await Chains(store).end(chain_id, pool)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
