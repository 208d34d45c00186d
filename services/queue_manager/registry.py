"""The worker registry: who is connected, with what, doing what, last seen when."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from services.protocol.jobs import JobState
from services.protocol.workers import (
    RegisterReply,
    WorkerCapabilities,
    WorkerRegistration,
    WorkerState,
    catalogue_files,
)
from services.queue_manager.catalogues import CatalogueOps
from services.queue_manager.errors import PoolFull, UnknownWorker, WorkerHoldsAJob, WorkerInAnotherPool
from services.queue_manager.keys import WORKER_TTL_SECONDS
from services.queue_manager.records import HOLD_FIELDS, held_for, ms_to_datetime, now_ms
from services.queue_manager.scripts import DeregisterArgs, DrainArgs, RegisterArgs

log = logging.getLogger(__name__)
SEEN_WRITE_MS = 5000


class WorkerInfo(BaseModel):
    worker_id: str
    state: WorkerState
    job_id: str | None
    last_seen: datetime | None
    registered_at: datetime | None
    capabilities: WorkerCapabilities
    holding: str | None = Field(
        default=None,
        description="the queued job held (prepared) for this busy worker to run next; an idle "
        "worker's claim still takes it",
    )


class WorkerOps(CatalogueOps):
    async def register(self, registration: WorkerRegistration) -> RegisterReply:
        """Record a worker (again, after a restart: a job still held for it is given back) and offer
        its node catalogue if it sent one (``catalogues``: it reaches participants only when it adds
        to the approved one or the admin approves it)."""
        caps = registration.capabilities
        await self.check_pool(registration.worker_id, caps.pool)
        self._known_workers.pop(registration.worker_id, None)
        state = WorkerState.STARTING if caps.models_sync else WorkerState.IDLE
        limit, setting = self.settings.worker_limit(caps.pool)
        args = RegisterArgs(
            self.prefix,
            registration.worker_id,
            caps.pool,
            caps.model_dump_json(),
            state.value,
            now_ms(),
            WORKER_TTL_SECONDS,
            self.patience_ms,
            limit,
        )
        outcome, *held = await self.scripts.run(args)
        if outcome == "full":
            raise PoolFull(caps.pool, limit, setting)
        if given_back := "".join(held):  # a restarted worker knows of no hold
            log.info("hold given back", extra={"job_id": given_back, "worker_id": registration.worker_id})
        if registration.catalogue is not None and caps.catalogue_hash:
            await self.offer_catalogue(
                caps.catalogue_hash,
                registration.catalogue,
                catalogue_files(registration),
                registration.worker_id,
                caps.pool,
            )
        known = await self.redis.exists(self.keys.catalogue(caps.catalogue_hash or "-"))
        settings = self.settings
        return RegisterReply(
            worker_id=registration.worker_id,
            lease_seconds=settings.lease_seconds,
            heartbeat_seconds=settings.heartbeat_seconds,
            claim_wait_seconds=settings.claim_wait_max_seconds,
            catalogue_known=bool(known),
        )

    @property
    def patience_ms(self) -> int:
        """How long a worker may be silent before it counts as gone: its longest claim plus a lease."""
        return int((self.settings.claim_wait_max_seconds + self.settings.lease_seconds) * 1000)

    async def pool_of(self, worker_id: str) -> str | None:
        """The pool a worker id is bound to while its registration lives, or None (never registered,
        expired, or a push dispatcher's slot)."""
        pool, checked = self._known_workers.get(worker_id, ("", 0))
        if pool and now_ms() - checked < SEEN_WRITE_MS:
            return pool
        found = await self.redis.hget(self.keys.worker(worker_id), "pool")
        return str(found) if found else None

    async def check_pool(self, worker_id: str, pool: str) -> None:
        """Refuse (403) a pool's token acting as a worker id bound to another pool."""
        bound = await self.pool_of(worker_id)
        if bound is not None and bound != pool:
            raise WorkerInAnotherPool(worker_id, bound, pool)

    async def check_lease_pool(self, job_id: str, pool: str) -> None:
        """Refuse (403) a lease call with a pool's token for a job another pool's worker holds."""
        holder = await self.redis.hget(self.keys.job(job_id), "worker_id")
        if holder:
            await self.check_pool(str(holder), pool)

    async def worker_pool(self, worker_id: str) -> str:
        """The pool a worker registered with; refreshes its last-seen time. Both are cached for
        a few seconds: a long-polling worker claims often, and each Redis write costs an fsync.
        A worker silent for longer than ``patience_ms`` is gone: ``UnknownWorker`` (it registers
        again, within its pool's limit), or a leaked token could keep any number of ids alive."""
        now = now_ms()
        pool, checked = self._known_workers.get(worker_id, ("", 0))
        if now - checked < SEEN_WRITE_MS:
            return pool
        key = self.keys.worker(worker_id)
        stored, last_seen = await self.redis.hmget(key, ["pool", "last_seen"])
        if stored is None or now - int(last_seen or 0) > self.patience_ms:
            raise UnknownWorker(worker_id)  # a gone record comes alive only by registering (its limit)
        pool = stored
        self._known_workers[worker_id] = (pool, now)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, "last_seen", now)
            pipe.expire(key, WORKER_TTL_SECONDS)
            pipe.zadd(self.keys.workers, {worker_id: now})
            await pipe.execute()
        return str(pool)

    async def mark_draining(self, worker_id: str) -> None:
        """The worker is shutting down: it claims no more and finishes or releases its job; it shows
        as draining (also once that job has ended) until it is gone."""
        if not await self.scripts.run(DrainArgs(self.prefix, worker_id, now_ms())):
            raise UnknownWorker(worker_id)

    async def deregister(self, worker_id: str) -> None:
        """A worker that leaves for good (a GPU host's models sync that finished) leaves the admin
        page at once, instead of showing starting until it would show as gone, and a job still held
        for it is given back in the same step. A worker running a job must finish or release it
        first (409)."""
        parked_ms = int(self.settings.claim_wait_max_seconds * 1000)
        outcome, job_id = await self.scripts.run(DeregisterArgs(self.prefix, worker_id, parked_ms, now_ms()))
        if outcome == "busy":
            raise WorkerHoldsAJob(worker_id, str(job_id))
        self._known_workers.pop(worker_id, None)
        if job_id:
            log.info("hold given back", extra={"job_id": job_id, "worker_id": worker_id})

    async def catalogue(self, catalogue_hash: str) -> dict[str, Any] | None:
        """A node catalogue (ComfyUI ``/object_info``) some worker sent, by its hash."""
        text = await self.redis.get(self.keys.catalogue(catalogue_hash))
        return json.loads(text) if text else None

    async def holder_report(self, worker_id: str | None, pool: str, job_id: str, *, busy: bool) -> None:
        """A push container names itself in its lease calls (``LeaseCall.worker_id``): its own record
        shows it busy with the job while it heartbeats, idle once it reported the end. The leases
        themselves belong to the dispatcher's slots; a name that is not a registered worker of the
        caller's pool changes nothing (a pool token speaks only for its own pool's workers)."""
        if not worker_id:
            return
        key = self.keys.worker(worker_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(key, ["pool", "state", "job_id"])
            pipe.hget(self.keys.job(job_id), "state")
            (registered_pool, state, current), job_state = await pipe.execute()
        # A heartbeat held open may return after the job ended: it must not make the worker busy again.
        running = job_state in (JobState.LEASED.value, JobState.RUNNING.value)
        if registered_pool != pool or (busy and not running) or (not busy and current != job_id):
            return
        if state != WorkerState.DRAINING.value:
            state = WorkerState.BUSY.value if busy else WorkerState.IDLE.value
        now = now_ms()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"state": state, "job_id": job_id if busy else "", "last_seen": now})
            pipe.expire(key, WORKER_TTL_SECONDS)
            pipe.zadd(self.keys.workers, {worker_id: now})
            await pipe.execute()

    async def list_workers(self) -> list[WorkerInfo]:
        """Every registered worker, most recently seen first. Records that are not a registration
        (a push dispatcher slot holds leases under its own id but never registers) are left out:
        one odd record never breaks the listing."""
        ids = await self.redis.zrevrange(self.keys.workers, 0, -1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.hgetall(self.keys.worker(worker_id))
            records = await pipe.execute()
        found = [(wid, fields) for wid, fields in zip(ids, records, strict=True) if fields]
        held = await self._holds({wid: fields.get("next_id", "") for wid, fields in found})
        infos = (self._info(wid, fields, held.get(wid)) for wid, fields in found)
        return [info for info in infos if info is not None]

    async def _holds(self, next_ids: dict[str, str]) -> dict[str, str]:
        """Per worker, the job still held for it: the ``next_id`` its record names, while that job
        is queued and held for it and the hold has not lapsed (``holding_of`` in lib.lua)."""
        named = {worker_id: job_id for worker_id, job_id in next_ids.items() if job_id}
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in named.values():
                pipe.hmget(self.keys.job(job_id), list(HOLD_FIELDS))
            found = await pipe.execute() if named else []
        now = now_ms()
        return {
            worker_id: job_id
            for (worker_id, job_id), values in zip(named.items(), found, strict=True)
            if held_for(dict(zip(HOLD_FIELDS, values, strict=True)), now) == worker_id
        }

    def _info(self, worker_id: str, fields: dict[str, str], holding: str | None = None) -> WorkerInfo | None:
        try:
            capabilities = WorkerCapabilities.model_validate_json(fields.get("capabilities") or "")
        except ValidationError:
            if "capabilities" in fields:
                log.warning("worker %s has an unreadable registration; left out of the listing", worker_id)
            return None
        last_seen = ms_to_datetime(fields.get("last_seen"))
        try:
            state = WorkerState(fields.get("state") or WorkerState.IDLE.value)
        except ValueError:
            state = WorkerState.IDLE
        silent_ms = now_ms() - int(fields.get("last_seen") or 0)
        if silent_ms > self.patience_ms:
            state = WorkerState.GONE
        return WorkerInfo(
            worker_id=worker_id,
            state=state,
            job_id=fields.get("job_id") or None,
            last_seen=last_seen,
            registered_at=ms_to_datetime(fields.get("registered_at")),
            capabilities=capabilities,
            holding=holding,
        )
