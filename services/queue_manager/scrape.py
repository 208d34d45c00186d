"""Gauges read from Redis when Prometheus scrapes, so every process reports the same truth."""

from __future__ import annotations

import time
from collections import Counter

from services.protocol.workers import WorkerState
from services.queue_manager.admin.stats import gpu_by_pool, held_by_pool
from services.queue_manager.metrics import Metrics
from services.queue_manager.store import Store


async def refresh_gauges(store: Store, metrics: Metrics) -> None:
    keys = store.keys
    metrics.queue_depth.clear()
    for scope in await store.redis.smembers(keys.scopes):
        ids = await store.redis.zrange(keys.queue(scope), 0, -1)
        users = await _owners(store, ids)
        for user, count in Counter(users).items():
            metrics.queue_depth.labels(pool=scope, user=user).set(count)
    metrics.leases.set(await store.redis.zcard(keys.leases))
    metrics.delayed.set(await store.redis.zcard(keys.delayed))
    metrics.dead.set(await store.redis.zcard(keys.dead))
    metrics.paused.set(1 if await store.paused() else 0)
    metrics.claims_waiting.set(store.wakeups.waiting)
    workers = await store.list_workers()
    states = Counter(worker.state for worker in workers)
    for state in WorkerState:
        metrics.workers.labels(state=state.value).set(states.get(state, 0))
    for pool, use in (await gpu_by_pool(store, workers, time.time())).items():
        metrics.gpu_busy_fraction.labels(pool=pool).set(use.busy_fraction)
    metrics.jobs_held.clear()
    for pool, held in held_by_pool(workers).items():
        metrics.jobs_held.labels(pool=pool).set(held)


async def _owners(store: Store, ids: list[str]) -> list[str]:
    async with store.redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(store.keys.job(job_id), "user")
        return [user for user in await pipe.execute() if user]
