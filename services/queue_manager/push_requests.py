"""A push request's chain: the jobs one serverless request runs, one after another.

A serverless container answers a request by running a job. So that its GPU does not wait for the
dispatcher's next request (and that request's trip through the provider's queue) between two
jobs, the dispatcher opens a chain for each request it sends and puts the chain's id in the
lease. After each job the container asks ``POST /api/push/{chain}/next`` for more: the answer is
the job the queue would give an idle worker of its pool now (``claim.lua``: fairness, priority,
per-user limits and pause hold), leased under the dispatcher's slot, or 204 and the chain is
over. A chain takes a job only while it is open, younger than the pool's ``chain_seconds`` and
under its ``max_jobs_per_request``; when the queue has nothing within ``linger_seconds`` the
chain closes and the container ends its request. The dispatcher counts the request's slot busy
until then, so the pool's capacity is never exceeded.

The record is ``{p}:push:{chain}``: pool, worker (the claimant id its jobs are leased under), the
provider's id of the request, the current job with its lease token and attempt, how many jobs it
took, its limits, whether it is open, and whether a repeat of the take under way came
(``asked_again``). Each change is one step (``chain.lua``, ``take.lua``, ``leave.lua``: an expired
record stays gone); a change of its job or its end publishes the chain id on ``{p}:ended``, where
the dispatcher carrying the request (and a repeat waiting for a take) hears it. A dispatcher
that starts (after a crash or a restart) adopts its pool's open chains
(``open_in``), so their requests keep their slots.

Only the chain's own pool's credentials may take from it (403 for another pool's); the id is a
random secret sent only in the request.

The request carries its own reply token, not the pool's worker token: ``{p}:push_token:{sha256}``
names its pool and its chain for as long as the chain's record lives. It acts as a worker of that
pool on the lease routes of its own request's jobs (the lease token of each job is still needed)
and on its own chain's routes, and on nothing else: it cannot register a worker, claim from the
queue, act for another pool, on another request's chain, or on another request's job
(``check_lease``: a lease token the request was never given gets 409).

A request payload the provider keeps (its console, its logs) holds that token, the chain id and
the first job's lease token. What a copy of it cannot do:

* Name another container. Calls with a reply token name the container that makes them
  (``worker_id``, its registered id, which the admin page shows busy with the job). The first name
  a request's calls send binds the request to it (``bind.lua``, one step on the token's record);
  a call naming anyone else is refused (403, ``RunElsewhere``) before it changes anything, so
  nobody marks another container busy or idle, or reports, ends or takes for the request.
* Take jobs beside the container. ``next`` names the job it follows (``NextCall.after``: that
  job's lease token, which only the one it was given to knows, the first job's aside). The chain
  takes once from each job (``take.lua``: the check, the count and the mark of the take are one
  step): a second ``next`` after the same job gets the same job again (the repeat of a call whose
  reply was lost, as the container's retries send it; one sent while that take is under way waits
  for it), one after an older job 409, never a second job.
* Report on another request's jobs (whose first lease tokens the provider's console shows too),
  or lock the container out without the request's leases: a lease call's token and ``next``'s
  ``after`` must be leases the request was given (``{p}:push_leases:{chain}``, the first job's at
  open and each one it takes, by ``chain.lua``), checked before the call's name binds the request.

What it still can: used before the container's first call (while the request waits at the
provider, or the container starts), it binds the request to its own name. The container's calls
are then refused, so its request ends; until the dispatcher sees it over, the copy reports the
request's jobs as it likes (the first job's lease token is in the payload) and takes the chain's
next ones, then the dispatcher ends the chain and requeues the job still open.

A ``next`` that repeats one whose connection broke while the take was still under way (its
linger) waits for that take (``take.lua`` marks the repeat) and gets its outcome, as any repeat
gets the first call's answer: the take, finding its caller gone, keeps the job it found for the
repeat (``leave.lua``). With no repeat (the container is gone) it gives the job back, no attempt
counted, and ends the request; a repeat after that gets 204 (``api/routes/push.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from services.protocol.workers import Lease
from services.queue_manager.errors import QueueError
from services.queue_manager.leases import RECHECK_SECONDS
from services.queue_manager.records import now_ms, pairs_to_dict
from services.queue_manager.scripts import BindArgs, ChainArgs, LeaveArgs, TakeArgs
from services.queue_manager.settings import PushPool, push_request_limit
from services.queue_manager.store import Store

log = logging.getLogger(__name__)
EXTRA_LIFE_SECONDS = 60  # a record outlives its request's longest life by this much, then expires
TAKE_SETTLES_SECONDS = 5.0  # past its linger, a take under way has set its job or ended the chain


def digest(reply_token: str) -> str:
    """What the queue manager keeps of a reply token: its SHA-256 (a copy of Redis gives no token)."""
    return hashlib.sha256(reply_token.encode()).hexdigest()


class ChainNotFound(QueueError):
    status = 404

    def __init__(self) -> None:
        super().__init__(
            "this push request's chain does not exist or has expired: end the request (the dispatcher "
            "sends the next job in a new one)"
        )


class ChainInAnotherPool(QueueError):
    status = 403

    def __init__(self, pool: str) -> None:
        super().__init__(
            f"this push request belongs to another pool than {pool!r}, whose token this is: a pool's token "
            "takes only its own pool's jobs. Set WORKER_TOKEN to the token of the pool the container serves"
        )


class OtherRequest(QueueError):
    status = 403

    def __init__(self) -> None:
        super().__init__(
            "this reply token belongs to another push request than this chain's: a request's reply "
            "token acts on its own chain only. Use the chain and reply_token of the same lease"
        )


class HolderNotNamed(QueueError):
    status = 422

    def __init__(self) -> None:
        super().__init__(
            "calls with a push request's reply token name the container making them: send worker_id "
            "(the container's WORKER_ID), as the worker agent does"
        )


class RunElsewhere(QueueError):
    status = 403

    def __init__(self, worker_id: str) -> None:
        super().__init__(
            f"this push request is run by another container than {worker_id!r}: its reply token speaks "
            "only for the container that first used it. End the request; if the provider sent it to "
            f"{worker_id!r}, someone else used a copy of its payload first"
        )


class NotAfterCurrent(QueueError):
    status = 409
    REASONS = {
        "taking": "its next job is being taken after that one already (by another call with its reply "
        "token): one request runs one job at a time",
        "moved": "it is past that job: ask with the lease token of the last job this request gave you",
    }

    def __init__(self, step: str) -> None:
        super().__init__(f"this push request takes no job after that one now: {self.REASONS[step]}")


class NotThisRequestsLease(QueueError):
    status = 409

    def __init__(self) -> None:
        super().__init__(
            "this lease token is not one this push request was given: a request's reply token acts only "
            "on its own leases. Send the one of the job it is about (for next: of the last job this "
            "request gave you)"
        )


@dataclass(frozen=True)
class PushReply:
    """Whom a push request's reply token acts for: its pool, its chain, and the container its calls
    named first ('' until one did)."""

    digest: str
    pool: str
    chain: str
    holder: str


@dataclass(frozen=True)
class Chain:
    id: str
    pool: str
    worker: str
    job: str
    token: str
    attempts: int
    jobs: int
    max_jobs: int
    until_ms: int
    linger_ms: int
    open: bool
    remote: str  # the provider's id of the request, once it took it ('' before)

    @classmethod
    def of(cls, chain_id: str, fields: dict[str, str]) -> Chain:
        return cls(
            id=chain_id,
            pool=fields["pool"],
            worker=fields["worker"],
            job=fields["job"],
            token=fields["token"],
            attempts=int(fields["attempts"]),
            jobs=int(fields["jobs"]),
            max_jobs=int(fields["max_jobs"]),
            until_ms=int(fields["until_ms"]),
            linger_ms=int(fields["linger_ms"]),
            open=fields["open"] == "1",
            remote=fields.get("remote", ""),
        )

    def linger(self, now: int) -> float:
        """Seconds a take may wait for work: the linger, never past the chain's window."""
        return max(0.0, min(self.linger_ms, self.until_ms - now) / 1000)


class Chains:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _key(self, chain_id: str) -> str:
        return self.store.keys.push_request(chain_id)

    async def open(self, pool: PushPool, worker: str, lease: Lease) -> tuple[str, str]:
        """A new chain whose first job is ``lease`` (claimed by the dispatcher's slot ``worker``):
        its id, and the request's reply token (``lease_holder``), valid as long as the record."""
        chain_id, reply_token, now = secrets.token_urlsafe(24), secrets.token_urlsafe(32), now_ms()
        limit = push_request_limit(pool.chain_seconds, self.store.settings.job_limit(pool.name))
        life_ms = int((limit + EXTRA_LIFE_SECONDS) * 1000)
        fields = {
            "pool": pool.name, "worker": worker, "jobs": 1, "max_jobs": pool.max_jobs_per_request,
            "until_ms": now + int(pool.chain_seconds * 1000), "linger_ms": int(pool.linger_seconds * 1000),
            "open": 1, **self._current(lease),
        }  # fmt: skip
        async with self.store.redis.pipeline() as pipe:
            pipe.hset(self._key(chain_id), mapping=fields)
            pipe.pexpire(self._key(chain_id), life_ms)
            pipe.hset(self._token_key(reply_token), mapping={"pool": pool.name, "chain": chain_id})
            pipe.pexpire(self._token_key(reply_token), life_ms)
            pipe.sadd(self.store.keys.push_leases(chain_id), lease.token)  # then each it takes (chain.lua)
            pipe.pexpire(self.store.keys.push_leases(chain_id), life_ms)
            await pipe.execute()
        return chain_id, reply_token

    def _token_key(self, reply_token: str) -> str:
        return self.store.keys.push_token(digest(reply_token))

    async def reply_of(self, reply_token: str) -> PushReply | None:
        """The push request this reply token was made for, while it may report."""
        if not reply_token:
            return None
        try:
            found = await self.store.redis.hgetall(self._token_key(reply_token))
        except ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            # Made by a queue manager from before requests were bound to their container (the pool's
            # name alone): such a request can no longer be told apart from a copy of its payload, so it
            # reports no more; its job is requeued when its lease runs out, as for any lost container.
            log.warning("a push request from before the last upgrade called: its reply token is refused")
            return None
        if "pool" not in found or "chain" not in found:
            return None
        return PushReply(digest(reply_token), found["pool"], found["chain"], found.get("holder", ""))

    async def check_named(self, reply: PushReply, worker_id: str | None) -> None:
        """Refuse a call with the request's reply token that names no container, or another one
        than its calls named first (the first name binds the request: ``bind.lua``)."""
        if not worker_id:
            raise HolderNotNamed()
        bind = BindArgs(self.store.prefix, reply.digest, worker_id)
        holder = reply.holder or await self.store.scripts.run(bind)
        if holder != worker_id:
            raise RunElsewhere(worker_id)

    async def check_lease(self, reply: PushReply, lease_token: str) -> None:
        """Refuse a lease call with the request's reply token and a lease token the request was
        never given (``{p}:push_leases:{chain}``): another request's, whose first lease token its
        payload shows (in another slot, in the same slot after it, or on a job this one gave back,
        leased anew), or a made-up one. Before the call's name binds the request, so such a call
        binds nobody. The request's own repeats after a job moved on are left to the lease rules."""
        if not await self.store.redis.sismember(self.store.keys.push_leases(reply.chain), lease_token):
            raise NotThisRequestsLease()

    @staticmethod
    def _current(lease: Lease) -> dict[str, str | int]:
        return {"job": lease.job.id, "token": lease.token, "attempts": lease.job.attempts}

    async def get(self, chain_id: str) -> Chain | None:
        fields = await self.store.redis.hgetall(self._key(chain_id))
        return Chain.of(chain_id, fields) if "pool" in fields else None

    async def next(self, chain_id: str, pool: str, after: str, worker_id: str | None = None) -> Lease | None:
        """The chain's next job after the one whose lease token is ``after``, or None: the chain is
        over (closed here). Once per job (``take.lua``): a repeat gets the same job again, also one
        sent while the take is still under way (it waits for what the take finds)."""
        chain = await self._own(chain_id, pool)
        now = now_ms()
        step, *job = await self._take(chain, after, now)
        if step in NotAfterCurrent.REASONS:
            raise NotAfterCurrent(step)
        if step == "again":
            return self.store.lease_from(pairs_to_dict(job[0])).model_copy(update={"chain": chain_id})
        if step != "take":
            await self.end(chain_id)
            return None
        lease = await self._claim(chain, chain.linger(now))
        if lease is not None:
            log.info("job chained", extra={"job_id": lease.job.id, "pool": pool, "worker_id": worker_id})
        return lease

    async def _take(self, chain: Chain, after: str, now: int) -> list[Any]:
        """take.lua's answer. A repeat of a ``next`` whose take is under way (its connection broke
        while the take lingered) waits for that take's outcome, its linger and ``TAKE_SETTLES_SECONDS``
        at most, and gets it: the job it found ('again'), or the end ('over')."""
        deadline = time.monotonic() + chain.linger(now) + TAKE_SETTLES_SECONDS
        with self.store.wakeups.ends.watch(chain.id) as changed:  # chain.lua and leave.lua publish
            while True:
                reply: list[Any] = await self.store.scripts.run(
                    TakeArgs(self.store.prefix, chain.id, after, now_ms())
                )
                remaining = deadline - time.monotonic()
                if reply[0] != "taking" or remaining <= 0:
                    return reply
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(remaining, RECHECK_SECONDS))
                changed.clear()

    async def leave(self, chain_id: str, after: str, lease: Lease) -> None:
        """The take from ``after`` leased ``lease``, and its caller is gone: the job goes back and
        the request ends, unless a repeat of the call came meanwhile (``leave.lua``), which gets it."""
        if await self.store.scripts.run(LeaveArgs(self.store.prefix, chain_id, after)) != "kept":
            await self.store.release(lease.job.id, lease.token)

    async def _claim(self, chain: Chain, linger: float) -> Lease | None:
        """The job the take counted, set as the chain's current one; None (the chain ended) when
        the queue had none within ``linger`` or the request ended meanwhile."""
        lease = await self.store.claim(chain.worker, chain.pool, linger)
        if lease is None or not await self._still_open(chain.id):
            if lease is not None:  # the dispatcher ended the request meanwhile: nobody will run it
                await self.store.release(lease.job.id, lease.token)
            await self.end(chain.id)
            return None
        if not await self._set(chain.id, self._current(lease)):  # expired meanwhile
            await self.store.release(lease.job.id, lease.token)
            return None
        return lease.model_copy(update={"chain": chain.id})

    async def end(self, chain_id: str, pool: str | None = None) -> None:
        """Close the chain: its request takes no more jobs (``pool``: only the chain's own pool's)."""
        if pool is not None:
            await self._own(chain_id, pool)
        await self._set(chain_id, {"open": 0})

    async def sent(self, chain_id: str, remote_id: str) -> None:
        """The provider took the chain's request as ``remote_id``: recorded, so that a dispatcher
        that starts later (after a crash or a restart) can follow the request (``open_in``)."""
        await self._set(chain_id, {"remote": remote_id})

    async def open_in(self, pool: str) -> list[Chain]:
        """The pool's open chains: requests a dispatcher before this one sent, still taking jobs."""
        found: list[Chain] = []
        async for key in self.store.redis.scan_iter(match=self._key("*"), count=1000):
            chain = await self.get(key.rsplit(":", 1)[1])
            if chain is not None and chain.pool == pool and chain.open:
                found.append(chain)
        return found

    async def _set(self, chain_id: str, fields: Mapping[str, str | int]) -> bool:
        """Set fields of the chain's record and tell its dispatcher, in one step: an expired record
        stays gone (False)."""
        pairs = tuple(str(item) for pair in fields.items() for item in pair)
        return bool(await self.store.scripts.run(ChainArgs(self.store.prefix, chain_id, pairs)))

    async def _own(self, chain_id: str, pool: str) -> Chain:
        chain = await self.get(chain_id)
        if chain is None:
            raise ChainNotFound()
        if chain.pool != pool:
            raise ChainInAnotherPool(pool)
        return chain

    async def _still_open(self, chain_id: str) -> bool:
        return await self.store.redis.hget(self._key(chain_id), "open") == "1"
