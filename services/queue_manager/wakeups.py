"""Wake long-polling claims the moment work appears, in this process and in every other one.

Every state change that makes a job claimable publishes its scope (a pool or ``*``) on
``{p}:wake`` (from inside the Lua script that made the change). Each queue manager process listens
there and wakes one waiting claim that can take work of that scope. A claim registers its ticket
*before* it looks at the queue, so a wake that arrives while it looks is never missed; and a
claim that leaves work behind wakes the next waiter, so one lost wake delays nobody for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from redis.asyncio import Redis

from services.queue_manager.keys import ANY_POOL

log = logging.getLogger(__name__)


class Ticket:
    """One claim waiting for work of its pool."""

    def __init__(self, pool: str) -> None:
        self.pool = pool
        self.woken = asyncio.Event()

    async def wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.woken.wait(), seconds)


class Wakeups:
    def __init__(self) -> None:
        self._tickets: list[Ticket] = []

    @contextlib.contextmanager
    def ticket(self, pool: str) -> Iterator[Ticket]:
        ticket = Ticket(pool)
        self._tickets.append(ticket)
        try:
            yield ticket
        finally:
            self._tickets.remove(ticket)

    @property
    def waiting(self) -> int:
        return len(self._tickets)

    def wake(self, scope: str) -> None:
        """Wake the longest-waiting claim that can run work of ``scope``."""
        for ticket in self._tickets:
            if not ticket.woken.is_set() and (scope == ANY_POOL or ticket.pool == scope):
                ticket.woken.set()
                return

    def wake_all(self) -> None:
        for ticket in self._tickets:
            ticket.woken.set()

    async def listen(self, redis: Redis, channel: str, ready: asyncio.Event | None = None) -> None:
        """Forward wakes published by any process to this process's waiting claims."""
        async with redis.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(channel)
            if ready is not None:
                ready.set()
            async for message in pubsub.listen():
                if message["type"] == "message":
                    self.wake(str(message["data"]))
