"""The queue's Lua scripts against a model, under random interleavings (hypothesis stateful).

Participants submit, pull workers of two pools claim (idle, or busy ones preparing their next job),
heartbeat, complete, fail, give jobs back, drain, register again and leave; participants and the
admin cancel; the admin pauses, resumes, changes priorities and requeues dead letters; the clock
moves and the reaper runs (ending lapsed leases, and jobs past their worker's pool's maximum job
time however their workers renew them). The model is plain Python that predicts each call's outcome from the
rules the docs state; after every step the Redis the scripts wrote is read back and held against
it: every job in exactly one place, a job leased to one worker under one token, the per-user sets,
limits and attempts, the admin page's overview and counts, worker records, holds, and the order
the docs promise (FIFO: submit order; priority: a higher level first; fair: start-time fair
queueing, each job one round after its owner's latest that ran or waits, never before the round
its queue dispatches at its priority level). Time is a virtual clock: ``now_ms`` is patched in the
store's modules, so leases and backoffs lapse when a rule moves the clock, never by sleeping.

``QM_MODEL_EXAMPLES`` runs a longer exploration (``QM_MODEL_EXAMPLES=2000 pytest ... -k model``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar
from unittest import mock

import pytest
import redis as sync_redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from redis.asyncio import Redis

from services.protocol.jobs import JobError
from services.protocol.workers import Completion, EventBatch, Failure, Lease, StartCall
from services.queue_manager.errors import (
    JobNotFound,
    NotDeadLettered,
    QueueLimit,
    StaleLease,
    UnknownWorker,
    WorkerHoldsAJob,
)
from services.queue_manager.keys import ANY_POOL
from services.queue_manager.settings import Scheduling
from services.queue_manager.store import Store
from tests.support.qm_api import job, make_settings, registration

T = TypeVar("T")
USERS = ("ada", "bob", "cy")
WORKERS = {"w1": "gpu", "w2": "gpu", "w3": "cpu"}
LEASE_MS = 5000
BACKOFF_MS = 1000
BACKOFF_MAX_MS = 2000
MAX_ATTEMPTS = 2
MAX_LOSSES = 2
MAX_QUEUED = 3
JOB_LIMIT_MS = {"gpu": 1000}  # each pool's maximum job time: well below the lease, so a job can outlast it
DEFAULT_JOB_LIMIT_MS = 1500  # a pool JOB_LIMIT_MS does not name (cpu)
START_MS = 1_800_000_000_000
WAITING = ("queued", "delayed")
ENDED = ("succeeded", "failed", "cancelled")
PATCHED = ("leases", "store", "registry", "queue_admin")  # the modules that read the clock
EXAMPLES = int(os.environ.get("QM_MODEL_EXAMPLES", "0"))


def backoff(attempts: int) -> int:
    return int(min(BACKOFF_MAX_MS, BACKOFF_MS * 2 ** max(0, attempts - 1)))


@dataclass
class ModelJob:
    id: str
    user: str
    scope: str
    number: int
    round: int
    priority: int = 0
    state: str = (
        "queued"  # queued (in its queue) | delayed (backoff) | leased | succeeded | failed | cancelled
    )
    dead: bool = False
    attempts: int = 0
    losses: int = 0
    token: str = ""  # the lease's
    done_token: str = ""  # the token that ended the last lease (a repeat of its call changes nothing)
    worker: str = ""
    expires: int = 0
    started: int = 0  # when its lease began (the maximum job time counts from there)
    due: int = 0
    cancel: bool = False
    holder: str = ""  # the busy worker it is held (prepared) for, while queued
    hold_token: str = ""
    hold_expires: int = 0
    tokens: list[str] = field(default_factory=list)  # every token it was ever leased or held under


@dataclass
class ModelWorker:
    pool: str
    registered: bool = False
    draining: bool = False
    job: str = ""  # the job the worker process runs (what it believes)
    token: str = ""  # that job's lease token, as the worker process holds it
    record_job: str = ""  # the job its Redis record names
    record_state: str = ""  # its Redis record's state (busy/idle/draining/gone/...)


class QueueModel(RuleBasedStateMachine):
    """One example: a fresh Redis database, a store on it, and the model beside it."""

    redis_url: ClassVar[str] = ""
    scopes: ClassVar[tuple[str, ...]] = ("gpu", "cpu", ANY_POOL)  # the queues a job can wait in
    patched: ClassVar[tuple[str, ...]] = PATCHED
    more_settings: ClassVar[dict[str, Any]] = {}
    scheduling: ClassVar[Scheduling] = Scheduling.FAIR
    max_running: ClassVar[int] = 0
    pins: ClassVar[bool] = True  # whether the admin pins jobs to the gpu pool

    def __init__(self) -> None:
        super().__init__()
        sync_redis.Redis.from_url(self.redis_url).flushall()
        self.clock = START_MS
        self.patches = ExitStack()
        for module in self.patched:
            self.patches.enter_context(
                mock.patch(f"services.queue_manager.{module}.now_ms", side_effect=lambda: self.clock)
            )
        self.loop = asyncio.new_event_loop()
        self.client = Redis.from_url(self.redis_url, decode_responses=True)
        overrides = {
            "scheduling": self.scheduling,
            "max_running_per_user": self.max_running,
            "max_queued_per_user": MAX_QUEUED,
            "max_attempts": MAX_ATTEMPTS,
            "max_comfyui_losses": MAX_LOSSES,
            "lease_seconds": LEASE_MS / 1000,
            "retry_backoff_seconds": BACKOFF_MS / 1000,
            "retry_backoff_max_seconds": BACKOFF_MAX_MS / 1000,
            "max_job_seconds": DEFAULT_JOB_LIMIT_MS / 1000,
            "pool_max_job_seconds": {pool: ms / 1000 for pool, ms in JOB_LIMIT_MS.items()},
            **self.more_settings,
        }
        self.store = Store(self.client, make_settings(self.redis_url, **overrides))
        self.jobs: dict[str, ModelJob] = {}
        self.workers = {wid: ModelWorker(pool) for wid, pool in WORKERS.items()}
        self.paused = False
        self.user_priority = dict.fromkeys(USERS, 0)
        self.scores: dict[str, float] = {}
        self.submitted = 0
        self.claims = 0
        self.queue_round: dict[tuple[str, int], int] = {}  # (scope, level) -> round it dispatches
        self.user_round = dict.fromkeys(USERS, -1)  # each one's latest queued job's round
        self.user_served = dict.fromkeys(USERS, -1)  # each one's latest round a job of theirs ran in

    def teardown(self) -> None:
        self.run(self.client.aclose())
        self.loop.close()
        self.patches.close()

    def run(self, call: Awaitable[T]) -> T:
        return self.loop.run_until_complete(call)

    # ---- what the model predicts -----------------------------------------------------------

    def pick(self, candidates: list[T], index: int) -> T:
        return candidates[index % len(candidates)]

    def in_state(self, *states: str) -> list[ModelJob]:
        return [j for j in self.jobs.values() if j.state in states]

    def running_of(self, user: str) -> int:
        return sum(1 for j in self.in_state("leased") if j.user == user)

    def level(self, j: ModelJob) -> int:
        return self.level_of(j.user, j.priority)

    def level_of(self, user: str, priority: int) -> int:
        if self.scheduling != Scheduling.PRIORITY:
            return 0
        return max(-100, min(100, priority + self.user_priority[user]))

    def held_by_other(self, j: ModelJob, worker_id: str) -> bool:
        return bool(j.holder) and j.holder != worker_id and j.hold_expires > self.clock

    def eligible(self, worker_id: str, *, skip_held: bool) -> list[ModelJob]:
        """The queued jobs a worker may be leased (or, skipping others' holds, hold) now."""
        pool = self.workers[worker_id].pool
        limit = self.max_running
        return [
            j
            for j in self.in_state("queued")
            if j.scope in (pool, ANY_POOL)
            and (limit <= 0 or self.running_of(j.user) < limit)
            and not (skip_held and self.held_by_other(j, worker_id))
        ]

    def rank(self, j: ModelJob) -> tuple[int, int, int]:
        """Dispatch order: the highest priority level first, then (fair, priority) the earliest
        round, then the earliest submitted."""
        return (-self.level(j), j.round, j.number)

    def check_first(self, chosen: ModelJob, candidates: list[ModelJob]) -> None:
        """The job a claim chose is the first in line among those it could have taken."""
        assert chosen in candidates, f"{chosen.id} ({chosen.state}) was not eligible"
        first = min(candidates, key=self.rank)
        assert first is chosen, f"{chosen.id} {self.rank(chosen)} went before {first.id} {self.rank(first)}"

    def next_round(self, user: str, scope: str, priority: int = 0) -> int:
        """Start-time fair queueing: a job goes one round after its owner's latest, but never before
        the round its queue dispatches at its level (fifo: all in round 0)."""
        if self.scheduling == Scheduling.FIFO:
            return 0
        current = self.queue_round.get((scope, self.level_of(user, priority)), 0)
        self.user_round[user] = min(9999, max(self.user_round[user] + 1, current))
        return self.user_round[user]

    def give_rounds_back(self, user: str) -> None:
        """A cancelled waiting job's owner gets back the rounds nothing of hers ran or waits in."""
        waiting = [j.round for j in self.in_state(*WAITING) if j.user == user]
        self.user_round[user] = min(self.user_round[user], max([self.user_served[user], *waiting]))

    def end_hold_of(self, worker_id: str) -> None:
        for j in self.jobs.values():
            if j.holder == worker_id:
                j.holder, j.hold_token, j.hold_expires = "", "", 0

    def lease(self, j: ModelJob, worker_id: str, token: str) -> None:
        j.holder, j.hold_token, j.hold_expires = "", "", 0
        j.state, j.token, j.worker = "leased", token, worker_id
        j.attempts += 1
        j.expires = self.clock + LEASE_MS
        j.started = self.clock
        j.tokens.append(token)
        queue = (j.scope, self.level(j))
        self.queue_round[queue] = max(self.queue_round.get(queue, -1), j.round)
        self.user_served[j.user] = max(self.user_served[j.user], j.round)
        w = self.workers[worker_id]
        w.job = w.record_job = j.id
        w.token = token
        w.record_state = "busy"

    def hold(self, lease: Lease | None, worker_id: str) -> None:
        """A job held for a busy worker: check it was its to hold, and note it."""
        if lease is None:
            assert (
                not self.eligible(worker_id, skip_held=True)
                or self.paused
                or self.workers[worker_id].draining
            )
            return
        assert lease.prepared
        j = self.jobs[lease.job.id]
        self.check_first(j, self.eligible(worker_id, skip_held=True))
        j.holder, j.hold_token, j.hold_expires = worker_id, lease.token, self.clock + LEASE_MS
        j.tokens.append(lease.token)

    def end_lease(self, j: ModelJob) -> None:
        for w in self.workers.values():
            if w.record_job == j.id:
                w.record_job = ""
                w.record_state = "draining" if w.record_state == "draining" else "idle"
        j.token, j.done_token = "", j.token

    def enqueue(self, j: ModelJob) -> None:
        j.state, j.worker, j.expires = "queued", "", 0

    def end(self, j: ModelJob, state: str) -> None:
        j.state = state

    # ---- participants and the admin ----------------------------------------------------------

    @rule(user=st.sampled_from(USERS), pinned=st.booleans(), priority=st.sampled_from([0, 0, 5, -5]))
    def submit(self, user: str, pinned: bool, priority: int) -> None:
        pool = "gpu" if pinned and self.pins else None
        waiting = sum(1 for j in self.in_state(*WAITING) if j.user == user)
        try:
            made = self.run(self.store.submit(user, job(), priority=priority, pool=pool))
        except QueueLimit:
            assert waiting >= MAX_QUEUED, f"{user} refused with {waiting} waiting"
            return
        assert waiting < MAX_QUEUED, f"{user} queued past the limit ({waiting} waiting)"
        self.submitted += 1
        self.jobs[made.id] = ModelJob(
            made.id,
            user,
            pool or ANY_POOL,
            self.submitted,
            self.next_round(user, pool or ANY_POOL, priority),
            priority,
        )

    @rule(index=st.integers(0, 99), as_admin=st.booleans(), someone=st.sampled_from(USERS))
    def cancel(self, index: int, as_admin: bool, someone: str) -> None:
        if not self.jobs:
            return
        j = self.pick(list(self.jobs.values()), index)
        asker = None if as_admin else someone
        try:
            outcome = self.run(self.store.cancel(j.id, user=asker))
        except JobNotFound:
            assert asker is not None and asker != j.user, f"{j.id} not found for its owner or the admin"
            return
        assert asker is None or asker == j.user, f"{someone} cancelled {j.user}'s job"
        expected = {"queued": "cancelled", "delayed": "cancelled", "leased": "requested"}.get(
            j.state, "finished"
        )
        assert outcome == expected, (j.state, outcome)
        if outcome == "cancelled":
            j.holder, j.hold_token, j.hold_expires = "", "", 0
            self.end(j, "cancelled")
            self.give_rounds_back(j.user)
        elif outcome == "requested":
            j.cancel = True

    @rule(rarely=st.integers(0, 7))
    def pause(self, rarely: int) -> None:
        if rarely:
            return
        self.run(self.store.pause())
        self.paused = True

    @precondition(lambda self: self.paused)
    @rule()
    def resume(self) -> None:
        self.run(self.store.resume())
        self.paused = False

    @rule(index=st.integers(0, 99))
    def requeue_dead(self, index: int) -> None:
        if not self.jobs:
            return
        j = self.pick(list(self.jobs.values()), index)
        try:
            again = self.run(self.store.requeue_dead(j.id))
        except NotDeadLettered:
            assert not j.dead, f"dead {j.id} could not be requeued"
            return
        assert j.dead, f"{j.id} ({j.state}) requeued as if dead"
        assert again.attempts == 0
        j.dead, j.attempts, j.done_token = False, 0, ""
        self.enqueue(j)

    @precondition(lambda self: self.scheduling == Scheduling.PRIORITY)
    @rule(user=st.sampled_from(USERS), priority=st.sampled_from([0, 10, -10]))
    def set_user_priority(self, user: str, priority: int) -> None:
        self.run(self.store.set_user_priority(user, priority))
        self.user_priority[user] = priority

    @precondition(lambda self: self.scheduling == Scheduling.PRIORITY)
    @rule(index=st.integers(0, 99), priority=st.sampled_from([0, 10, -10]))
    def set_job_priority(self, index: int, priority: int) -> None:
        if not self.jobs:
            return
        j = self.pick(list(self.jobs.values()), index)
        self.run(self.store.set_job_priority(j.id, priority))
        j.priority = priority

    # ---- workers -------------------------------------------------------------------------------

    @initialize()
    def workers_start(self) -> None:
        for worker_id in WORKERS:
            self.register(worker_id, 0)

    @rule(worker_id=st.sampled_from(sorted(WORKERS)), rarely=st.integers(0, 3))
    def register(self, worker_id: str, rarely: int) -> None:
        w = self.workers[worker_id]
        if rarely and w.registered:
            return
        self.run(self.store.register(registration(worker_id, w.pool)))
        self.end_hold_of(worker_id)
        # A worker that registers again was restarted: it knows of no job (its lease lapses).
        w.registered, w.draining, w.job, w.record_job, w.record_state = True, False, "", "", "idle"

    @rule(worker_id=st.sampled_from(sorted(WORKERS)), rarely=st.integers(0, 3))
    def drain(self, worker_id: str, rarely: int) -> None:
        w = self.workers[worker_id]
        if rarely:
            return
        try:
            self.run(self.store.mark_draining(worker_id))
        except UnknownWorker:
            assert not w.registered, f"registered {worker_id} unknown to drain"
            return
        assert w.registered, f"{worker_id} drained though it left"
        self.end_hold_of(worker_id)
        w.draining, w.record_state = True, "draining"

    @rule(worker_id=st.sampled_from(sorted(WORKERS)), rarely=st.integers(0, 3))
    def deregister(self, worker_id: str, rarely: int) -> None:
        w = self.workers[worker_id]
        if rarely or not w.registered:
            return
        try:
            self.run(self.store.deregister(worker_id))
        except WorkerHoldsAJob:
            assert w.record_job, f"{worker_id} refused as busy with nothing"
            return
        assert not w.record_job, f"{worker_id} left while its record named {w.record_job}"
        self.end_hold_of(worker_id)
        w.registered, w.draining, w.record_state = False, True, "draining"

    def free_workers(self) -> list[str]:
        return [wid for wid, w in self.workers.items() if w.registered and not w.job]

    def busy_workers(self) -> list[str]:
        return [wid for wid, w in self.workers.items() if w.registered and w.job]

    @precondition(lambda self: self.free_workers())
    @rule(
        index=st.integers(0, 9),
        hold_next=st.booleans(),
        lost=st.sampled_from(["", "", "repeat", "gone", "repeat_then_gone"]),
    )
    def claim(self, index: int, hold_next: bool, lost: str) -> None:
        """An idle worker's claim; ``lost``: its reply was lost and its client repeats it with the
        same claim id, or its client hung up (the lease and the job held after it go back), or both."""
        worker_id = self.pick(self.free_workers(), index)
        w = self.workers[worker_id]
        candidates = self.eligible(worker_id, skip_held=False)
        self.claims += 1
        claim_id = f"claim-{self.claims}" if lost else ""  # a client names each claim anew
        lease = self.run(self.store.claim(worker_id, w.pool, hold_next=hold_next, claim_id=claim_id))
        self.end_hold_of(worker_id)
        if lease is None:
            assert not candidates or self.paused or w.draining, f"{worker_id} got nothing with work waiting"
            return
        assert not self.paused and not w.draining, f"{worker_id} leased a job while paused or draining"
        j = self.jobs[lease.job.id]
        self.check_first(j, candidates)
        self.lease(j, worker_id, lease.token)
        assert lease.job.attempts == j.attempts
        if hold_next:
            self.hold(lease.held, worker_id)
        if lost.startswith("repeat"):
            lease = self.repeat_claim(worker_id, claim_id, lease, hold_next)
        if lost.endswith("gone"):
            self.caller_gone(worker_id, claim_id, lease, kept=lost != "gone")

    def repeat_claim(self, worker_id: str, claim_id: str, first: Lease, hold_next: bool) -> Lease:
        """The same claim again: the same lease, same token and attempt (and the job after it held anew)."""
        again = self.run(
            self.store.claim(worker_id, self.workers[worker_id].pool, hold_next=hold_next, claim_id=claim_id)
        )
        assert again is not None and (again.job.id, again.token) == (first.job.id, first.token)
        assert again.job.attempts == first.job.attempts
        self.end_hold_of(worker_id)
        if hold_next:
            self.hold(again.held, worker_id)
        return again

    def caller_gone(self, worker_id: str, claim_id: str, lease: Lease, *, kept: bool) -> None:
        """The first claim's caller hung up: it gives back what it got, unless a repeat has it."""
        self.run(self.store.unclaimed(worker_id, claim_id, lease))
        if lease.held is not None:
            self.end_hold_of(worker_id)
        if kept:
            return
        self.ended(self.jobs[lease.job.id], "release")
        self.workers[worker_id].job = ""

    def parkable(self) -> list[str]:
        return [wid for wid in self.free_workers() if not self.eligible(wid, skip_held=False)]

    @precondition(lambda self: self.parkable())
    @rule(index=st.integers(0, 9), user=st.sampled_from(USERS), pinned=st.booleans())
    def parked_claim_gets_a_submit(self, index: int, user: str, pinned: bool) -> None:
        """A claim waiting in the queue manager (nothing for it yet) is handed the job a submit queues,
        in the submit's own step, when that job is its to run."""
        worker_id = self.pick(self.parkable(), index)
        w = self.workers[worker_id]
        scope = "gpu" if pinned and self.pins else ANY_POOL
        limit = self.max_running
        fits = scope in (w.pool, ANY_POOL) and (limit <= 0 or self.running_of(user) < limit)
        waiting = sum(1 for j in self.in_state(*WAITING) if j.user == user)
        if not fits or waiting >= MAX_QUEUED or self.paused or w.draining:
            return
        self.run(self.parked(worker_id, user, scope))

    async def parked(self, worker_id: str, user: str, scope: str) -> None:
        claim = asyncio.create_task(self.store.claim(worker_id, self.workers[worker_id].pool, wait=30))
        try:
            await self.until_parked()
            made = await self.store.submit(user, job(), pool=None if scope == ANY_POOL else scope)
            lease = await asyncio.wait_for(asyncio.shield(claim), 10)
        finally:
            claim.cancel()
        self.submitted += 1
        j = ModelJob(made.id, user, scope, self.submitted, self.next_round(user, scope))
        self.jobs[made.id] = j
        assert lease is not None and lease.job.id == made.id, f"the parked claim of {worker_id} got {lease}"
        self.lease(j, worker_id, lease.token)

    async def until_parked(self) -> None:
        deadline = self.loop.time() + 10
        while not self.store.wakeups.parked:
            assert self.loop.time() < deadline, "the claim never parked"
            await asyncio.sleep(0.001)  # polling the claim's own parked flag

    def preparing(self) -> list[str]:
        held = {j.holder for j in self.jobs.values() if j.holder}
        return [wid for wid in self.busy_workers() if wid not in held]

    @precondition(lambda self: self.preparing())
    @rule(index=st.integers(0, 9))
    def prepare(self, index: int) -> None:
        worker_id = self.pick(self.preparing(), index)
        lease = self.run(self.store.claim(worker_id, self.workers[worker_id].pool, prepare=True))
        self.hold(lease, worker_id)

    def starting(self) -> list[str]:
        held = {j.holder for j in self.jobs.values() if j.holder}
        return [wid for wid in self.free_workers() if wid in held]

    @precondition(lambda self: self.starting())
    @rule(index=st.integers(0, 9), hold_next=st.booleans())
    def start(self, index: int, hold_next: bool) -> None:
        worker_id = self.pick(self.starting(), index)
        w = self.workers[worker_id]
        prepared = next(j for j in self.jobs.values() if j.holder == worker_id)
        own = self.eligible(worker_id, skip_held=True)
        call = StartCall(token=prepared.hold_token, worker_id=worker_id, hold_next=hold_next)
        reply = self.run(self.store.start(prepared.id, call, w.pool))
        self.end_hold_of(worker_id)
        if reply.started:
            assert not self.paused and not w.draining, f"{worker_id} started a job while paused or draining"
            self.check_first(prepared, own)
            self.lease(prepared, worker_id, call.token)
        elif reply.lease is not None:
            j = self.jobs[reply.lease.job.id]
            self.check_first(j, self.eligible(worker_id, skip_held=False))
            self.lease(j, worker_id, reply.lease.token)
        else:
            assert not self.eligible(worker_id, skip_held=False) or self.paused or w.draining
            return
        if hold_next:
            self.hold(reply.held, worker_id)

    def holding(self) -> list[ModelJob]:
        return [j for j in self.in_state("queued") if j.holder]

    @precondition(lambda self: self.holding())
    @rule(index=st.integers(0, 9))
    def give_back_hold(self, index: int) -> None:
        """A busy worker gives back the job it prepared (it could not fetch the job's files)."""
        j = self.pick(self.holding(), index)
        self.run(self.store.release(j.id, j.hold_token))
        j.holder, j.hold_token, j.hold_expires = "", "", 0

    @precondition(lambda self: self.busy_workers())
    @rule(index=st.integers(0, 9))
    def progress(self, index: int) -> None:
        """The worker forwards ComfyUI's events (the first marks its job running)."""
        self.holder_call(
            index, lambda j, token: self.store.record_events(j.id, EventBatch(token=token, events=[]))
        )

    def lease_call(self, index: int) -> tuple[str, ModelJob]:
        worker_id = self.pick(self.busy_workers(), index)
        return worker_id, self.jobs[self.workers[worker_id].job]

    def holder_call(
        self, index: int, call: Callable[[ModelJob, str], Awaitable[T]]
    ) -> tuple[ModelJob, T] | None:
        """A busy worker's call on its lease: taken only while the lease is still its (else the
        worker learns it lost the job, and gives up on it)."""
        worker_id, j = self.lease_call(index)
        token = self.workers[worker_id].token
        try:
            reply = self.run(call(j, token))
        except StaleLease:
            assert j.state != "leased" or j.token != token, f"{j.id}'s holder refused"
            self.workers[worker_id].job = ""
            return None
        assert j.state == "leased" and j.token == token, f"{j.id} ({j.state}) took a call with a stale token"
        return j, reply

    @precondition(lambda self: self.busy_workers())
    @rule(index=st.integers(0, 9))
    def heartbeat(self, index: int) -> None:
        answered = self.holder_call(index, lambda j, token: self.store.heartbeat(j.id, token))
        if answered is None:
            return
        j, reply = answered
        worker_id = j.worker
        assert reply.cancel == j.cancel
        j.expires = self.clock + LEASE_MS
        for held in self.jobs.values():
            if held.holder == worker_id:
                held.hold_expires = j.expires

    @precondition(lambda self: self.busy_workers())
    @rule(
        index=st.integers(0, 9), outcome=st.sampled_from(["succeeded", "failed", "retry", "release", "lost"])
    )
    def report(self, index: int, outcome: str) -> None:
        worker_id, j = self.lease_call(index)
        token = self.workers[worker_id].token
        holder = j.state == "leased" and j.token == token
        repeat = j.done_token == token
        try:
            self.run(self.report_call(j.id, token, outcome))
        except StaleLease:
            assert not holder and not repeat, f"{j.id}'s holder refused"
            self.workers[worker_id].job = ""
            return
        assert holder or repeat, f"{j.id} ({j.state}) took a report with a stale token"
        self.workers[worker_id].job = ""
        if holder:
            self.ended(j, outcome)

    def report_call(self, job_id: str, token: str, outcome: str) -> Coroutine[Any, Any, None]:
        if outcome == "succeeded":
            return self.store.complete(job_id, Completion(token=token))
        if outcome in ("failed", "retry"):
            error = JobError(type="RuntimeError", message="boom", retryable=outcome == "retry")
            return self.store.fail(job_id, Failure(token=token, error=error))
        return self.store.release(job_id, token, comfyui_lost=outcome == "lost")

    def ended(self, j: ModelJob, outcome: str) -> None:
        """finish.lua's end of a lease, as the docs state it."""
        self.end_lease(j)
        if j.cancel and outcome != "succeeded":
            self.end(j, "cancelled")
        elif outcome in ("succeeded", "failed"):
            self.end(j, outcome)
        elif outcome == "release":
            j.attempts -= 1
            self.enqueue(j)
        elif outcome == "lost":
            j.attempts -= 1
            j.losses += 1
            self.enqueue(j) if j.losses < MAX_LOSSES else self.end(j, "failed")
        elif j.attempts >= MAX_ATTEMPTS:
            j.dead = True
            self.end(j, "failed")
        else:
            j.state, j.worker, j.due = "delayed", "", self.clock + backoff(j.attempts)

    @rule(index=st.integers(0, 99), which=st.integers(0, 9))
    def replay_an_old_token(self, index: int, which: int) -> None:
        """Anyone holding a token the job was leased or held under before (a worker whose lease
        lapsed, a leaked reply): only the current holder's is taken."""
        tokens = [(j, t) for j in self.jobs.values() for t in j.tokens if t not in (j.token, j.hold_token)]
        if not tokens:
            return
        j, token = self.pick(tokens, index + which)
        with pytest.raises(StaleLease):
            self.run(self.store.heartbeat(j.id, token))
        if j.done_token != token:
            with pytest.raises(StaleLease):
                self.run(self.store.complete(j.id, Completion(token=token)))

    @rule(step=st.sampled_from([0, 500, BACKOFF_MS, LEASE_MS, LEASE_MS + 1, 2 * LEASE_MS]))
    def reap(self, step: int) -> None:
        """The clock moves; the reaper ends lapsed leases and puts due backoffs back in line."""
        self.clock += step
        expected = set()
        for j in sorted(self.in_state("leased"), key=lambda j: j.expires):
            if j.expires <= self.clock:
                expected.add((j.id, j.user, self.lapse(j)))
            elif self.overran(j):
                expected.add((j.id, j.user, "overrun"))
        for j in self.in_state("delayed"):
            if j.due <= self.clock:
                self.enqueue(j)
                expected.add((j.id, j.user, "requeued"))
        touched = self.run(self.store.reap(now=self.clock))
        assert set(touched) == expected

    def overran(self, j: ModelJob) -> bool:
        """A job past its worker's pool's maximum job time, however its worker renews it, ends as
        finish.lua ends an 'overrun': dead-lettered (cancelled when its owner asked). A worker that
        left for good (deregistered) names no pool: its job runs on until its lease lapses."""
        w = self.workers[j.worker]
        if not w.registered or self.clock - j.started < JOB_LIMIT_MS.get(w.pool, DEFAULT_JOB_LIMIT_MS):
            return False
        for held in self.jobs.values():
            if held.holder == j.worker and held.state == "queued":
                held.hold_expires = self.clock  # others may prepare it now; its holder may still start it
        self.end_lease(j)
        if j.cancel:
            self.end(j, "cancelled")
        else:
            j.dead = True
            self.end(j, "failed")
        return True

    def lapse(self, j: ModelJob) -> str:
        for wid, w in self.workers.items():
            if w.record_job == j.id:
                w.record_job, w.record_state = "", "draining" if w.draining else "gone"
                self.end_hold_of(wid)
        j.token, j.worker = "", ""
        if j.cancel:
            self.end(j, "cancelled")
            return "cancelled"
        if j.attempts >= MAX_ATTEMPTS:
            j.dead = True
            self.end(j, "failed")
            return "dead"
        j.state, j.due = "delayed", self.clock + backoff(j.attempts)
        return "delayed"

    # ---- what Redis holds, against the model ---------------------------------------------------

    @invariant()
    def redis_agrees(self) -> None:
        if not self.jobs:
            return
        self.run(self.check_redis())

    async def check_redis(self) -> None:
        keys = self.store.keys
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in self.jobs:
                pipe.hgetall(keys.job(job_id))
            records = [fields for fields in await pipe.execute() if fields]
        assert len(records) == len(self.jobs), "a job record is gone"
        by_id = {r["id"]: r for r in records}
        self.scores = {job_id: float(r["score"]) for job_id, r in by_id.items()}
        places = await self.places()
        for j in self.jobs.values():
            self.check_job(j, by_id[j.id], places)
        for user in USERS:
            queued = await self.client.smembers(keys.user_queued(user))
            running = await self.client.smembers(keys.user_running(user))
            assert queued == {j.id for j in self.in_state(*WAITING) if j.user == user}, (
                f"{user}'s waiting set"
            )
            assert running == {j.id for j in self.in_state("leased") if j.user == user}, (
                f"{user}'s running set"
            )
            assert self.max_running <= 0 or len(running) <= self.max_running
        await self.check_admin_view()
        await self.check_workers()

    async def places(self) -> dict[str, set[str]]:
        """Where each id sits in Redis's indexes: queue:<scope>, delayed, leases, dead."""
        keys = self.store.keys
        found: dict[str, set[str]] = {}
        indexes = {f"queue:{s}": keys.queue(s) for s in self.scopes}
        indexes |= {"delayed": keys.delayed, "leases": keys.leases, "dead": keys.dead}
        for name, key in indexes.items():
            for job_id in await self.client.zrange(key, 0, -1):
                assert job_id in self.jobs, f"{name} holds {job_id}, a job nobody submitted"
                found.setdefault(job_id, set()).add(name)
        return found

    def check_job(self, j: ModelJob, r: dict[str, str], places: dict[str, set[str]]) -> None:
        where = {
            "queued": {f"queue:{j.scope}"},
            "delayed": {"delayed"},
            "leased": {"leases"},
        }.get(j.state, set()) | ({"dead"} if j.dead else set())
        assert places.get(j.id, set()) == where, f"{j.id} ({j.state}) sits in {places.get(j.id)}"
        stored = "queued" if j.state in WAITING else r["state"] if j.state == "leased" else j.state
        assert r["state"] in (("leased", "running") if j.state == "leased" else (stored,)), (j, r["state"])
        assert int(r["attempts"]) == j.attempts <= MAX_ATTEMPTS, (j, r["attempts"])
        assert (r.get("dead") == "1") == j.dead
        assert int(self.scores[j.id] % 1e13 // 1e9) == j.round, (
            f"{j.id} queued in another round than {j.round}"
        )
        if j.state == "leased":
            assert (r["token"], r["worker_id"]) == (j.token, j.worker), f"{j.id} leased to another"

    async def check_admin_view(self) -> None:
        """The admin page's overview and per-user counts, and each waiting job's place."""
        overview = await self.store.overview()
        assert overview.paused == self.paused
        assert {j.id for j in overview.running} == {j.id for j in self.in_state("leased")}
        assert {j.id for j in overview.delayed} == {j.id for j in self.in_state("delayed")}
        assert {j.id for j in overview.dead} == {j.id for j in self.jobs.values() if j.dead}
        queued = [j.id for j in overview.queued]
        assert sorted(queued) == sorted(j.id for j in self.in_state("queued"))
        assert queued == sorted(queued, key=lambda i: self.rank(self.jobs[i])), "the overview is out of line"
        assert overview.held == {
            j.id: j.holder for j in self.in_state("queued") if j.holder and j.hold_expires > self.clock
        }
        for summary in await self.store.users():
            mine = [j for j in self.jobs.values() if j.user == summary.user]
            assert summary.queued == sum(1 for j in mine if j.state in WAITING)
            assert summary.running == sum(1 for j in mine if j.state == "leased")
        places = await self.store.positions(queued)
        for j in self.in_state("queued"):
            ahead = [
                o
                for o in self.in_state("queued")
                if o.scope in (j.scope, ANY_POOL) and self.rank(o) < self.rank(j)
            ]
            assert places[j.id] == len(ahead), f"{j.id} shown at {places[j.id]}, {len(ahead)} ahead"

    async def check_workers(self) -> None:
        for wid, w in self.workers.items():
            record = await self.client.hgetall(self.store.keys.worker(wid))
            if not w.registered and not record:
                continue
            assert (record.get("job_id") or "") == w.record_job, (
                f"{wid}'s record names {record.get('job_id')}"
            )
            if w.record_job:
                j = self.jobs[w.record_job]
                assert j.state == "leased" and j.worker == wid, f"{wid} named as running {j.id} ({j.state})"
        for j in self.in_state("leased"):
            record = await self.client.hgetall(self.store.keys.worker(j.worker))
            assert record, f"{j.id} leased to {j.worker}, who has no record"


def machine(**knobs: Any) -> type[QueueModel]:
    return type("Model", (QueueModel,), knobs)


def exploration(steps: int) -> settings:
    """CI's run: derandomized, 25 examples of up to ``steps`` steps (QM_MODEL_EXAMPLES: longer, random)."""
    return settings(
        max_examples=EXAMPLES or 25,
        stateful_step_count=steps,
        derandomize=not EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
