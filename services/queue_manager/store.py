"""The queue: every job state change goes through one Lua script, so none is ever half done.

``Store`` is the one object the API, the push dispatcher, the workspace API and the CLI use::

    store = Store(redis, settings)
    job = await store.submit("ada", JobSubmit(prompt=...))       # QueueLimit, JobExists
    await store.list_jobs("ada"); await store.get(job.id); await store.position(job.id)
    await store.cancel(job.id, user="ada")                          # JobNotFound
    lease = await store.claim("worker-1", "h100", wait=25)          # Lease | None
    await store.heartbeat(job.id, lease.token)                      # StaleLease
    await store.complete(job.id, Completion(token=lease.token, outputs=[...]))
    async with store.events.subscribe("ada") as stream: ...         # UserEvent

The key schema and each key's lifetime are in ``keys.py``; the scripts in ``lua/``. Scheduling
(``Settings.scheduling``) lives in the schedule score a job gets at submit: ``fifo`` = submit order;
``fair`` = start-time fair queueing (a user's n-th waiting job is in round n, so everyone's first job
runs before anyone's second); ``priority`` = admin-set job + user priority, fair inside a level.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from typing import Any

from redis.asyncio import Redis

from services.protocol.jobs import Job, JobState, JobSubmit
from services.queue_manager import notices
from services.queue_manager.errors import JobExists, JobNotFound, QueueLimit, UnknownPool, WorkshopClosed
from services.queue_manager.keys import ANY_POOL
from services.queue_manager.leases import LeaseOps
from services.queue_manager.queue_admin import AdminOps
from services.queue_manager.records import job_from_hash, now_ms, pairs_to_dict, spec_json
from services.queue_manager.registry import WorkerOps
from services.queue_manager.scripts import CancelArgs, ForgetArgs, SubmitArgs
from services.queue_manager.settings import Settings
from services.queue_manager.wakeups import Ticket

log = logging.getLogger(__name__)
MAX_KEPT_JOBS = 200
"""Most jobs one participant keeps, and what her lists (``list_jobs``: the queue and history panels,
``GET /api/jobs``) show: past it, or past ``QM_MAX_KEPT_BYTES`` of their workflows, her oldest finished
ones are forgotten early (``lua/forget.lua``), so that nobody can fill Redis by queueing and
cancelling in a loop. The forgotten ones are those no list showed any more."""


def connect(settings: Settings) -> Redis:
    """A Redis client for the queue; timeouts so an unreachable Redis fails requests, not hangs them.
    Here, not in ``main.py``: the CLI's steps (the destroy's drain and save, the morning's load)
    connect without building the web app, whose import cost each step seconds of CPU."""
    return Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_connect_timeout=5,
        health_check_interval=15,
        retry_on_timeout=True,
    )


class Store(LeaseOps, WorkerOps, AdminOps):
    async def submit(
        self, user: str, submit: JobSubmit, *, priority: int = 0, pool: str | None = None
    ) -> Job:
        """Queue a job for ``user``. Priority and pool are the caller's (admin) choice, not the user's;
        a pool no worker token names is refused (``UnknownPool``): no worker could ever claim it."""
        if pool and pool not in self.settings.worker_tokens:
            raise UnknownPool(pool, list(self.settings.worker_tokens))
        job_id = str(submit.prompt_id or uuid.uuid4())
        scope = pool or ANY_POOL
        # A claim parked in this process gets the next job from the submit's own script.
        ticket, token, now = self.wakeups.reserve(scope), secrets.token_urlsafe(24), now_ms()
        args = SubmitArgs(
            prefix=self.prefix,
            id=job_id,
            user=user,
            scope=scope,
            pool=pool or "",
            priority=priority,
            mode=self.settings.scheduling.value,
            max_queued=self.settings.max_queued_per_user,
            now_ms=now,
            max_attempts=self.settings.max_attempts,
            spec_json=spec_json(submit),
            front=int(submit.front),
            claim=self.claimant(ticket.worker_id, ticket.pool, token, now) if ticket is not None else None,
            claim_id=ticket.claim_id if ticket is not None else None,
        )
        try:
            reply = await self.scripts.run(args)
        except BaseException:
            if ticket is not None:
                ticket.deliver(None)  # the parked claim goes on waiting
            raise
        if ticket is not None and reply[0] != "ok":
            ticket.deliver(None)
        job = await self._submitted(reply, job_id, user, scope, ticket, token)
        await self.scripts.run(ForgetArgs(self.prefix, user, self.settings.max_kept_bytes, MAX_KEPT_JOBS))
        return job

    async def _submitted(
        self, reply: list[Any], job_id: str, user: str, scope: str, ticket: Ticket | None, token: str
    ) -> Job:
        if reply[0] == "closed":
            raise WorkshopClosed()
        if reply[0] == "exists":
            raise JobExists(job_id)
        if reply[0] == "limit":
            raise QueueLimit(user, int(reply[1]))
        log.info("job queued", extra={"job_id": job_id, "user": user, "pool": scope})
        if ticket is not None:
            await self.hand_over(ticket, token, reply[4])
        return job_from_hash(pairs_to_dict(reply[3]), position=int(reply[1]))  # 'queued' went out in Lua

    async def get_for(self, job_id: str, user: str) -> Job:
        """A job as its owner sees it (with queue position); JobNotFound for anyone else's."""
        job = await self.get(job_id)
        if job is None or job.user != user:
            raise JobNotFound(job_id)
        if job.state == JobState.QUEUED:
            job.position = await self.position(job_id)
        return job

    async def list_jobs(self, user: str, limit: int = MAX_KEPT_JOBS) -> list[Job]:
        """A user's jobs, newest first; records past their retention are dropped from the index."""
        key = self.keys.user_jobs(user)
        ids = await self.redis.zrevrange(key, 0, limit - 1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self.keys.job(job_id))
            records = await pipe.execute()
        expired = [job_id for job_id, fields in zip(ids, records, strict=True) if not fields]
        if expired:
            await self.redis.zrem(key, *expired)
        return [job_from_hash(fields) for fields in records if fields]

    async def cancel(self, job_id: str, *, user: str | None = None, statuses: int | None = None) -> str:
        """Cancel a job: a waiting one is removed at once ('cancelled'); a running one's worker is
        told at its next heartbeat ('requested'); 'finished' if it already ended. ``user`` limits
        the call to that owner's jobs (None: admin); ``statuses`` is how many queue ``status``
        messages the owner's workspace sends for a removed waiting job (None: as for one deletion)."""
        args = CancelArgs(self.prefix, job_id, user or "", now_ms(), self.retention_ms)
        reply = await self.scripts.run(args)
        if reply[0] == "closed":
            raise WorkshopClosed()
        if reply[0] == "missing":
            raise JobNotFound(job_id)
        outcome, owner = str(reply[0]), str(reply[1])
        log.info("job cancel", extra={"job_id": job_id, "outcome": outcome})
        if outcome == "cancelled":
            ended = notices.finished(job_id, JobState.CANCELLED, ran=False, statuses=statuses)
            await self.events.publish(owner, ended)
        return outcome
