"""Wake long-polling claims the moment work appears, in this process and in every other one.

Every state change that makes a job claimable publishes its scope (a pool or ``*``) on
``{p}:wake`` (from inside the Lua script that made the change). Each queue manager process listens
there and wakes one waiting claim that can take work of that scope. A claim registers its ticket
*before* it looks at the queue, so a wake that arrives while it looks is never missed; and a
claim that leaves work behind wakes the next waiter, so one lost wake delays nobody for long.

A cancel does the same for a running job: ``cancel.lua`` publishes its id on ``{p}:cancels``, and
the worker's heartbeat waiting on it here (``cancels.watch``) answers at once, so the interrupt
reaches the GPU's ComfyUI without waiting for the next heartbeat. Likewise every end of a lease
publishes the job's id on ``{p}:ended`` (``end_lease`` in lib.lua), and the push dispatcher
carrying that job (``ends.watch``) frees its slot at once: the queue manager's own signal, not
the participant's best-effort notification stream. A worker's heartbeat held open on a job watches
that too: a lease ended under it (the reaper's, at the pool's maximum job time) is refused at once.

A submit in this process does better than a wake: it ``reserve``s a parked claim and leases it the
next job inside the submit's own Lua script (one AOF fsync instead of two in a row), then
``deliver``s that lease; the claim returns it without asking Redis again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator

from services.protocol.workers import Lease
from services.queue_manager.keys import ANY_POOL
from services.queue_manager.redis_api import StrRedis

log = logging.getLogger(__name__)


class Ticket:
    """One claim waiting for work of its pool."""

    def __init__(self, pool: str, worker_id: str = "", prepare: bool = False, claim_id: str = "") -> None:
        self.pool = pool
        self.worker_id = worker_id
        self.prepare = prepare  # a busy worker's claim for its next job: woken after idle ones
        self.claim_id = claim_id  # an idle claim's id, kept with a lease a submit hands it ('' = none)
        self.woken = asyncio.Event()
        self.parked = False  # inside wait(): may be handed a lease
        self.handover: asyncio.Future[Lease | None] | None = None

    async def wait(self, seconds: float) -> Lease | None:
        """Wait for a wake (None: look again) or a lease a submit handed over."""
        self.parked = True
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.woken.wait(), seconds)
        finally:
            self.parked = False
        if self.handover is None:
            return None
        return await self.handover  # reserved: the submit always delivers, lease or None

    def deliver(self, lease: Lease | None) -> bool:
        """Give a reserved claim its outcome; False when the claim is gone (the lease is nobody's)."""
        assert self.handover is not None
        if self.handover.done():
            return False
        self.handover.set_result(lease)
        return True


class JobWatches:
    """Events set when a job's id is published on one channel (a cancel, the end of a lease)."""

    def __init__(self) -> None:
        self._watches: dict[str, set[asyncio.Event]] = {}

    @contextlib.contextmanager
    def watch(self, job_id: str, event: asyncio.Event | None = None) -> Iterator[asyncio.Event]:
        """An event set when the job's id is published (watch before reading the job's state);
        ``event``: set that one (one waiter watching several ids)."""
        event = event or asyncio.Event()
        watches = self._watches.setdefault(job_id, set())
        watches.add(event)
        try:
            yield event
        finally:
            watches.discard(event)
            if not watches:
                del self._watches[job_id]

    def fire(self, job_id: str) -> None:
        for event in self._watches.get(job_id, ()):
            event.set()

    @property
    def watched(self) -> int:
        """How many jobs are watched now."""
        return len(self._watches)


class Wakeups:
    def __init__(self) -> None:
        self._tickets: list[Ticket] = []
        self.cancels = JobWatches()  # {p}:cancels: a running job's owner cancelled it
        self.ends = JobWatches()  # {p}:ended: a job's lease ended

    @contextlib.contextmanager
    def ticket(
        self, pool: str, worker_id: str = "", prepare: bool = False, claim_id: str = ""
    ) -> Iterator[Ticket]:
        ticket = Ticket(pool, worker_id, prepare, claim_id)
        self._tickets.append(ticket)
        try:
            yield ticket
        finally:
            self._tickets.remove(ticket)

    @property
    def waiting(self) -> int:
        return len(self._tickets)

    @property
    def parked(self) -> int:
        """Claims parked in ``wait`` (the ones a submit can hand its job to)."""
        return sum(ticket.parked for ticket in self._tickets)

    def wake(self, scope: str) -> None:
        """Wake the longest-waiting claim that can run work of ``scope``, an idle worker's first."""
        for prepare in (False, True):
            for ticket in self._tickets:
                if ticket.prepare == prepare and not ticket.woken.is_set() and self._fits(ticket, scope):
                    ticket.woken.set()
                    return

    def reserve(self, scope: str) -> Ticket | None:
        """Take the longest-parked claim that can run work of ``scope`` for a submit to lease to."""
        for ticket in self._tickets:
            if (
                ticket.parked
                and ticket.handover is None
                and ticket.worker_id
                and not ticket.prepare
                and (self._fits(ticket, scope))
            ):
                ticket.handover = asyncio.get_running_loop().create_future()
                ticket.woken.set()
                return ticket
        return None

    @staticmethod
    def _fits(ticket: Ticket, scope: str) -> bool:
        return scope == ANY_POOL or ticket.pool == scope

    async def listen(
        self,
        redis: StrRedis,
        channel: str,
        ready: asyncio.Event | None = None,
        cancels: str | None = None,
        ended: str | None = None,
    ) -> None:
        """Forward wakes (and, from ``cancels`` and ``ended``, job ids) published by any process to
        this process's waiting claims, heartbeats and push dispatchers."""
        handlers: dict[str, Callable[[str], None]] = {channel: self.wake}
        handlers |= {
            name: watches.fire for name, watches in ((cancels, self.cancels), (ended, self.ends)) if name
        }
        async with redis.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(*handlers)
            if ready is not None:
                ready.set()
            async for message in pubsub.listen():
                if message["type"] == "message":
                    handlers[message["channel"]](str(message["data"]))
