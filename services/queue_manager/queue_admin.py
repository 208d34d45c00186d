"""The organizer's levers on the queue: pause, priorities, dead letters, overview, drain."""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel, Field, TypeAdapter

from services.protocol.jobs import Job, JobLine
from services.queue_manager.errors import JobNotFound, NotDeadLettered, NotRestoredYet, WorkshopClosed
from services.queue_manager.keys import ANY_POOL
from services.queue_manager.records import HOLD_FIELDS, LINE_FIELDS, held_for, line_from_hash, now_ms
from services.queue_manager.scripts import AwaitRestoreArgs, PriorityArgs, RequeueDeadArgs
from services.queue_manager.store_base import StoreBase


class CarriedJob(BaseModel):
    """A job the evening's save held as running (``{p}:carried``): it runs again from the start after
    the night, its attempt not counted. ``worker`` is the one it ran on at the save; ``state`` its
    state now (None once the job is gone), for the admin page."""

    id: str
    user: str
    worker: str
    state: str | None = None

    @classmethod
    def of(cls, fields: dict[str, str]) -> CarriedJob:
        return cls(
            id=fields.get("id", "?"), user=fields.get("user", "?"), worker=fields.get("worker_id") or "?"
        )

    def __str__(self) -> str:
        """As the destroy's output names it."""
        return f"{self.id} of {self.user} on worker {self.worker}"


CARRIED: TypeAdapter[list[CarriedJob]] = TypeAdapter(list[CarriedJob])


class QueueOverview(BaseModel):
    """The queue as the admin page polls it: each job's line, never its workflow (one participant's
    queued workflows alone may be tens of MB)."""

    paused: bool
    queued: list[JobLine]
    running: list[JobLine]
    delayed: list[JobLine]
    dead: list[JobLine]
    held: dict[str, str] = Field(
        default_factory=dict,
        description="queued job id -> the busy worker it is held (prepared) for, to run next; the job "
        "still waits in line, and an idle worker's claim takes it",
    )
    closed: bool = Field(
        default=False,
        description="the evening's save ran: participants' changes are refused until the morning",
    )
    restored: bool = Field(
        default=True,
        description="false while the queue manager waits for the morning's restore (QM_RESTORE_FIRST): "
        "last night's queue is not back yet, and no job is leased",
    )
    carried: list[CarriedJob] = Field(
        default_factory=list,
        description="the jobs the last save held as running: closed, they run again tomorrow morning; "
        "open (the morning after), they were carried over and run again today",
    )


class UserSummary(BaseModel):
    user: str
    priority: int
    queued: int
    running: int


class DrainResult(BaseModel):
    drained: bool
    running: int
    queued: int


class AdminOps(StoreBase):
    async def pause(self) -> None:
        """Stop handing out jobs; running jobs carry on."""
        await self.redis.set(self.keys.paused, "1")

    async def resume(self) -> None:
        """Hand out jobs again, and take participants' changes again if the evening's save had
        closed the workshop (the morning's restore, or the organizer who goes on after a destroy)."""
        await self.redis.delete(self.keys.paused, self.keys.closed)
        async with self.redis.pipeline(transaction=False) as pipe:
            for scope in await self.redis.smembers(self.keys.scopes) | {ANY_POOL}:
                pipe.publish(self.keys.wake, scope)
            await pipe.execute()

    async def resume_by_organizer(self) -> None:
        """The admin page's Resume: refused (409) while the morning's restore has not run on a queue
        manager that waits for it (``QM_RESTORE_FIRST``): jobs taken before it would run ahead of
        last night's queue, or twice."""
        if self.settings.restore_first and not await self.redis.exists(self.keys.opened):
            raise NotRestoredYet()
        if await self.redis.exists(self.keys.closed):  # the day goes on: the save's jobs run on tonight
            await self.redis.delete(self.keys.carried)
        await self.resume()

    async def await_restore(self) -> bool:
        """At start with ``QM_RESTORE_FIRST``: pause dispatch until the morning's load opens this
        Redis (``lua/await_restore.lua``). True when it now waits."""
        return bool(await self.scripts.run(AwaitRestoreArgs(self.prefix)))

    async def open_for_the_day(self) -> None:
        """The morning's load is done (last night's queue restored, or a first day's nothing):
        dispatch and participants' changes go on, and a later start no longer waits."""
        await self.redis.set(self.keys.opened, "1")
        await self.resume()

    async def paused(self) -> bool:
        return bool(await self.redis.exists(self.keys.paused))

    async def set_job_priority(self, job_id: str, priority: int) -> Job:
        """Give one job a priority (-100..100; only ``priority`` scheduling orders by it)."""
        await self._prioritize(job_id, "", priority)
        job = await self.get(job_id)
        assert job is not None
        return job

    async def set_user_priority(self, user: str, priority: int) -> int:
        """Give every job of ``user`` (waiting and future) a priority bonus; returns jobs moved. Her
        running jobs take it too, for when one comes back to the queue (given back, retried)."""
        return await self._prioritize("", user, priority)

    async def _prioritize(self, job_id: str, user: str, priority: int) -> int:
        """Set the priority and move the jobs it concerns in one step (``lua/priority.lua``)."""
        args = PriorityArgs(self.prefix, self.settings.scheduling.value, job_id, user, priority)
        reply = await self.scripts.run(args)
        if reply[0] == "closed":
            raise WorkshopClosed()
        if reply[0] == "missing":
            raise JobNotFound(job_id)
        return int(reply[1])

    async def requeue_dead(self, job_id: str) -> Job:
        """Put a dead-lettered job back in line with fresh attempts; 409 for a job that is no dead
        letter (a second click), 404 for none."""
        reply = await self.scripts.run(RequeueDeadArgs(self.prefix, job_id, self.settings.scheduling.value))
        if reply[0] == "closed":
            raise WorkshopClosed()
        if reply[0] != "ok":
            found = await self.get(job_id)
            raise JobNotFound(job_id) if found is None else NotDeadLettered(job_id, found.state)
        job = await self.get(job_id)
        assert job is not None
        return job

    async def _records(self, ids: list[str]) -> list[dict[str, str]]:
        """The ``LINE_FIELDS`` and ``HOLD_FIELDS`` of each job that still exists, in order."""
        names = list(dict.fromkeys((*LINE_FIELDS, *HOLD_FIELDS)))
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(self.keys.job(job_id), names)
            found = await pipe.execute()
        records = [{n: v for n, v in zip(names, values, strict=True) if v is not None} for values in found]
        return [fields for fields in records if fields.get("id")]

    async def _lines(self, ids: list[str]) -> list[JobLine]:
        return [line_from_hash(fields) for fields in await self._records(ids)]

    async def queued_ids(self) -> list[str]:
        """Every waiting job id in dispatch order (across scopes, by schedule score)."""
        scored: list[tuple[float, str]] = []
        for scope in await self.redis.smembers(self.keys.scopes):
            entries = await self.redis.zrange(self.keys.queue(scope), 0, -1, withscores=True)
            scored.extend((score, job_id) for job_id, score in entries)
        return [job_id for _, job_id in sorted(scored)]

    async def overview(self, limit: int = 500) -> QueueOverview:
        """Waiting jobs in dispatch order, each at the place its owner's page shows ("My place in
        line": the jobs ahead of it that can take its GPUs; another pool's jobs do not count)."""
        records = await self._records((await self.queued_ids())[:limit])
        places = await self.positions([fields["id"] for fields in records])
        now = now_ms()
        held = {fields["id"]: holder for fields in records if (holder := held_for(fields, now))}
        return QueueOverview(
            paused=await self.paused(),
            queued=[line_from_hash(fields, position=places.get(fields["id"])) for fields in records],
            running=await self._lines(await self.redis.zrange(self.keys.leases, 0, limit - 1)),
            delayed=await self._lines(await self.redis.zrange(self.keys.delayed, 0, limit - 1)),
            dead=await self._lines(await self.redis.zrevrange(self.keys.dead, 0, limit - 1)),
            held=held,
            closed=bool(await self.redis.exists(self.keys.closed)),
            restored=not self.settings.restore_first or bool(await self.redis.exists(self.keys.opened)),
            carried=await self.carried(),
        )

    async def carried(self) -> list[CarriedJob]:
        """The jobs the last save held as running (``{p}:carried``), each with its state now."""
        raw = await self.redis.get(self.keys.carried)
        jobs = CARRIED.validate_json(raw) if raw else []
        async with self.redis.pipeline(transaction=False) as pipe:
            for job in jobs:
                pipe.hget(self.keys.job(job.id), "state")
            states = await pipe.execute()
        return [job.model_copy(update={"state": state}) for job, state in zip(jobs, states, strict=True)]

    async def carry(self, jobs: list[CarriedJob]) -> None:
        """Note the jobs a save held as running, or a restore queued again as such (``carried``)."""
        await self.redis.set(self.keys.carried, CARRIED.dump_json(jobs))

    async def submitted(self, user: str) -> bool:
        """Whether ``user`` ever submitted a job (``{p}:users``)."""
        return bool(await self.redis.sismember(self.keys.users, user))

    async def users(self) -> list[UserSummary]:
        names = sorted(await self.redis.smembers(self.keys.users))
        priorities = await self.redis.hgetall(self.keys.user_priority)
        async with self.redis.pipeline(transaction=False) as pipe:
            for user in names:
                pipe.scard(self.keys.user_queued(user))
                pipe.scard(self.keys.user_running(user))
            counts = await pipe.execute()
        return [
            UserSummary(
                user=user,
                priority=int(priorities.get(user, 0)),
                queued=counts[2 * i],
                running=counts[2 * i + 1],
            )
            for i, user in enumerate(names)
        ]

    async def drain(self, seconds: float, poll: float = 0.25) -> DrainResult:
        """Pause dispatch and wait up to ``seconds`` for leased jobs to end (queued ones stay)."""
        await self.pause()
        deadline = time.monotonic() + seconds
        while True:
            running = int(await self.redis.zcard(self.keys.leases))
            if running == 0 or time.monotonic() >= deadline:
                break
            await asyncio.sleep(poll)  # polling Redis: the leases may end in another process
        queued = len(await self.queued_ids()) + await self.redis.zcard(self.keys.delayed)
        return DrainResult(drained=running == 0, running=running, queued=queued)
