"""Push dispatch: the queue manager hands jobs to serverless pools as requests to their endpoints.

Serverless autoscalers (RunPod, Verda containers) count the requests sent to their own endpoint;
workers that only poll our queue would make them scale to zero under load. So for each push pool
(``QM_PUSH_POOLS``) this module claims jobs from the store exactly as a worker would (fairness
and priority stay in our queue), keeps at most the pool's ``capacity`` requests in flight, and
sends each lease as an async request. The container's worker reports progress and results to the
lease routes itself (``reply_url`` and the request's own ``reply_token`` in the lease), and after
each job asks for the next one within the same request (``push_requests``: the request's chain),
so its GPU does not wait for a new request between two jobs. The slot stays busy until the
request ends: when the queue has no job for it, at the chain's limits, or when the provider says
it ended. The slots survive a crash or a restart: a dispatcher that starts adopts the requests
of its pool whose chains are still open (``adopt``) and follows them as its own; it does so
before the queue manager answers any call (``dispatching`` runs in its lifespan's start), so the
container of a request it ends takes nothing meanwhile.

Meanwhile the dispatcher heartbeats the first lease (a request can wait in the provider's queue
through a cold start), follows the chain's current job, polls the provider's status, turns provider
failures and timeouts into retryable failures of the current job (the store's lease rules requeue
or dead-letter them) and cancels through the provider when the owner of a job still waiting there
cancels it (a running job's worker hears a cancel through its heartbeat).

Styles: ``runpod`` (``POST {url}/run`` -> ``id``, ``GET {url}/status/{id}``, ``POST {url}/cancel/{id}``)
and ``verda`` (``POST {url}{path}`` with ``Prefer: respond-async`` -> ``Id``; ``GET
{base}/status/{deployment}`` with ``X-Inference-Id``). Verda has no cancel call: a cancelled
request that starts later finds its lease stale at the first heartbeat and its chain closed, and ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import httpx
from redis.exceptions import RedisError

from services.protocol.jobs import JobError, JobState
from services.protocol.workers import Failure, Lease
from services.queue_manager.background import stopping
from services.queue_manager.errors import StaleLease
from services.queue_manager.push_requests import Chain, Chains
from services.queue_manager.settings import PushPool, Settings
from services.queue_manager.store import Store

log = logging.getLogger(__name__)
CLAIM_WAIT_SECONDS = 5.0
OUTAGE_PAUSE_MAX_SECONDS = 30.0  # the longest pause of a pool's requests while its provider refuses them


class Remote(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    UNKNOWN = "unknown"


RUNPOD_STATES = {
    "IN_QUEUE": Remote.QUEUED, "IN_PROGRESS": Remote.RUNNING, "COMPLETED": Remote.DONE,
    "FAILED": Remote.FAILED, "CANCELLED": Remote.FAILED, "TIMED_OUT": Remote.FAILED,
}  # fmt: skip
VERDA_STATES = {
    "Initialized": Remote.QUEUED, "Queue": Remote.QUEUED, "Inference": Remote.RUNNING,
    "Completed": Remote.DONE, "Failed": Remote.FAILED, "Error": Remote.FAILED,
}  # fmt: skip


class Endpoint(Protocol):
    """A pool's endpoint: submit a lease, ask how the request is doing, cancel it."""

    async def submit(self, lease: dict[str, Any]) -> str: ...

    async def status(self, remote_id: str) -> Remote: ...

    async def cancel(self, remote_id: str) -> None: ...


class HttpEndpoint:
    """What both providers' endpoints share: the pool's base URL and its bearer key."""

    def __init__(self, pool: PushPool, http: httpx.AsyncClient) -> None:
        self.pool, self.http = pool, http
        self.url = pool.url.rstrip("/")
        self.auth = {"Authorization": f"Bearer {pool.api_key.get_secret_value()}"}


class RunPodEndpoint(HttpEndpoint):
    async def submit(self, lease: dict[str, Any]) -> str:
        response = await self.http.post(f"{self.url}/run", json={"input": lease}, headers=self.auth)
        response.raise_for_status()
        return str(response.json()["id"])

    async def status(self, remote_id: str) -> Remote:
        response = await self.http.get(f"{self.url}/status/{remote_id}", headers=self.auth)
        response.raise_for_status()
        return RUNPOD_STATES.get(str(response.json().get("status")), Remote.UNKNOWN)

    async def cancel(self, remote_id: str) -> None:
        await self.http.post(f"{self.url}/cancel/{remote_id}", headers=self.auth)


class VerdaEndpoint(HttpEndpoint):
    async def submit(self, lease: dict[str, Any]) -> str:
        headers = {**self.auth, "Prefer": "respond-async"}
        response = await self.http.post(f"{self.url}{self.pool.path}", json=lease, headers=headers)
        response.raise_for_status()
        return str(response.json()["Id"])

    async def status(self, remote_id: str) -> Remote:
        base, deployment = self.url.rsplit("/", 1)
        headers = {**self.auth, "X-Inference-Id": remote_id}
        response = await self.http.get(f"{base}/status/{deployment}", headers=headers)
        response.raise_for_status()
        return VERDA_STATES.get(str(response.json().get("Status")), Remote.UNKNOWN)

    async def cancel(self, remote_id: str) -> None:
        return  # no cancel call: the lease goes stale and the worker stops at its next heartbeat


ENDPOINTS: dict[str, type[RunPodEndpoint | VerdaEndpoint]] = {
    "runpod": RunPodEndpoint,
    "verda": VerdaEndpoint,
}


@dataclass
class Flight:
    """One request at the provider, and the job of its chain it runs now."""

    chain: str
    remote_id: str
    job_id: str
    token: str
    attempts: int
    deadline: float
    next_poll: float = 0.0
    running: bool = False  # a replica runs the request: its worker keeps the lease now

    @classmethod
    def of(cls, chain: str, remote_id: str, lease: Lease, seconds: float) -> Flight:
        return cls(
            chain, remote_id, lease.job.id, lease.token, lease.job.attempts, time.monotonic() + seconds
        )

    def follow(self, chain: Chain, seconds: float) -> None:
        """The container took the chain's next job: track that one (it gets a job's whole time)."""
        self.job_id, self.token, self.attempts = chain.job, chain.token, chain.attempts
        self.deadline, self.running = time.monotonic() + seconds, True


class PoolDispatcher:
    """Keeps up to ``capacity`` of one pool's requests in flight at its endpoint, each running a
    chain of jobs (``push_requests``) until the queue has none for it."""

    def __init__(self, store: Store, pool: PushPool, endpoint: Endpoint, reply_url: str):
        self.store, self.pool, self.endpoint = store, pool, endpoint
        self.chains = Chains(store)
        # The lease must outlive a cold start, so it is renewed more often than the status is polled.
        self.tick = min(pool.poll_seconds, store.settings.heartbeat_seconds)
        self.reply_url = reply_url
        self.job_limit = store.settings.job_limit(pool.name)  # every pool kind's maximum job time
        self.flights: dict[int, Flight] = {}  # slot -> its request
        self._free = list(range(pool.capacity))
        self._slots = asyncio.Semaphore(pool.capacity)
        self._outage = Outage(pool.poll_seconds)

    @property
    def in_flight(self) -> dict[str, str]:
        """Job id -> provider request id, for every request's current job."""
        return {flight.job_id: flight.remote_id for flight in self.flights.values()}

    async def run(self, adopted: list[tuple[int, Flight]]) -> None:
        """Carry the ``adopted`` requests (``adopt``), and new ones while the pool has work."""
        tasks: set[asyncio.Task[None]] = set()
        try:
            carried: list[tuple[int, Lease | Flight]] = list(adopted)
            while not stopping():
                for slot, first in carried:
                    task = asyncio.create_task(self._carry(slot, first))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await self._slots.acquire()
                await self._outage.pause()
                slot = self._free.pop()
                carried = [(slot, await self._next_lease(slot))]
        finally:
            carrying = list(tasks)
            for task in carrying:
                task.cancel()
            # Each ends before the dispatcher's HTTP client and the store close under it.
            await asyncio.gather(*carrying, return_exceptions=True)

    def _slot_id(self, slot: int) -> str:
        return f"push-{self.pool.name}-{slot}"

    async def adopt(self) -> list[tuple[int, Flight]]:
        """The requests an earlier dispatcher of this pool sent (it crashed or was restarted) whose
        chains are still open: each keeps its slot busy and is followed as this dispatcher's own
        until it ends, so the pool never has more than its capacity of requests running and its
        jobs keep the lease, timeout and provider-failure rules. A chain whose slot is gone (the
        capacity shrank) or whose request was never recorded as sent is ended: it takes no more.
        Done before the queue manager answers any call (``dispatching``), so no container of
        such a request takes a job before its chain is ended."""
        try:
            chains = await self.chains.open_in(self.pool.name)
        except (RedisError, OSError) as exc:
            log.warning("open chains unknown", extra={"pool": self.pool.name, "error": repr(exc)})
            return []
        adopted: list[tuple[int, Flight]] = []
        for chain in chains:
            slot = next((s for s in self._free if self._slot_id(s) == chain.worker), None)
            if slot is None or not chain.remote:
                await self.chains.end(chain.id)
                continue
            self._free.remove(slot)
            await self._slots.acquire()  # never waits: the slot was free
            seconds = self.job_limit
            adopted.append((slot, Flight(chain.id, chain.remote, chain.job, chain.token, chain.attempts,
                                         time.monotonic() + seconds)))  # fmt: skip
            log.info("request adopted", extra={"job_id": chain.job, "pool": self.pool.name})
        return adopted

    async def _next_lease(self, slot: int) -> Lease:
        while True:
            try:
                # Behind idle claims: a container between two jobs of its request is a GPU already up.
                lease = await self.store.claim(
                    self._slot_id(slot), self.pool.name, CLAIM_WAIT_SECONDS, behind=True
                )
            except (RedisError, OSError) as exc:
                log.warning("claim failed, retrying", extra={"pool": self.pool.name, "error": repr(exc)})
                await asyncio.sleep(1.0)
                continue
            if lease is not None:
                return lease
            if stopping():  # redis-py may have swallowed the cancel while it waited
                raise asyncio.CancelledError

    async def _carry(self, slot: int, first: Lease | Flight) -> None:
        """Carry one request in ``slot`` until it ends: a new one for the lease ``first``, or the
        request ``first`` an earlier dispatcher sent (``adopt``)."""
        flight: Flight | None = None
        if isinstance(first, Flight):
            flight, chain, job_id, token = first, first.chain, first.job_id, first.token
        else:
            chain, job_id, token = "", first.job.id, first.token
        try:
            if isinstance(first, Lease):
                chain, reply_token = await self.chains.open(self.pool, self._slot_id(slot), first)
                flight = await self._submit(first, chain, reply_token)
            if flight is not None:
                self.flights[slot] = flight
                await self._track(flight)
        except Exception:
            if stopping():  # the queue manager stops (its client may be closed): the container goes on
                return
            log.exception("push dispatch failed", extra={"job_id": job_id, "pool": self.pool.name})
            current = self.flights.get(slot)
            job_id, token = (current.job_id, current.token) if current else (job_id, token)
            await self._requeue(
                job_id, token, "DispatchError", "the dispatcher failed while carrying the job"
            )
        finally:
            self.flights.pop(slot, None)
            # The request takes no more jobs, whatever ended it; one that goes on as the queue
            # manager stops is left to the one that starts next (``adopt``), as after a crash.
            if chain and not stopping():
                with contextlib.suppress(RedisError, OSError):
                    await self.chains.end(chain)
            self._free.append(slot)
            self._slots.release()

    async def _submit(self, lease: Lease, chain: str, reply_token: str) -> Flight | None:
        reply = {"reply_url": self.reply_url, "reply_token": reply_token, "chain": chain}
        payload = lease.model_copy(update=reply).model_dump(mode="json")
        try:
            remote_id = await self.endpoint.submit(payload)
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            await self._refused(lease, exc)
            return None
        self._outage.over()
        await self.chains.sent(chain, remote_id)
        log.info("job pushed", extra={"job_id": lease.job.id, "pool": self.pool.name, "remote_id": remote_id})
        return Flight.of(chain, remote_id, lease, self.job_limit)

    async def _track(self, flight: Flight) -> None:
        # The end of a job's lease or a change of the chain ({p}:ended, heard by this process's
        # listener) is looked at once; polling covers everything else.
        ends = self.store.wakeups.ends
        with ends.watch(flight.chain) as changed:
            while True:
                if stopping():  # a cancel that asyncio.wait_for or redis-py swallowed
                    raise asyncio.CancelledError
                with ends.watch(flight.job_id, changed):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), self.tick)
                    changed.clear()
                    if await self._over(flight):
                        return

    async def _over(self, flight: Flight) -> bool:
        """Whether the request has ended (its slot is free again)."""
        chain = await self.chains.get(flight.chain)
        # A chain whose take gave its job back as the caller left (leave.lua: token '') never gave
        # that job to the container: the request's job is still the one followed.
        if chain is not None and chain.token and chain.job != flight.job_id:
            flight.follow(chain, self.job_limit)
        if await self._still_ours(flight):
            return await self._ended_remotely(flight)
        if flight.running and chain is not None and chain.open and await self._finished(flight.job_id):
            return await self._ended_remotely(flight)  # between two jobs: the container asks for more
        return True

    async def _finished(self, job_id: str) -> bool:
        job = await self.store.get(job_id)
        return job is None or job.state.finished

    async def _unchanged(self, flight: Flight) -> bool:
        """A running request's job: False once it ended or moved on. A cancel reaches the worker
        through its heartbeat; the request is not cancelled, as it may carry more jobs."""
        job = await self.store.get(flight.job_id)
        if job is None or job.state.finished:
            return False
        if job.attempts != flight.attempts or job.state == JobState.QUEUED:
            await self.endpoint.cancel(flight.remote_id)  # requeued: do not let it run twice
            return False
        return True

    async def _ended_remotely(self, flight: Flight) -> bool:
        if time.monotonic() < flight.next_poll:
            return False
        flight.next_poll = time.monotonic() + self.pool.poll_seconds
        remote = await self._remote(flight)
        flight.running = flight.running or remote is Remote.RUNNING
        if remote in (Remote.DONE, Remote.FAILED):
            why = "finished without reporting" if remote is Remote.DONE else "reported a failure"
            await self._requeue(flight.job_id, flight.token, "ProviderFailed", f"{self.pool.name} {why}")
            return True
        if time.monotonic() > flight.deadline:
            await self._past_limit(flight)
            return True
        return False

    async def _past_limit(self, flight: Flight) -> None:
        """The request's job has not ended within the pool's maximum job time: cancelled at the
        provider. A job a replica ran that long fails for good, as on any pool (``overrun``); one
        still waiting at the provider (a cold start that never ended) ran nothing and is retried."""
        await self.endpoint.cancel(flight.remote_id)
        if flight.running:
            with contextlib.suppress(StaleLease):
                await self.store.overrun(flight.job_id, flight.token, self.pool.name)
            return
        message = f"{self.pool.name} did not start it within {self.job_limit:g} s"
        await self._requeue(flight.job_id, flight.token, "Timeout", message)

    async def _still_ours(self, flight: Flight) -> bool:
        """False once the job ended, moved on, or its owner cancelled it.

        While the request waits at the provider (a cold start can outlast a lease) the dispatcher
        renews the lease. Once a replica runs it, the worker renews it, so a replica that dies lets
        the lease expire and the usual lease rules requeue the job.
        """
        if flight.running:
            return await self._unchanged(flight)
        try:
            reply = await self.store.heartbeat(flight.job_id, flight.token)
        except StaleLease:
            if await self._finished(flight.job_id):
                flight.running = True  # its container ran it to its end and may go on with the chain
            else:
                await self.endpoint.cancel(flight.remote_id)  # requeued elsewhere: do not run it twice
            return False
        if reply.cancel:
            return await self._cancel_waiting(flight)
        return True

    async def _cancel_waiting(self, flight: Flight) -> bool:
        """The owner cancelled the job of a request not yet seen running: cancel it at the provider,
        unless a replica has started it meanwhile (its worker hears the cancel at its heartbeat,
        and the request goes on with its chain)."""
        if await self._remote(flight) is Remote.RUNNING:
            flight.running = True
            return True
        await self.endpoint.cancel(flight.remote_id)
        error = JobError(type="Cancelled", message="cancelled by its owner")
        await self._report(flight.job_id, flight.token, error)
        return False

    async def _remote(self, flight: Flight) -> Remote:
        try:
            return await self.endpoint.status(flight.remote_id)
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("provider status failed", extra={"job_id": flight.job_id, "error": repr(exc)})
            return Remote.UNKNOWN

    async def _refused(self, lease: Lease, exc: Exception) -> None:
        """The provider did not take the request. A passing refusal (no answer, 429, a 5xx: an
        outage) ran nothing: the job goes back to its place in line, no attempt counted, and the
        pool's requests pause until the provider takes one (else a short outage used up the
        attempts of every job waiting for the pool). Any other (a wrong key, a malformed answer)
        fails the attempt with the provider's answer, which says what to fix."""
        message = f"{self.pool.name} did not take the job: {exc!r}"
        if not passing(exc):
            await self._requeue(lease.job.id, lease.token, "ProviderRefused", message)
            return
        seconds = self._outage.refused()
        log.warning(message, extra={"job_id": lease.job.id, "pool": self.pool.name, "pause_seconds": seconds})
        with contextlib.suppress(StaleLease):
            await self.store.release(lease.job.id, lease.token)

    async def _requeue(self, job_id: str, token: str, kind: str, message: str) -> None:
        await self._report(job_id, token, JobError(type=kind, message=message, retryable=True))

    async def _report(self, job_id: str, token: str, error: JobError) -> None:
        with contextlib.suppress(StaleLease):
            await self.store.fail(job_id, Failure(token=token, error=error))


def passing(exc: Exception) -> bool:
    """Whether a provider's refusal of a request is an outage that passes: no answer, or 429/5xx."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


class Outage:
    """A pool's requests pause while its provider refuses them: one poll interval after the first
    refusal, doubling with each one in a row up to ``OUTAGE_PAUSE_MAX_SECONDS``; a request the
    provider takes ends it."""

    def __init__(self, first_seconds: float) -> None:
        self.first_seconds = first_seconds
        self.refusals = 0
        self.until = 0.0

    def refused(self) -> float:
        """One more refusal in a row: the pause it starts, in seconds."""
        self.refusals += 1
        seconds = min(OUTAGE_PAUSE_MAX_SECONDS, self.first_seconds * 2.0 ** (self.refusals - 1))
        self.until = time.monotonic() + seconds
        return seconds

    def over(self) -> None:
        self.refusals, self.until = 0, 0.0

    async def pause(self) -> None:
        """Until the pause is over (at once when there is none)."""
        await asyncio.sleep(max(0.0, self.until - time.monotonic()))


def dispatcher_for(
    store: Store, settings: Settings, pool: PushPool, http: httpx.AsyncClient
) -> PoolDispatcher:
    if pool.name not in settings.worker_tokens:
        raise ValueError(
            f"push pool {pool.name!r} has no worker token: add it to QM_WORKER_TOKENS so its containers "
            "can register (each request carries a reply token of its own)"
        )
    endpoint = ENDPOINTS[pool.style](pool, http)
    return PoolDispatcher(store, pool, endpoint, settings.public_url)


@contextlib.asynccontextmanager
async def dispatching(
    store: Store, settings: Settings, pools: list[PushPool] | None = None
) -> AsyncIterator[list[PoolDispatcher]]:
    """Run one dispatcher per push pool (the settings' unless given) while inside; each adopts
    its pool's open requests on the way in (``PoolDispatcher.adopt``)."""
    pools = settings.push_pools if pools is None else pools
    async with httpx.AsyncClient(timeout=max([p.request_timeout_seconds for p in pools], default=30)) as http:
        dispatchers = [dispatcher_for(store, settings, pool, http) for pool in pools]
        adopted = [await dispatcher.adopt() for dispatcher in dispatchers]  # before any call is answered
        tasks = [
            asyncio.create_task(d.run(flights), name=f"dispatch-{d.pool.name}")
            for d, flights in zip(dispatchers, adopted, strict=True)
        ]
        try:
            yield dispatchers
        finally:
            carrying = list(tasks)
            for task in carrying:
                task.cancel()
            # Each ends before the dispatcher's HTTP client and the store close under it.
            await asyncio.gather(*carrying, return_exceptions=True)
            await asyncio.gather(*tasks, return_exceptions=True)
