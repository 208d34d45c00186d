"""The queue manager's background tasks: wake and event listeners, the lease reaper, position
updates for this process's connected participants, and the admin charts' samples."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

from redis.exceptions import RedisError

from services.queue_manager import notices
from services.queue_manager.admin.stats import take_sample
from services.queue_manager.durability import REDIS_DURABILITY, shortfalls
from services.queue_manager.store import Store

log = logging.getLogger(__name__)
POSITION_INTERVAL = 1.0
RETRY_SECONDS = 1.0
TASK_PREFIX = "qm-background-"


def stopping() -> bool:
    """True once this task was cancelled, even if a client library swallowed the CancelledError
    (redis-py's asyncio client can, while it waits for a connection)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _forever(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run ``run`` again whenever it stops (Redis restarts, connection drops), until cancelled."""
    while not stopping():
        try:
            await run()
        except (RedisError, OSError) as exc:
            log.warning("background task lost Redis, retrying", extra={"task": name, "error": str(exc)})
        except Exception:
            log.exception("background task failed, restarting", extra={"task": name})
        if not stopping():
            await asyncio.sleep(RETRY_SECONDS)


async def reap_loop(store: Store) -> None:
    while not stopping():
        await store.reap()
        await asyncio.sleep(store.settings.reap_interval_seconds)


async def position_loop(store: Store) -> None:
    """Tell this process's connected participants when their next waiting job moves up.

    One event per user (for the job that runs next) keeps this O(users) per second even when
    hundreds of jobs wait; ``data.waiting`` says how many of theirs wait in all.
    """
    sent: dict[str, tuple[str, int]] = {}
    while not stopping():
        users = store.events.local_users()
        async with store.redis.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.smembers(store.keys.user_queued(user))
            queued = await pipe.execute()
        owners = {job_id: user for user, ids in zip(users, queued, strict=True) for job_id in ids}
        places = await store.positions(list(owners))
        waiting = Counter(owners.values())
        current: dict[str, tuple[str, int]] = {}
        for job_id, place in places.items():
            user = owners[job_id]
            if user not in current or place < current[user][1]:
                current[user] = (job_id, place)
        for user, (job_id, place) in current.items():
            if sent.get(user) != (job_id, place):
                store.events.deliver_local(user, notices.position(job_id, place, waiting[user]))
        sent = current
        await asyncio.sleep(POSITION_INTERVAL)


async def stats_loop(store: Store) -> None:
    """One admin-chart sample per ``QM_STATS_INTERVAL_SECONDS``, whether or not anybody watches.

    Every process wakes at the start of each interval; the first one there takes its sample
    (``take_sample``'s ``SET NX`` mark), so several processes on one Redis record it once.
    """
    interval = store.settings.stats_interval_seconds
    while not stopping():
        await take_sample(store, interval, time.time())
        await asyncio.sleep(interval - time.time() % interval)


async def check_durability(store: Store) -> None:
    """Warn when Redis would not keep an acknowledged job across a crash (the policy: durability.py)."""
    try:
        config = await store.redis.config_get("append*")
    except RedisError as exc:
        log.info("Redis refused CONFIG GET, durability not checked: %s", exc)
        return  # CONFIG may be restricted or disabled on a managed Redis, or Redis is not up yet
    wrong = shortfalls(config)
    if wrong:
        wanted = " and ".join(f"'{name} {value}'" for name, value in REDIS_DURABILITY.items())
        log.warning(f"Redis runs without {wanted}: a crash can lose accepted jobs", extra=wrong)


@contextlib.asynccontextmanager
async def running(store: Store) -> AsyncIterator[None]:
    """Start every background task, wait until the listeners are subscribed, stop them on exit."""
    await check_durability(store)
    if store.settings.restore_first and await store.await_restore():
        log.warning("dispatch waits for the morning's restore (QM_RESTORE_FIRST): no job is leased before it")
    wake_ready, events_ready = asyncio.Event(), asyncio.Event()
    loops: dict[str, Callable[[], Awaitable[None]]] = {
        "wake": lambda: store.wakeups.listen(
            store.redis, store.keys.wake, wake_ready, cancels=store.keys.cancels, ended=store.keys.ended
        ),
        "events": lambda: store.events.listen(events_ready),
        "reaper": lambda: reap_loop(store),
        "positions": lambda: position_loop(store),
        "stats": lambda: stats_loop(store),
    }
    tasks = [
        asyncio.create_task(_forever(name, run), name=f"{TASK_PREFIX}{name}") for name, run in loops.items()
    ]
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(wake_ready.wait(), events_ready.wait()), 10)
        # Everything built so far (app, routes, models, clients) lives as long as the process: keep
        # it out of the cyclic GC, whose full passes over it (~50 ms) were the requests' slowest 1%.
        gc.collect()
        gc.freeze()
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=5)
