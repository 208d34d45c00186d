"""The admin page's figures: queue depth and GPU use over time, jobs per minute, cost so far, and
per pool the last hour's GPU busy fraction, idle gaps between jobs and upload time per job (from
the timings workers report with each job's outcome, kept in ``{p}:admin:gpu:{pool}``), and the jobs
held (prepared) for its busy workers now (``WorkerInfo.holding``).

Jobs per minute come straight from the store's ``{p}:finished`` index (exact, for the retention
time). Queue depth and GPU busy share are sampled by a background task of every queue manager
(``background.stats_loop``) once per ``QM_STATS_INTERVAL_SECONDS``, whether or not anybody watches,
into a capped Redis list, so every admin tab (and a restart) sees the same history; a ``SET NX``
mark per interval lets only one of several processes sharing the Redis take each sample. A stats
request adds the current figures as a last, unstored point. Cost so far is each worker's up time
(registered to now, or to its last sign of life once gone; for one that left, deregistering, the
time kept in ``{p}:admin:left``) times its pool's hourly price from ``QM_GPU_PRICES``. The busy
fraction's hour counts the same up time: that of workers no longer listed (a GPU host's models sync
that finished, a gone record forgotten) from their spans in ``{p}:admin:left_spans``.

| key | type | holds |
|---|---|---|
| ``{p}:admin:samples`` | list | JSON ``{"t", "queued", "running", "workers", "busy"}``, newest last, capped |
| ``{p}:admin:sampled:<n>`` | string | set (NX) by the process that takes interval ``n``'s sample; expires |
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from pydantic import BaseModel, Field

from services.protocol.workers import WorkerState
from services.queue_manager.registry import WorkerInfo
from services.queue_manager.store import Store

MAX_SAMPLES = 2880  # a day at the default 30 s interval
MINUTES = 60


class Sample(BaseModel):
    t: float
    queued: int
    running: int
    workers: int
    busy: int


class PoolGpu(BaseModel):
    """How a pool used its GPUs over the last hour, from its workers' timings of each job."""

    busy_fraction: float = Field(description="GPU time running jobs / time its workers were up")
    gap_ms_p50: float | None = Field(description="GPU idle between two jobs while the next one waited")
    gap_ms_p99: float | None
    upload_s_p50: float | None = Field(description="a job's outputs into storage")
    upload_s_max: float | None
    jobs: int


class Stats(BaseModel):
    samples: list[Sample] = Field(description="stored samples, oldest first, then the figures right now")
    jobs_per_minute: list[int] = Field(
        description="finished jobs in each of the last 60 minutes, oldest first"
    )
    busy_share: float = Field(description="busy workers / live workers now (0 when none is up)")
    cost_so_far: float
    cost_by_pool: dict[str, float]
    gpu_by_pool: dict[str, PoolGpu] = Field(description="per pool, the last hour's GPU use")
    held_by_pool: dict[str, int] = Field(
        description="per pool, queued jobs held (prepared) for its busy workers now: each runs next on "
        "its worker, unless an idle worker of the pool claims it first"
    )
    participants: list[dict[str, Any]]


def samples_key(store: Store) -> str:
    return store.keys.admin_samples


def live(workers: list[WorkerInfo]) -> list[WorkerInfo]:
    return [w for w in workers if w.state is not WorkerState.GONE]


def sampled_key(store: Store, interval: int) -> str:
    return store.keys.admin_sampled(interval)


async def current_sample(store: Store, workers: list[WorkerInfo], now: float) -> Sample:
    up = live(workers)
    return Sample(
        t=now,
        queued=len(await store.queued_ids()),
        running=int(await store.redis.zcard(store.keys.leases)),
        workers=len(up),
        busy=sum(1 for w in up if w.state is WorkerState.BUSY),
    )


async def take_sample(store: Store, interval: float, now: float) -> bool:
    """Record the sample of the interval ``now`` falls in, unless this or another process sharing
    the Redis already did; True when this call took it."""
    number = int(now // interval)
    mark_ms = int(interval * 2000) + 1000  # outlives the interval, so a late process finds the mark
    if not await store.redis.set(sampled_key(store, number), "1", nx=True, px=mark_ms):
        return False
    sample = await current_sample(store, await store.list_workers(), now)
    async with store.redis.pipeline(transaction=False) as pipe:
        pipe.rpush(samples_key(store), sample.model_dump_json())
        pipe.ltrim(samples_key(store), -MAX_SAMPLES, -1)
        await pipe.execute()
    return True


async def jobs_per_minute(store: Store, now: float) -> list[int]:
    start_ms = int((now - MINUTES * 60) * 1000)
    stamps = await store.redis.zrangebyscore(store.keys.finished, start_ms, "+inf", withscores=True)
    counts = [0] * MINUTES
    for _, finished_ms in stamps:
        counts[min(int((finished_ms - start_ms) // 60_000), MINUTES - 1)] += 1
    return counts


def up_span(worker: WorkerInfo, now: float) -> tuple[float, float] | None:
    """When a known worker was up (epoch seconds): from its registration to now while it lives, to
    its last sign of life once it is gone (crashed, stopped); None without a registration time."""
    if worker.registered_at is None:
        return None
    start = worker.registered_at.timestamp()
    gone = worker.state is WorkerState.GONE
    end = worker.last_seen.timestamp() if gone and worker.last_seen else now
    return start, max(start, end)


def costs(
    workers: list[WorkerInfo], prices: dict[str, float], left_ms: dict[str, str] | None = None
) -> dict[str, float]:
    """Money spent per pool: the hours each known worker was up (``up_span``), and those its
    workers that left were up (``left_ms``, from ``{p}:admin:left``), times its price."""
    now = time.time()
    spent = {pool: int(ms) / 3_600_000 * prices.get(pool, 0.0) for pool, ms in (left_ms or {}).items()}
    for worker in workers:
        if (span := up_span(worker, now)) is None:
            continue
        pool = worker.capabilities.pool
        spent[pool] = spent.get(pool, 0.0) + (span[1] - span[0]) / 3600 * prices.get(pool, 0.0)
    return {pool: round(amount, 2) for pool, amount in spent.items()}


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


Span = tuple[float, float]


def up_seconds(workers: list[WorkerInfo], now: float, window: float, left: list[Span] | None = None) -> float:
    """Seconds the known workers were up (``up_span``), and those no longer listed (``left``: a GPU
    host's models sync that finished, a gone record forgotten), within the last ``window``: a worker
    that crashed meanwhile ran some of the window's jobs, and a host syncing its models was paid for,
    so their hours count as well as the live ones'."""
    spans = [span for w in workers if (span := up_span(w, now)) is not None] + (left or [])
    return sum(max(0.0, end - max(start, now - window)) for start, end in spans)


def pool_gpu(
    records: list[dict[str, float]],
    workers: list[WorkerInfo],
    now: float,
    window: float,
    left: list[Span] | None = None,
) -> PoolGpu:
    """One pool's ``PoolGpu`` from its jobs' timings within the window, its workers and the spans of
    those that left (``left``)."""
    recent = [r for r in records if r.get("t", 0.0) >= now - window]
    gpu = sum(r.get("gpu_seconds") or 0.0 for r in recent)
    gaps = [r["idle_gap_seconds"] * 1000 for r in recent if r.get("idle_gap_seconds") is not None]
    uploads = [r["upload_seconds"] for r in recent if r.get("upload_seconds") is not None]
    up = up_seconds(workers, now, window, left)
    return PoolGpu(
        busy_fraction=round(min(1.0, gpu / up), 4) if up else 0.0,
        gap_ms_p50=quantile(gaps, 0.5),
        gap_ms_p99=quantile(gaps, 0.99),
        upload_s_p50=quantile(uploads, 0.5),
        upload_s_max=max(uploads, default=None),
        jobs=len(recent),
    )


async def gpu_by_pool(
    store: Store, workers: list[WorkerInfo], now: float, window: float = 3600
) -> dict[str, PoolGpu]:
    """Every known pool's GPU use over the last ``window`` seconds (the admin page, Prometheus)."""
    left: dict[str, list[Span]] = {}
    for text in await store.redis.zrangebyscore(store.keys.admin_left_spans, (now - window) * 1000, "+inf"):
        span = json.loads(text)
        left.setdefault(span["pool"], []).append((span["from_ms"] / 1000, span["to_ms"] / 1000))
    pools = sorted({w.capabilities.pool for w in workers} | set(left))
    async with store.redis.pipeline(transaction=False) as pipe:
        for pool in pools:
            pipe.lrange(store.keys.admin_gpu(pool), 0, -1)
        found = await pipe.execute()
    return {
        pool: pool_gpu(
            [json.loads(item) for item in items],
            [w for w in workers if w.capabilities.pool == pool],
            now,
            window,
            left.get(pool),
        )
        for pool, items in zip(pools, found, strict=True)
    }


def held_by_pool(workers: list[WorkerInfo]) -> dict[str, int]:
    """Per known pool, the jobs held (prepared) for its busy workers now (the admin page, Prometheus)."""
    held = Counter(w.capabilities.pool for w in workers if w.holding)
    return {pool: held[pool] for pool in sorted({w.capabilities.pool for w in workers})}


async def participants(store: Store, configured: list[str]) -> list[dict[str, Any]]:
    summaries = {s.user: s for s in await store.users()}
    online = set(store.events.local_users())
    return [
        {
            "user": user,
            "online": user in online,
            "queued": summaries[user].queued if user in summaries else 0,
            "running": summaries[user].running if user in summaries else 0,
            "priority": summaries[user].priority if user in summaries else 0,
        }
        for user in sorted(set(configured) | set(summaries))
    ]


async def collect(store: Store, configured: list[str], prices: dict[str, float]) -> Stats:
    now = time.time()
    workers = await store.list_workers()
    raw = await store.redis.lrange(samples_key(store), 0, -1)
    up = live(workers)
    by_pool = costs(workers, prices, await store.redis.hgetall(store.keys.admin_left))
    return Stats(
        samples=[
            *(Sample.model_validate_json(item) for item in raw),
            await current_sample(store, workers, now),
        ],
        jobs_per_minute=await jobs_per_minute(store, now),
        busy_share=(sum(1 for w in up if w.state is WorkerState.BUSY) / len(up)) if up else 0.0,
        cost_so_far=round(sum(by_pool.values()), 2),
        cost_by_pool=by_pool,
        gpu_by_pool=await gpu_by_pool(store, workers, now),
        held_by_pool=held_by_pool(workers),
        participants=await participants(store, configured),
    )
