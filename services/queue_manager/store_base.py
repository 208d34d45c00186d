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
        self._seen_written: dict[str, int] = {}  # worker id -> when its last-seen was last stored

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
        scope, score, state = await self.redis.hmget(self.keys.job(job_id), ["scope", "score", "state"])
        if state != "queued" or score is None:
            return None
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zscore(self.keys.queue(scope), job_id)
            pipe.zcount(self.keys.queue(scope), "-inf", f"({score}")
            pipe.zcount(self.keys.queue(ANY_POOL), "-inf", f"({score}")
            in_queue, own, unpinned = await pipe.execute()
        if in_queue is None:
            return None  # waiting out a retry backoff
        return int(own) + (int(unpinned) if scope != ANY_POOL else 0)
