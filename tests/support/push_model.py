"""Push pools beside pull pools, against the queue model (hypothesis stateful, real Redis).

The pull model (``queue_model.py``) is extended with a push pool of two slots, driven through
the code the queue manager runs for it: the dispatcher's own steps (``PoolDispatcher``: a slot's
claim behind idle workers, the request sent to an endpoint that takes or refuses it, the tracking
step that follows the chain and the provider's status: queued, running, done without a report,
failed) and the chain's (``Chains``: open, ``next`` from the current job, a repeat of it after a
lost reply, one after an older job, a ``next`` whose caller left with and without a repeat, the
container's end). Containers report, heartbeat and vanish mid-job; jobs are pinned to either pool
or to none; the admin drains the whole store; each submit forgets its owner's oldest finished
jobs (``forget.lua``, here past two kept jobs). Busy pull workers prepare and start far more often
than in the pull model (``prepare_and_start``).

Beyond the pull model's invariants (every job in one place, order, limits, admin counts), after
each step: the pool's open chains in Redis are the model's, at most one per slot (capacity); each
open chain names its current job; a job a container holds is leased under its token, never to two
holders at once; a finished or cancelled job never comes back (a forgotten one stays gone).

``QM_MODEL_EXAMPLES`` runs a longer exploration, as for the pull model.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule

from services.protocol.workers import Lease
from services.queue_manager.dispatch import Flight, PoolDispatcher, Remote
from services.queue_manager.errors import StaleLease
from services.queue_manager.keys import ANY_POOL
from services.queue_manager.push_requests import Chains, NotAfterCurrent
from services.queue_manager.settings import PushPool
from tests.support.qm_api import TOKENS, job
from tests.support.queue_model import (
    ENDED,
    LEASE_MS,
    MAX_QUEUED,
    PATCHED,
    USERS,
    WAITING,
    ModelJob,
    ModelWorker,
    QueueModel,
)

PUSH = "push"
CAPACITY = 2
MAX_JOBS = 3  # per request
KEPT = 2  # jobs kept per participant before forget.lua drops her oldest finished ones
POOL = PushPool(name=PUSH, style="runpod", url="http://127.0.0.1:9/v2/model", api_key="key",
                capacity=CAPACITY, max_jobs_per_request=MAX_JOBS, chain_seconds=3600,
                linger_seconds=0, poll_seconds=0.001)  # fmt: skip
CALLS: Counter[str] = Counter()  # rule -> calls, over a whole run (printed by a long exploration)


class Endpoint:
    """The provider, as the model says it answers: takes or refuses a request, reports its status."""

    def __init__(self) -> None:
        self.refuse = 0  # the status it refuses the next request with (0: takes it)
        self.state = Remote.RUNNING
        self.ids = itertools.count(1)
        self.cancelled: list[str] = []

    async def submit(self, lease: dict[str, Any]) -> str:
        if self.refuse:
            response = httpx.Response(self.refuse, request=httpx.Request("POST", POOL.url))
            raise httpx.HTTPStatusError(str(self.refuse), request=response.request, response=response)
        return f"req-{next(self.ids)}"

    async def status(self, remote_id: str) -> Remote:
        return self.state

    async def cancel(self, remote_id: str) -> None:
        self.cancelled.append(remote_id)


@dataclass
class Request:
    """One push request: its chain record (as the model predicts it), the dispatcher's flight while
    a slot carries it, and its container (the jobs it runs, under their lease tokens)."""

    chain: str
    slot: str
    job: str  # the record's current job, its token and attempt
    token: str
    attempts: int
    tokens: list[str]  # every lease token the request was given, in order
    flight: Flight | None = None
    followed: tuple[str, str, int] = ("", "", 0)  # the job, token and attempt the dispatcher follows
    open: bool = True
    jobs: int = 1
    after: str = ""  # the token the last take was from
    alive: bool = True  # its container runs (False: it vanished)
    running: bool = False  # the dispatcher saw the provider run it
    held: dict[str, str] = field(default_factory=dict)  # job -> token, the container runs or reports


class PushModel(QueueModel):
    scopes: ClassVar[tuple[str, ...]] = ("gpu", "cpu", PUSH, ANY_POOL)
    patched: ClassVar[tuple[str, ...]] = (*PATCHED, "push_requests")
    more_settings: ClassVar[dict[str, Any]] = {"worker_tokens": {**TOKENS, PUSH: "push-token-0123456789"}}

    def __init__(self) -> None:
        super().__init__()
        self.patches.enter_context(pytest.MonkeyPatch.context()).setattr(
            "services.queue_manager.store.MAX_KEPT_JOBS", KEPT
        )
        self.slots = [f"push-{PUSH}-{n}" for n in range(CAPACITY)]
        for slot in self.slots:
            self.workers[slot] = ModelWorker(PUSH)  # never registered: pull rules leave it alone
        self.endpoint = Endpoint()
        self.dispatcher = PoolDispatcher(self.store, POOL, self.endpoint, "http://127.0.0.1:9")
        self.chains = Chains(self.store)
        self.requests: list[Request] = []
        self.forgotten: set[str] = set()

    def count(self, name: str) -> None:
        CALLS[name] += 1

    # ---- submits (the pull model's, plus pins to the push pool), and forget.lua ----------------

    @rule(user=st.sampled_from(USERS), pinned=st.booleans(), priority=st.sampled_from([0, 0, 5, -5]))
    def submit(self, user: str, pinned: bool, priority: int) -> None:
        self.clock += 1  # each submit in its own millisecond, so forget.lua's order is the model's
        before = set(self.jobs)
        super().submit(user, pinned, priority)
        self.after_submit(user, set(self.jobs) - before)

    @rule(user=st.sampled_from(USERS), priority=st.sampled_from([0, 5]))
    def submit_to_push(self, user: str, priority: int) -> None:
        if sum(1 for j in self.in_state(*WAITING) if j.user == user) >= MAX_QUEUED:
            return
        self.clock += 1
        made = self.run(self.store.submit(user, job(), priority=priority, pool=PUSH))
        self.submitted += 1
        self.jobs[made.id] = ModelJob(
            made.id, user, PUSH, self.submitted, self.next_round(user, PUSH, priority), priority
        )
        self.after_submit(user, {made.id})

    async def parked(self, worker_id: str, user: str, scope: str) -> None:
        self.clock += 1
        before = set(self.jobs)
        await super().parked(worker_id, user, scope)
        self.after_submit(user, set(self.jobs) - before)

    def after_submit(self, user: str, made: set[str]) -> None:
        """forget.lua after a submit: past her KEPT newest jobs, her finished ones that are not dead
        letters are forgotten (newest first: each submit has its own millisecond, which orders the set)."""
        if not made:
            return
        mine = [j for j in reversed(self.jobs.values()) if j.user == user]
        for j in mine[KEPT:]:
            if j.state in ENDED and not j.dead:
                del self.jobs[j.id]
                self.forgotten.add(j.id)

    @initialize()
    def work_for_the_pool(self) -> None:
        """Two jobs for the push pool from the start and a request carrying the first, so that
        short examples reach its chains."""
        for user in USERS[:2]:
            self.submit_to_push(user, 0)
        self.dispatch(0, 0)

    # ---- the dispatcher ---------------------------------------------------------------------

    def free_slots(self) -> list[str]:
        busy = {r.slot for r in self.requests if r.flight is not None}
        return [s for s in self.slots if s not in busy]

    @precondition(lambda self: self.free_slots())
    @rule(index=st.integers(0, 9), refused=st.sampled_from([0, 0, 0, 503, 429, 401]))
    def dispatch(self, index: int, refused: int) -> None:
        """A free slot's claim (behind idle workers, leased) and the request sent for it, which the
        provider takes or refuses: an outage (503, 429) gives the job back with no attempt counted,
        any other refusal (401: a wrong key) fails the attempt."""
        self.count("dispatch")
        slot = self.pick(self.free_slots(), index)
        candidates = self.eligible(slot, skip_held=False)
        lease = self.run(self.store.claim(slot, PUSH, behind=True))
        if lease is None:
            assert not candidates or self.paused, f"{slot} got nothing with work waiting"
            return
        j = self.jobs[lease.job.id]
        self.check_first(j, candidates)
        self.lease(j, slot, lease.token)
        chain, reply_token = self.run(self.chains.open(POOL, slot, lease))
        self.endpoint.refuse = refused
        flight = self.run(self.dispatcher._submit(lease, chain, reply_token))
        self.dispatcher._outage.over()  # the model's clock is virtual: no pause between its steps
        if refused:
            assert flight is None
            self.ended(j, "retry" if refused < 429 else "release")
            self.run(self.chains.end(chain))
            return
        assert flight is not None
        request = Request(chain, slot, j.id, lease.token, j.attempts, [lease.token], flight=flight)
        request.followed = (j.id, lease.token, j.attempts)
        request.held[j.id] = lease.token
        self.requests.append(request)

    def carried(self) -> list[Request]:
        return [r for r in self.requests if r.flight is not None]

    @precondition(lambda self: self.carried())
    @rule(index=st.integers(0, 9), status=st.sampled_from(list(Remote)))
    def track(self, index: int, status: Remote) -> None:
        """The dispatcher's tracking step for one request (an end heard, or its poll), the provider
        answering ``status``; when it says the request is over, the slot is free again."""
        self.count("track")
        r = self.pick(self.carried(), index)
        assert r.flight is not None
        r.flight.next_poll = 0.0
        self.endpoint.state = status
        over = self.run(self.dispatcher._over(r.flight))
        assert over == self.tracked(r, status), f"the dispatcher's view of {r.chain} differs"
        if over:
            self.run(self.chains.end(r.chain))  # _carry's end, whatever ended the request
            r.open, r.flight = False, None

    def tracked(self, r: Request, status: Remote) -> bool:
        """What ``PoolDispatcher._over`` decides, as the docs state it: True when the request is over."""
        if r.token and r.followed[0] != r.job:  # the container took the chain's next job: follow it
            r.followed = (r.job, r.token, r.attempts)
            r.running = True
        j = self.jobs.get(r.followed[0])
        ours = self.unchanged(r, j) if r.running else self.still_ours(r, j, status)
        if ours or (r.running and r.open and (j is None or j.state in ENDED)):
            return self.ended_remotely(r, j, status)
        return True

    def unchanged(self, r: Request, j: ModelJob | None) -> bool:
        """A running request's job: not ended, not requeued (its attempt the one followed)."""
        return j is not None and j.state == "leased" and j.attempts == r.followed[2]

    def still_ours(self, r: Request, j: ModelJob | None, status: Remote) -> bool:
        """While the request waits at the provider the dispatcher heartbeats its job; a cancel of
        that job cancels the request there, unless the provider has started it meanwhile."""
        if j is None or j.state != "leased" or j.token != r.followed[1]:
            r.running = r.running or j is None or j.state in ENDED
            return False
        j.expires = self.clock + LEASE_MS
        if not j.cancel:
            return True
        if status is Remote.RUNNING:
            r.running = True
            return True
        self.ended(j, "failed")  # reported as cancelled (its cancel flag makes it so)
        return False

    def ended_remotely(self, r: Request, j: ModelJob | None, status: Remote) -> bool:
        """The provider's status: a request done or failed requeues the job followed (retryably)."""
        r.running = r.running or status is Remote.RUNNING
        if status not in (Remote.DONE, Remote.FAILED):
            return False
        if j is not None and j.state == "leased" and j.token == r.followed[1]:
            self.ended(j, "retry")
        return True

    # ---- the container ------------------------------------------------------------------------

    def alive(self) -> list[Request]:
        return [r for r in self.requests if r.alive]

    def work_for(self, worker_id: str, user: str) -> None:
        """A participant submits a job the worker (or slot) may take, unless one already waits."""
        if self.eligible(worker_id, skip_held=True):
            return
        if self.workers[worker_id].pool == PUSH:
            self.submit_to_push(user, 0)
        else:
            self.submit(user, pinned=False, priority=0)

    @precondition(lambda self: self.alive())
    @rule(
        index=st.integers(0, 9),
        after=st.sampled_from(["current", "current", "repeat", "older"]),
        user=st.sampled_from(USERS),
        submits=st.booleans(),
    )
    def next(self, index: int, after: str, user: str, submits: bool) -> None:
        """The container asks for its next job (its GPU is free; the last job's report may still
        be on its way): after its current job, again after the one it last took from (its reply
        was lost), or after an older job (a stale or leaked copy); ``submits``: a participant
        submitted a job for the pool while the request ran."""
        self.count(f"next_{after}")
        r = self.pick(self.alive(), index)
        if submits:
            self.work_for(r.slot, user)
        token = {"current": r.token, "repeat": r.after, "older": r.tokens[0]}[after]
        if not token:
            return
        lease = self.take(r, token)
        if lease is not None:
            r.held[lease.job.id] = lease.token

    def take(self, r: Request, token: str) -> Lease | None:
        """``Chains.next`` with take.lua's answers, as the model predicts them."""
        if token == r.token and token != r.after:
            return self.take_new(r, token)
        if token != r.after:
            with pytest.raises(NotAfterCurrent):
                self.run(self.chains.next(r.chain, PUSH, token))
            return None
        lease = self.run(self.chains.next(r.chain, PUSH, token))
        j = self.jobs.get(r.job)
        if token == r.token or j is None or j.state != "leased" or j.token != r.token:
            assert lease is None, f"{r.chain} gave {lease} again after it ended"
            r.open = False
            return None
        assert lease is not None and (lease.job.id, lease.token) == (r.job, r.token), (
            "a repeat got another job"
        )
        return lease

    def take_new(self, r: Request, token: str) -> Lease | None:
        candidates = self.eligible(r.slot, skip_held=False)
        counted = r.open and r.jobs < MAX_JOBS
        lease = self.run(self.chains.next(r.chain, PUSH, token))
        if not counted or lease is None:
            assert lease is None, f"{r.chain} took a job while over"
            assert not counted or not candidates or self.paused, f"{r.chain} took nothing with work waiting"
            if counted:
                r.jobs, r.after = r.jobs + 1, token
            r.open = False
            return None
        r.jobs, r.after = r.jobs + 1, token
        j = self.jobs[lease.job.id]
        self.check_first(j, candidates)
        self.lease(j, r.slot, lease.token)
        r.job, r.token, r.attempts = j.id, lease.token, j.attempts
        r.tokens.append(lease.token)
        return lease

    @precondition(lambda self: self.alive())
    @rule(index=st.integers(0, 9), repeated=st.booleans())
    def next_caller_gone(self, index: int, repeated: bool) -> None:
        """A ``next`` whose container's connection broke once it had its job (``leave``): with a
        repeat answered meanwhile the job stays the container's, without it goes back and the
        request ends."""
        self.count("next_caller_gone")
        r = self.pick(self.alive(), index)
        if not r.token or r.token == r.after:
            return
        after = r.token
        lease = self.take(r, after)
        if lease is None:
            return
        if repeated:
            again = self.take(r, after)
            assert again is not None
            r.held[lease.job.id] = lease.token
        self.run(self.chains.leave(r.chain, after, lease))
        if not repeated:
            r.open, r.token = False, ""
            self.ended(self.jobs[lease.job.id], "release")

    @precondition(lambda self: [r for r in self.alive() if r.held])
    @rule(
        index=st.integers(0, 9),
        which=st.integers(0, 9),
        outcome=st.sampled_from(["succeeded", "succeeded", "failed", "retry", "release", "heartbeat"]),
    )
    def container_reports(self, index: int, which: int, outcome: str) -> None:
        """The container heartbeats or reports one of its jobs (a report is repeated at times)."""
        self.count("container_reports")
        r = self.pick([r for r in self.alive() if r.held], index)
        job_id, token = self.pick(list(r.held.items()), which)  # in the order taken: ids are random
        j = self.jobs.get(job_id)
        holder = j is not None and j.state == "leased" and j.token == token
        if outcome == "heartbeat":
            self.container_heartbeat(r, job_id, token, j if holder else None)
            return
        repeat = j is not None and j.done_token == token
        try:
            self.run(self.report_call(job_id, token, outcome))
        except StaleLease:
            assert not holder and not repeat, f"{job_id}'s holder refused"
            del r.held[job_id]
            return
        assert j is not None and (holder or repeat), f"{job_id} took a report with a stale token"
        if holder:
            self.ended(j, outcome)
        if not holder or which % 2:
            del r.held[job_id]  # else it reports the same again (its reply was lost)

    def container_heartbeat(self, r: Request, job_id: str, token: str, j: ModelJob | None) -> None:
        try:
            reply = self.run(self.store.heartbeat(job_id, token))
        except StaleLease:
            assert j is None, f"{job_id}'s holder refused"
            del r.held[job_id]
            return
        assert j is not None, f"{job_id} took a heartbeat with a stale token"
        assert reply.cancel == j.cancel
        j.expires = self.clock + LEASE_MS

    @precondition(lambda self: self.alive())
    @rule(index=st.integers(0, 9), ends=st.booleans())
    def container_stops(self, index: int, ends: bool) -> None:
        """The container ends its request (stopping), or vanishes mid-job (its leases lapse)."""
        self.count("container_stops")
        r = self.pick(self.alive(), index)
        if ends:
            self.run(self.chains.end(r.chain, PUSH))
            r.open = False
            return
        r.alive, r.held = False, {}

    # ---- the admin ----------------------------------------------------------------------------

    @rule(rarely=st.integers(0, 15))
    def drain_store(self, rarely: int) -> None:
        """The admin drains the store (dispatch paused; running and waiting counts as shown)."""
        if rarely != 7:  # hypothesis draws 0 (and the bounds) often: a drain pauses everything
            return
        self.count("drain_store")
        result = self.run(self.store.drain(0))
        self.paused = True
        running = len(self.in_state("leased"))
        assert (result.drained, result.running, result.queued) == (
            running == 0,
            running,
            len(self.in_state(*WAITING)),
        )

    # ---- pull workers' prepared jobs, started far more often ---------------------------------

    @precondition(lambda self: self.preparing())
    @rule(
        index=st.integers(0, 9),
        hold_next=st.booleans(),
        outcome=st.sampled_from(["succeeded", "retry"]),
        user=st.sampled_from(USERS),
    )
    def prepare_and_start(self, index: int, hold_next: bool, outcome: str, user: str) -> None:
        """A busy pull worker prepares its next job (one a participant submits, if none waits),
        finishes the one it runs, and starts it."""
        self.count("prepare_and_start")
        worker_id = self.pick(self.preparing(), index)
        self.work_for(worker_id, user)
        self.prepare(index=self.preparing().index(worker_id))
        w = self.workers[worker_id]
        j = self.jobs[w.job]
        if j.state == "leased" and j.token == w.token:
            self.run(self.report_call(j.id, w.token, outcome))
            self.ended(j, outcome)
        w.job = ""
        if worker_id in self.starting():
            self.count("start")
            self.start(index=self.starting().index(worker_id), hold_next=hold_next)

    # ---- what Redis holds, against the model ---------------------------------------------------

    @invariant()
    def chains_agree(self) -> None:
        self.count("steps")
        opened = self.run(self.chains.open_in(PUSH))
        assert {c.id for c in opened} == {r.chain for r in self.requests if r.open}
        assert len(opened) <= CAPACITY, "more open requests than the pool's capacity"
        for chain in opened:
            r = next(r for r in self.requests if r.chain == chain.id)
            assert (chain.job, chain.token, chain.jobs) == (r.job, r.token, r.jobs), f"{chain.id} differs"
        carried = [r.slot for r in self.requests if r.flight is not None]
        assert len(carried) == len(set(carried)) <= CAPACITY, "a slot carries two requests"

    @invariant()
    def no_job_twice(self) -> None:
        holders = Counter(
            job_id
            for r in self.alive()
            for job_id, token in r.held.items()
            if (j := self.jobs.get(job_id)) is not None and j.state == "leased" and j.token == token
        )
        assert all(n == 1 for n in holders.values()), f"a job runs in two containers: {holders}"
        assert not self.forgotten & set(self.jobs), "a forgotten job came back"
        pulled = {w.job for w in self.workers.values() if w.registered and w.job}
        assert not pulled & set(holders), "a job runs in a pull worker and a container"

    def teardown(self) -> None:
        self.count("examples")
        super().teardown()
