"""The queue manager's worker API (``services/protocol/workers.py``), with retries.

Network errors, 5xx and 429 are retried with exponential backoff and jitter for up to
``retry_seconds``; completion and failure are idempotent for the lease holder on the server, so a
retried call after a lost reply never completes a job twice. 409 means the lease is gone.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

from services.protocol.jobs import JobError, OutputFile
from services.protocol.workers import (
    ChainCall,
    Completion,
    EventBatch,
    Failure,
    HeartbeatReply,
    JobEvent,
    JobTiming,
    Lease,
    LeaseCall,
    NextCall,
    RegisterReply,
    Release,
    StartCall,
    StartReply,
    WorkerRegistration,
)

log = logging.getLogger(__name__)


class LeaseLostError(Exception):
    """409: this worker no longer holds the lease (it expired and the job moved on)."""


class QueueRefusedError(Exception):
    """The queue manager refused the call for a reason retrying cannot fix."""


class BodyRefusedError(QueueRefusedError):
    """413: the call's body is larger than the queue manager takes (``QM_MAX_BODY_BYTES``)."""


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, httpx.HTTPStatusError) and (
        exc.response.status_code >= 500 or exc.response.status_code == 429
    )


class QueueClient:
    def __init__(
        self, base_url: str, token: str, retry_seconds: float = 120.0, holder: str | None = None
    ) -> None:
        """``holder``: a push container's own worker id, sent with each lease call so its registry
        record shows it busy (pull workers claim under their own id and need not send it)."""
        self.base_url = base_url.rstrip("/")
        self.holder = holder
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=30.0)
        self.retry_seconds = retry_seconds

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _post(self, path: str, body: Any = None, read_seconds: float = 30.0) -> httpx.Response:
        retrying = AsyncRetrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_delay(self.retry_seconds),
            wait=wait_exponential_jitter(multiplier=0.05, max=5.0),
            reraise=True,
            before_sleep=before_sleep_log(log, logging.WARNING),
        )
        async for attempt in retrying:
            with attempt:
                reply = await self.http.post(
                    path, content=body, timeout=read_seconds, headers={"Content-Type": "application/json"}
                )
                return self._check(reply, path)
        raise AssertionError("unreachable")  # pragma: no cover

    def _check(self, reply: httpx.Response, path: str) -> httpx.Response:
        if reply.status_code == 409:
            raise LeaseLostError(f"{path}: the lease is no longer held by this worker")
        if reply.status_code == 401:
            raise QueueRefusedError(
                f"the queue manager at {self.base_url} refused the worker token: set WORKER_TOKEN to the "
                "token of this worker's pool (WORKER_POOL)"
            )
        if reply.status_code == 413:
            raise BodyRefusedError(f"{path} answered 413: {reply.text[:500]}")
        if 400 <= reply.status_code < 500 and reply.status_code != 429:
            raise QueueRefusedError(f"{path} answered {reply.status_code}: {reply.text[:500]}")
        reply.raise_for_status()
        return reply

    async def register(self, registration: WorkerRegistration) -> RegisterReply:
        reply = await self._post("/api/workers/register", registration.model_dump_json())
        return RegisterReply.model_validate_json(reply.content)

    async def drain(self, worker_id: str) -> None:
        """Tell the queue manager this worker is shutting down: one try, as it is leaving anyway."""
        path = f"/api/workers/{worker_id}/drain"
        self._check(await self.http.post(path, timeout=5.0), path)

    async def deregister(self, worker_id: str) -> None:
        """This worker leaves for good (its record leaves the admin page): one try, as it is leaving."""
        path = f"/api/workers/{worker_id}/deregister"
        self._check(await self.http.post(path, timeout=5.0), path)

    async def claim(
        self, worker_id: str, wait: float, prepare: bool = False, hold_next: bool = False
    ) -> Lease | None:
        """The next job; ``prepare``: this worker is busy, so the job is only held for it;
        ``hold_next`` (idle): the job after it is held for this worker too (``Lease.held``)."""
        asked = "&prepare=1" if prepare else f"&claim_id={secrets.token_urlsafe(12)}"  # sent again by a retry
        asked += "&hold_next=1" if hold_next else ""
        path = f"/api/workers/{worker_id}/claim?wait={wait:g}" + asked
        reply = await self._post(path, read_seconds=wait + 15.0)
        return None if reply.status_code == 204 else Lease.model_validate_json(reply.content)

    async def next_in_chain(self, chain: str, after: str, linger: float = 10.0) -> Lease | None:
        """A push request's next job after the one leased with ``after`` (a retry after a lost
        reply gets the same one), or None: the request is over (``linger``: the most the queue
        manager may wait for one, plus the reply's time)."""
        body = NextCall(worker_id=self.holder, after=after).model_dump_json()
        reply = await self._post(f"/api/push/{chain}/next", body, read_seconds=linger + 15.0)
        return None if reply.status_code == 204 else Lease.model_validate_json(reply.content)

    async def end_chain(self, chain: str) -> None:
        """This push request takes no more jobs: one try, as the request ends anyway."""
        path = f"/api/push/{chain}/end"
        body = ChainCall(worker_id=self.holder).model_dump_json()
        headers = {"Content-Type": "application/json"}
        self._check(await self.http.post(path, content=body, headers=headers, timeout=5.0), path)

    async def start(self, job_id: str, token: str, worker_id: str, hold_next: bool = False) -> StartReply:
        """Start the prepared job held with ``token``, or learn what to run instead; ``hold_next``:
        the reply also holds the job after it for this worker (``StartReply.held``)."""
        body = StartCall(token=token, worker_id=worker_id, hold_next=hold_next).model_dump_json()
        return StartReply.model_validate_json((await self._post(f"/api/leases/{job_id}/start", body)).content)

    async def heartbeat(
        self, job_id: str, token: str, wait: float = 0.0, renew: bool = True, ran: bool = False
    ) -> HeartbeatReply:
        """Renew the lease (``renew=False``: only check it); with ``wait`` the reply is held open
        until a cancel or ``wait`` seconds. ``ran``: ComfyUI is done with the job (it holds no GPU)."""
        said = "&ran=true" if ran else ""
        reply = await self._post(
            f"/api/leases/{job_id}/heartbeat?wait={wait:g}&renew={str(renew).lower()}{said}",
            LeaseCall(token=token, worker_id=self.holder).model_dump_json(),
            read_seconds=wait + 15.0,
        )
        return HeartbeatReply.model_validate_json(reply.content)

    async def events(self, job_id: str, token: str, events: list[JobEvent]) -> None:
        await self._post(
            f"/api/leases/{job_id}/events",
            EventBatch(token=token, worker_id=self.holder, events=events).model_dump_json(),
        )

    async def complete(
        self,
        job_id: str,
        token: str,
        outputs: list[OutputFile],
        timing: JobTiming | None = None,
        events: list[JobEvent] | None = None,
    ) -> None:
        """The job succeeded; ``events``: its last ones, not sent yet (published before its end)."""
        body = Completion(
            token=token, worker_id=self.holder, outputs=outputs, timing=timing, events=events or []
        )
        await self._end(job_id, "complete", body)

    async def fail(
        self,
        job_id: str,
        token: str,
        error: JobError,
        timing: JobTiming | None = None,
        events: list[JobEvent] | None = None,
    ) -> None:
        """The job failed; ``events``: its last ones, not sent yet (published before its end)."""
        body = Failure(token=token, worker_id=self.holder, error=error, timing=timing, events=events or [])
        await self._end(job_id, "fail", body)

    async def _end(self, job_id: str, call: str, body: Completion | Failure) -> None:
        """Post a completion or failure. A queue manager whose body limit (``QM_MAX_BODY_BYTES``)
        refuses it with its events (a few large previews) gets them in an ``/events`` call first,
        best effort as ever, and the report without them: the outcome is never lost to its events."""
        path = f"/api/leases/{job_id}/{call}"
        try:
            await self._post(path, body.model_dump_json())
        except BodyRefusedError:
            if not body.events:
                raise
            log.warning(
                "%s: the report was too large with its %d events: sending them first", path, len(body.events)
            )
            with contextlib.suppress(QueueRefusedError):
                await self.events(job_id, body.token, body.events)
            await self._post(path, body.model_copy(update={"events": []}).model_dump_json())

    async def release(self, job_id: str, token: str, comfyui_lost: bool = False) -> None:
        body = Release(token=token, worker_id=self.holder, comfyui_lost=comfyui_lost)
        await self._post(f"/api/leases/{job_id}/release", body.model_dump_json())
