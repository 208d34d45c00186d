"""Snapshot and restore of the whole queue, for the evening ``pulumi destroy`` and the morning ``up``.

A snapshot is JSON: every job record (waiting, running, finished within retention, dead letters)
as its Redis hash fields (see ``keys.py``), plus the admin's user priorities and the submit
counter. Restoring puts waiting jobs back in line at their old place; jobs that were running when
the snapshot was taken are requeued without counting the interrupted attempt (their workers are
gone); finished records keep what is left of their retention. Restore skips jobs that already
exist, so restoring the same file twice changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from services.queue_manager.keys import ANY_POOL
from services.queue_manager.records import now_ms
from services.queue_manager.store import Store

REQUIRED_FIELDS = ("id", "user", "state", "scope", "score", "queued_at")
RUNNING = ("leased", "running")


class Snapshot(BaseModel):
    version: Literal[1] = 1
    taken_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    jobs: list[dict[str, str]] = Field(description="job hash fields as stored in Redis (keys.py)")
    user_priorities: dict[str, int] = Field(default_factory=dict)
    seq: int = 0


class RestoreResult(BaseModel):
    restored: int
    requeued: int
    skipped: int


async def take_snapshot(store: Store) -> Snapshot:
    keys, redis = store.keys, store.redis
    scopes = await redis.smembers(keys.scopes)
    async with redis.pipeline(transaction=True) as pipe:
        for key in [keys.queue(scope) for scope in scopes] + [
            keys.delayed,
            keys.leases,
            keys.finished,
            keys.dead,
        ]:
            pipe.zrange(key, 0, -1)
        pipe.hgetall(keys.user_priority)
        pipe.get(keys.seq)
        *id_lists, priorities, seq = await pipe.execute()
    ids = list(dict.fromkeys(job_id for ids in id_lists for job_id in ids))
    async with redis.pipeline(transaction=True) as pipe:
        for job_id in ids:
            pipe.hgetall(keys.job(job_id))
        records = await pipe.execute()
    return Snapshot(
        jobs=[fields for fields in records if fields],
        user_priorities={user: int(p) for user, p in priorities.items()},
        seq=int(seq or 0),
    )


async def restore_snapshot(store: Store, snapshot: Snapshot) -> RestoreResult:
    result = RestoreResult(restored=0, requeued=0, skipped=0)
    now = now_ms()
    for fields in snapshot.jobs:
        if not all(fields.get(name) for name in REQUIRED_FIELDS) or await store.redis.exists(
            store.keys.job(fields["id"])
        ):
            result.skipped += 1
            continue
        waiting = await _restore_job(store, dict(fields), now)
        result.restored += 1
        result.requeued += int(waiting)
    await _restore_globals(store, snapshot)
    return result


async def _restore_job(store: Store, fields: dict[str, str], now: int) -> bool:
    """Write one job back; True when it is waiting in a queue again."""
    keys, job_id, user = store.keys, fields["id"], fields["user"]
    waiting = fields["state"] == "queued" or fields["state"] in RUNNING
    if fields["state"] in RUNNING:
        fields.update(
            state="queued",
            attempts=str(max(0, int(fields.get("attempts") or 1) - 1)),
            token="",
            worker_id="",
            lease_expires="",
        )
    async with store.redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.job(job_id), mapping=fields)
        pipe.zadd(keys.user_jobs(user), {job_id: int(fields["queued_at"])})
        pipe.sadd(keys.users, user)
        if waiting:
            scope = fields["scope"] or ANY_POOL
            pipe.zadd(keys.queue(scope), {job_id: float(fields["score"])})
            pipe.sadd(keys.scopes, scope)
            pipe.sadd(keys.user_queued(user), job_id)
        else:
            _restore_finished(pipe, store, fields, now)
        await pipe.execute()
    return waiting


def _restore_finished(pipe: Any, store: Store, fields: dict[str, str], now: int) -> None:
    keys, job_id = store.keys, fields["id"]
    finished_at = int(fields.get("finished_at") or now)
    left_ms = max(1000, finished_at + store.retention_ms - now)
    pipe.pexpire(keys.job(job_id), left_ms)
    pipe.zadd(keys.finished, {job_id: finished_at})
    if fields.get("dead") == "1":
        pipe.zadd(keys.dead, {job_id: finished_at})


async def _restore_globals(store: Store, snapshot: Snapshot) -> None:
    keys = store.keys
    if snapshot.user_priorities:
        await store.redis.hset(keys.user_priority, mapping=snapshot.user_priorities)
    current = int(await store.redis.get(keys.seq) or 0)
    if snapshot.seq > current:
        await store.redis.set(keys.seq, snapshot.seq)
    await store.resume()
