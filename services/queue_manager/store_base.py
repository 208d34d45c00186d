"""What every part of the store shares: the Redis client, the key schema, the scripts, settings."""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis

from services.protocol.jobs import Job
from services.queue_manager.events import EventBus
from services.queue_manager.keys import Keys
from services.queue_manager.records import job_from_hash
from services.queue_manager.redis_api import StrRedis
from services.queue_manager.scripts import PositionsArgs, Scripts
from services.queue_manager.settings import Settings
from services.queue_manager.wakeups import Wakeups


class StoreBase:
    def __init__(self, redis: Redis, settings: Settings, *, wakeups: Wakeups | None = None) -> None:
        self.client = redis  # the client itself: scripts, a bytes-answering twin
        self.redis = cast(StrRedis, redis)  # decode_responses=True: its commands answer str
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.scripts = Scripts(redis)
        self.events = EventBus(self.redis, self.keys.events)
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
        """Places of many jobs in one Redis call; jobs not waiting in a queue are left out.

        A place counts the jobs ahead in the job's own queue, plus unpinned work for a pinned
        job: O(log n) per job inside Redis, never a scan of the queue.
        """
        if not job_ids:
            return {}
        flat = await self.scripts.run(PositionsArgs(self.prefix, tuple(job_ids)))
        return {str(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
