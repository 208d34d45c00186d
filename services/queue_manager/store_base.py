"""What every part of the store shares: the Redis client, the key schema, the scripts, settings."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from services.protocol.jobs import Job
from services.queue_manager.events import EventBus
from services.queue_manager.keys import ANY_POOL, Keys
from services.queue_manager.records import job_from_hash
from services.queue_manager.scripts import Scripts
from services.queue_manager.settings import Settings
from services.queue_manager.wakeups import Wakeups


class StoreBase:
    def __init__(self, redis: Redis, settings: Settings, *, wakeups: Wakeups | None = None) -> None:
        # redis-py's types cannot say that decode_responses=True makes every answer a str.
        self.redis: Any = redis
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.scripts = Scripts.load(redis)
        self.events = EventBus(redis, self.keys.events)
        self.wakeups = wakeups or Wakeups()
        self._known_workers: dict[str, tuple[str, int]] = {}  # worker id -> (pool, when last stored)

    @property
    def prefix(self) -> str:
        return self.keys.prefix

    @property
    def retention_ms(self) -> int:
        return int(self.settings.retention_hours * 3600 * 1000)

    async def get(self, job_id: str) -> Job | None:
        """One job as stored now, or None when unknown or expired."""
        fields = await self.redis.hgetall(self.keys.job(job_id))
        return job_from_hash(fields) if fields else None

    async def position(self, job_id: str) -> int | None:
        """0-based place of a queued job among the work that runs before it; None when not waiting."""
        return (await self.positions([job_id])).get(job_id)

    async def positions(self, job_ids: list[str]) -> dict[str, int]:
        """Places of many jobs in two round trips; jobs not waiting in a queue are left out.

        A place counts the jobs ahead in the job's own queue, plus unpinned work for a pinned
        job: O(log n) per job, never a scan of the queue.
        """
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(self.keys.job(job_id), ["scope", "score", "state"])
            rows = await pipe.execute()
        waiting = [
            (job_id, scope, score)
            for job_id, (scope, score, state) in zip(job_ids, rows, strict=True)
            if state == "queued" and score
        ]
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id, scope, score in waiting:
                pipe.zscore(self.keys.queue(scope), job_id)
                pipe.zcount(self.keys.queue(scope), "-inf", f"({score}")
                pipe.zcount(self.keys.queue(ANY_POOL), "-inf", f"({score}")
            counts = await pipe.execute()
        places = {}
        for n, (job_id, scope, _) in enumerate(waiting):
            in_queue, own, unpinned = counts[3 * n : 3 * n + 3]
            if in_queue is not None:  # else it waits out a retry backoff
                places[job_id] = int(own) + (int(unpinned) if scope != ANY_POOL else 0)
        return places
