"""The admin charts' samples are taken in the background, once per interval, however many queue
managers share the Redis, and whether or not the admin page is open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import httpx
from redis.asyncio import Redis

from services.queue_manager.admin.stats import Sample, samples_key, take_sample
from services.queue_manager.background import TASK_PREFIX
from services.queue_manager.main import create_app
from services.queue_manager.settings import Settings
from services.queue_manager.store import Store
from tests.support.qm_api import PROMPT, make_settings, user_auth

INTERVAL = 0.2


async def stored(store: Store) -> list[Sample]:
    return [Sample.model_validate_json(raw) for raw in await store.redis.lrange(samples_key(store), 0, -1)]


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)  # polling Redis for the condition


async def test_one_sample_per_interval_even_when_several_processes_try(
    store: Store, settings: Settings
) -> None:
    clients = [Redis.from_url(settings.redis_url, decode_responses=True) for _ in range(5)]
    stores = [Store(client, settings) for client in clients]
    taken = await asyncio.gather(*(take_sample(each, 10, 100.0) for each in stores))
    assert sorted(taken) == [False, False, False, False, True]
    assert await take_sample(store, 10, 109.9) is False, "same interval, later"
    assert await take_sample(store, 10, 110.0) is True, "the next interval"
    assert [s.t for s in await stored(store)] == [100.0, 110.0]
    for client in clients:
        await client.aclose()


async def test_the_app_samples_while_nobody_watches(store: Store, settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"stats_interval_seconds": INTERVAL}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://qm.test") as client:
            reply = await client.post("/api/jobs", json={"prompt": PROMPT}, headers=user_auth("ada"))
            assert reply.status_code == 201
        assert any(task.get_name() == f"{TASK_PREFIX}stats" for task in asyncio.all_tasks())

        async def a_sample_sees_the_job() -> bool:
            return any(s.queued == 1 for s in await stored(store))

        await wait_for(a_sample_sees_the_job)
    assert not [task for task in asyncio.all_tasks() if task.get_name().startswith(TASK_PREFIX)], (
        "every background task stopped with the app"
    )


async def test_two_queue_managers_on_one_redis_take_each_sample_once(redis_url: str, store: Store) -> None:
    settings = make_settings(redis_url, stats_interval_seconds=INTERVAL)
    async with AsyncExitStack() as apps:
        for app in (create_app(settings), create_app(settings)):
            await apps.enter_async_context(app.router.lifespan_context(app))

        async def five_samples() -> bool:
            return len(await stored(store)) >= 5

        await wait_for(five_samples)
    intervals = [int(s.t // INTERVAL) for s in await stored(store)]
    assert len(intervals) == len(set(intervals)), f"an interval was sampled twice: {intervals}"
