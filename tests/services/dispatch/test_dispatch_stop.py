"""Stopping push dispatch never hangs the queue manager's shutdown."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from services.queue_manager.dispatch import PoolDispatcher, PushPool
from services.queue_manager.keys import Keys


class NoChains:
    """Redis with no push request left open by an earlier dispatcher."""

    async def scan_iter(self, **_: Any) -> Any:
        for key in ():
            yield key


class SwallowingStore:
    """A claim that swallows its cancellation and returns nothing, as redis-py's asyncio client can
    while it waits for a connection."""

    settings = SimpleNamespace(heartbeat_seconds=1.0)
    keys, redis = Keys("qm"), NoChains()

    def __init__(self) -> None:
        self.waiting = asyncio.Event()

    async def claim(self, worker_id: str, pool: str, wait: float, behind: bool = False) -> Any:
        self.waiting.set()
        try:
            await asyncio.sleep(wait)
        except asyncio.CancelledError:
            return None
        return None


async def test_a_dispatcher_stops_even_when_its_claim_swallows_the_cancel() -> None:
    store = SwallowingStore()
    pool = PushPool(name="gpu", style="runpod", url="http://127.0.0.1:9", api_key="k", capacity=1)
    dispatcher = PoolDispatcher(store, pool, None, "http://127.0.0.1:9")  # type: ignore[arg-type]
    task = asyncio.create_task(dispatcher.run([]))
    await asyncio.wait_for(store.waiting.wait(), 5)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
