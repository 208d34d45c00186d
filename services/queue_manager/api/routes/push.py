"""A push container asks for more work within its request (``services/queue_manager/push_requests.py``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response, status

from services.protocol.workers import ChainCall, Lease, NextCall
from services.queue_manager.api.deps import HolderDep, StoreDep, named
from services.queue_manager.push_requests import Chains, OtherRequest

router = APIRouter(prefix="/api/push/{chain_id}", tags=["push"])
ChainId = Annotated[str, Path(min_length=16, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
REFUSED: dict[int | str, dict[str, Any]] = {
    403: {
        "description": "the chain belongs to another pool than this token's, or another request than this "
        "reply token's, or the request is run by another container than the one named"
    },
    404: {"description": "no such chain (or it expired)"},
}
TAKEN: dict[int | str, dict[str, Any]] = {
    409: {"description": "the chain is past that job, or its take still ran after the linger"}
}


async def chain_pool(chain_id: ChainId, holder: HolderDep) -> str:
    """The caller's pool; a reply token acts on its own request's chain only. Routes list it before
    the call's ``named`` body, so a call on another request's chain binds that request to nobody."""
    if holder.reply is not None and holder.reply.chain != chain_id:
        raise OtherRequest()
    return holder.pool


ChainPool = Annotated[str, Depends(chain_pool)]


@router.post(
    "/next", response_model=Lease, responses={204: {"description": "the request is over"}, **REFUSED, **TAKEN}
)
async def next_job(
    chain_id: ChainId,
    pool: ChainPool,  # before the call's name: a reply token is bound only by its own request's calls
    call: Annotated[NextCall, Depends(named(NextCall))],
    request: Request,
    store: StoreDep,
) -> Response:
    """The job this push request runs after ``call.after`` (the one the queue gives an idle worker
    of the pool now), waiting up to the pool's linger for one; 204: the request takes no more, end
    it. A repeat gets the same job, also one sent while the take is under way (it waits for the
    take); a call after an older job, 409."""
    chains = Chains(store)
    lease = await chains.next(chain_id, pool, call.after, call.worker_id)
    if lease is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    if await request.is_disconnected():  # the container is gone: the job goes back, unless it asked again
        await chains.leave(chain_id, call.after, lease)
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    await store.holder_report(call.worker_id, pool, lease.job.id, busy=True)  # the admin page: busy now
    return Response(lease.model_dump_json(), media_type="application/json")


@router.post("/end", status_code=status.HTTP_204_NO_CONTENT, responses=REFUSED)
async def end(
    chain_id: ChainId, pool: ChainPool, call: Annotated[ChainCall, Depends(named(ChainCall))], store: StoreDep
) -> Response:
    """The container ends its request now (stopping, or its ComfyUI is down): no more jobs in it."""
    await Chains(store).end(chain_id, pool)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
