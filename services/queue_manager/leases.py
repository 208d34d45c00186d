"""The worker side of the store: claim, heartbeat, events, complete, fail, release, reap.

A lease is a random token plus an expiry in ``{p}:leases``. Every call from a worker names the
token; the Lua scripts accept it only from the current holder, so a worker whose lease expired
(and whose job went to someone else) gets ``StaleLease`` (HTTP 409) and can never overwrite the
job. HTTP routes and the push dispatcher call these same methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.protocol.jobs import Job, JobError, JobState
from services.protocol.workers import (
    Completion,
    EventBatch,
    Failure,
    HeartbeatReply,
    JobEvent,
    JobTiming,
    Lease,
    StartCall,
    StartReply,
)
from services.queue_manager import notices
from services.queue_manager.errors import StaleLease
from services.queue_manager.metrics import METRICS
from services.queue_manager.records import job_from_hash, ms_to_datetime, now_ms, pairs_to_dict
from services.queue_manager.scripts import (
    Claimant,
    ClaimArgs,
    FinishArgs,
    ForgetClaimArgs,
    ReapArgs,
    StartArgs,
    TouchArgs,
)
from services.queue_manager.store_base import StoreBase
from services.queue_manager.wakeups import Ticket

log = logging.getLogger(__name__)
CLAIM_SCAN_LIMIT = 1000
DRAINING = "draining"  # claim.lua's answer to a worker shutting down: nothing, and stop waiting
GPU_RECORDS = 5000  # per pool: the admin page's GPU use over the last few thousand jobs
RECHECK_SECONDS = 1.0
# The state a worker's report usually ends a job in; finish.lua announces that end itself.
EXPECTED_STATE = {
    "succeeded": JobState.SUCCEEDED,
    "failed": JobState.FAILED,
    "retry": JobState.FAILED,
    "lost": JobState.FAILED,
    "overrun": JobState.FAILED,
}
REAPED = {"requeued": "job requeued", "overrun": "job stopped at its pool's maximum job time"}
LEASE_LOST = JobError(
    type="LeaseExpired", message="the worker stopped renewing its lease (crashed or lost)", retryable=True
)


def killed_comfyui(losses: int) -> JobError:
    """Why a job that was running in ``losses`` ComfyUI deaths is failed instead of given out again."""
    return JobError(
        type="ComfyUIKilled",
        message=f"ComfyUI died or stopped answering {losses} times while running this job, so the "
        "workflow itself is the likely cause (most often it needs more GPU memory than there is): make "
        "it lighter (smaller resolution, batch or frame count, a smaller model) and submit it again",
    )


def time_limit_error(pool: str, seconds: float) -> JobError:
    """Why a job that held a GPU of ``pool`` past the pool's maximum job time was stopped (every
    pool kind's, ``Settings.job_limit``): the limit, and how the organizer raises it."""
    return JobError(
        type="JobTimeLimit",
        message=f"the job ran longer than {seconds:g} s, the longest one job may hold a GPU of pool "
        f"{pool!r}, so it was stopped to free the GPU and is not tried again (a workflow that hangs would "
        "hang again). If it needs longer (a long video), ask the organizer to raise maxJobSeconds of pool "
        f"{pool} in the stack config and run `pulumi up`; then run it again (the admin can requeue it "
        "from the dead letters)",
    )


@dataclass(frozen=True)
class GpuUse:
    """A worker's timing of one job, and the pool whose GPU it used."""

    pool: str
    timing: JobTiming | None

    def record(self) -> str:
        """The ``{p}:admin:gpu:{pool}`` entry finish.lua appends ('' = none)."""
        if not self.pool or self.timing is None:
            return ""
        return json.dumps({"t": time.time(), **self.timing.model_dump()})


@dataclass(frozen=True)
class Forwarded:
    """A worker's ComfyUI events as the job's owner hears them, and what they tell the job record:
    the same whether an ``/events`` call sends them or a completion or failure carries them."""

    payloads: tuple[str, ...]  # UserEvent JSON, ComfyUI's order; terminal events left out (``finished``)
    cached: str  # the nodes ComfyUI reused (the last ``execution_cached``), JSON; '' when none said

    @classmethod
    def of(cls, job_id: str, events: list[JobEvent]) -> Forwarded:
        told = (notices.from_worker(job_id, event) for event in events)
        payloads = tuple(event.model_dump_json() for event in told if event is not None)
        said = [event.data.get("nodes") for event in events if event.type == "execution_cached"]
        cached = json.dumps([str(n) for n in said[-1]]) if said and isinstance(said[-1], list) else ""
        return cls(payloads, cached)


NOTHING_FORWARDED = Forwarded((), "")


class LeaseOps(StoreBase):
    async def claim(
        self,
        worker_id: str,
        pool: str,
        wait: float = 0.0,
        prepare: bool = False,
        behind: bool = False,
        hold_next: bool = False,
        gone: Callable[[], Awaitable[bool]] | None = None,
        claim_id: str = "",
    ) -> Lease | None:
        """Lease the next job a worker of ``pool`` may run, waiting up to ``wait`` seconds for one.

        ``prepare``: the worker is busy and prepares its next job; the job is held for it, not
        leased (``Lease.prepared``), and idle workers' claims are woken first. ``behind``: woken
        after idle workers' claims too, but leased (the push dispatcher's, for a new request).
        ``hold_next`` (an idle worker's claim): also hold the job after the lease for the worker
        (``Lease.held``), as ``start`` does, in the same Lua step; a lease a submit hands to a
        parked claim holds nothing (nothing else was there for it when it parked). ``gone``: whether
        the caller left (an HTTP claim's client hung up); a claim woken after that returns None
        without claiming, as nobody would read what it leased or held (a worker that dropped its
        claim ahead, its GPU free first, claims as an idle one meanwhile and holds a job itself).
        ``claim_id`` (an idle worker's claim): a repeat with the same id after a lost reply gets the
        lease the first one made again (or a submit handed this claim), while that job is still
        leased to the worker. A worker shutting down (``mark_draining``) gets None at once, also
        from a claim it parked before.
        """
        deadline = time.monotonic() + wait
        next_token = secrets.token_urlsafe(24) if hold_next and not prepare else ""
        while True:
            with self.wakeups.ticket(pool, worker_id, prepare or behind, claim_id) as ticket:
                reply = await self._claim_reply(worker_id, pool, prepare, next_token, claim_id)
                if reply == DRAINING:
                    return None
                lease = self._claimed(worker_id, prepare, reply)
                remaining = deadline - time.monotonic()
                if lease is not None or remaining <= 0:
                    return lease
                handed = await ticket.wait(min(remaining, RECHECK_SECONDS))
                if handed is not None:
                    return handed
            if gone is not None and await gone():
                return None

    async def unclaimed(self, worker_id: str, claim_id: str, lease: Lease) -> None:
        """An idle worker's claim got ``lease`` (and the job held after it) but its caller hung up:
        give them back, no attempt counted, unless a repeat of the claim (the same ``claim_id``,
        sent when the reply seemed lost) got that lease meanwhile and runs it (forget_claim.lua).
        The job held after it is given back either way (a repeat holds one under its own token).
        Either may be another's by then (cancelled, taken by an idle worker, held anew by the
        repeat): that one stays as it is."""
        given = [lease.held] if lease.held is not None else []
        if await self.scripts.run(ForgetClaimArgs(self.prefix, worker_id, claim_id)) == "release":
            given.insert(0, lease)
        for back in given:
            with contextlib.suppress(StaleLease):
                await self.release(back.job.id, back.token)

    def claimant(self, worker_id: str, pool: str, token: str, now: int) -> Claimant:
        """A claim's terms: claim.lua's, and submit.lua's for a claim parked here."""
        lease_ms, max_running = int(self.settings.lease_seconds * 1000), self.settings.max_running_per_user
        return Claimant(pool, worker_id, token, now, lease_ms, max_running, CLAIM_SCAN_LIMIT)

    async def _claim_reply(
        self, worker_id: str, pool: str, prepare: bool, next_token: str, claim_id: str
    ) -> Any:
        """claim.lua's answer: the lease (and the job held after it), the job held, {} or DRAINING."""
        claimant = self.claimant(worker_id, pool, secrets.token_urlsafe(24), now_ms())
        return await self.scripts.run(ClaimArgs(self.prefix, claimant, int(prepare), next_token, claim_id))

    def _claimed(self, worker_id: str, prepare: bool, reply: list[Any]) -> Lease | None:
        if prepare:
            return self._held(worker_id, reply)
        lease = self._leased(worker_id, None, reply)  # a repeat's is the first claim's token
        if lease is not None:
            lease.held = self._held(worker_id, reply[3])
        return lease

    def _held(self, worker_id: str, reply: list[Any]) -> Lease | None:
        """The prepared job in claim.lua's (or start.lua's) answer: held for the worker, with its
        hold token, until it starts it."""
        if not reply:
            return None
        job_id, _, flat = reply[:3]
        fields = pairs_to_dict(flat)
        log.info("job prepared", extra={"job_id": job_id, "worker_id": worker_id})
        lease = self._lease(job_from_hash(fields), fields["hold_token"], fields["hold_expires"])
        lease.prepared = True
        return lease

    async def start(self, job_id: str, call: StartCall, pool: str) -> StartReply:
        """The worker's GPU is free: start the job it prepared, or lease it what to run instead;
        with ``hold_next``, also hold the job after that one for it, in the same Lua step (what
        ``claim?prepare=1`` with no wait would hold then). A start repeated after a lost reply
        answers as the first one did."""
        token = secrets.token_urlsafe(24)
        next_token = secrets.token_urlsafe(24) if call.hold_next else ""
        claimant = self.claimant(call.worker_id, pool, token, now_ms())
        outcome, leased, held = await self.scripts.run(
            StartArgs(self.prefix, job_id, call.token, claimant, next_token)
        )
        if outcome == "none":
            return StartReply(started=False)
        started = outcome == "started"
        lease = self._leased(call.worker_id, call.token if started else token, leased)
        held_next = self._held(call.worker_id, held)
        return StartReply(started=started, lease=None if started else lease, held=held_next)

    def _leased(self, worker_id: str, token: str | None, reply: list[Any]) -> Lease | None:
        """The lease in claim.lua's answer (None when it found nothing); ``token`` None: the one
        the job's record holds."""
        if not reply:
            return None
        job_id, _, flat = reply[:3]
        fields = pairs_to_dict(flat)
        job = job_from_hash(fields)
        METRICS.observe_dispatch(job)
        log.info("job leased", extra={"job_id": job_id, "worker_id": worker_id, "attempt": job.attempts})
        return self._lease(job, fields["token"] if token is None else token, fields["lease_expires"])

    async def hand_over(self, ticket: Ticket, token: str, reply: list[Any]) -> None:
        """Deliver what submit.lua leased to a parked claim; if that claim has gone meanwhile,
        give the job back (requeued, the attempt not counted) so it cannot sit leased to nobody."""
        lease = self._leased(ticket.worker_id, token, reply)
        if not ticket.deliver(lease) and lease is not None:
            await self.release(lease.job.id, token)

    def lease_from(self, fields: dict[str, str]) -> Lease:
        """The lease a leased job's record holds (a push request's repeat of a lost ``next``)."""
        return self._lease(job_from_hash(fields), fields["token"], fields["lease_expires"])

    def _lease(self, job: Job, token: str, expires_ms: str) -> Lease:
        expires = ms_to_datetime(expires_ms)
        assert expires is not None
        return Lease(job=job, token=token, expires_at=expires, lease_seconds=self.settings.lease_seconds)

    async def _touch(
        self, job_id: str, token: str, mode: str, forwarded: Forwarded = NOTHING_FORWARDED, ran: bool = False
    ) -> list[str]:
        lease_ms = int(self.settings.lease_seconds * 1000)
        args = TouchArgs(
            self.prefix,
            job_id,
            token,
            now_ms(),
            lease_ms,
            mode,
            int(ran),
            forwarded.cached,
            forwarded.payloads,
        )
        reply = await self.scripts.run(args)
        if reply[0] != "ok":
            raise StaleLease(job_id)
        return [str(part) for part in reply]

    async def heartbeat(
        self, job_id: str, token: str, wait: float = 0.0, renew: bool = True, ran: bool = False
    ) -> HeartbeatReply:
        """Renew a lease; the reply tells the worker whether the job's owner asked to cancel it.
        With ``wait`` (capped at half the lease) the reply waits that long for a cancel and comes
        the moment one is made, so a worker holding its heartbeat open hears it at once.
        ``renew=False`` only checks the lease (a worker's first call, the lease being fresh).
        The end of the lease meanwhile (the reaper's, at the pool's maximum job time) answers at
        once too, refused (``StaleLease``): the worker stops the job in ComfyUI now. ``ran``: the
        worker's ComfyUI is done with the job, which holds no GPU from then on (its outputs may still
        be on their way to storage), so the maximum job time no longer ends it (reap.lua)."""
        # watched before the flag is read: none missed
        with self.wakeups.cancels.watch(job_id) as woken, self.wakeups.ends.watch(job_id, woken):
            mode = "heartbeat" if renew else "watch"
            _, expires, cancel, _, _, holding = await self._touch(job_id, token, mode, ran=ran)
            if cancel != "1" and wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(wait, self.settings.lease_seconds / 2))
                if woken.is_set():  # a cancel, or the lease ended: what the job's record says now
                    _, _, cancel, _, _, _ = await self._touch(job_id, token, "watch")
        expires_at = ms_to_datetime(expires)
        assert expires_at is not None
        return HeartbeatReply(expires_at=expires_at, cancel=cancel == "1", holding=holding or None)

    async def record_events(self, job_id: str, batch: EventBatch) -> None:
        """Forward a worker's ComfyUI events to the job's owner (the first marks the job running)."""
        # only for the holder; the reused nodes it keeps are what the job's history says of them
        await self._touch(job_id, batch.token, "events", Forwarded.of(job_id, batch.events))

    async def complete(self, job_id: str, completion: Completion, pool: str = "") -> None:
        """Mark a job succeeded with its outputs (idempotent for the lease holder); the worker's
        timing counts toward ``pool``'s GPU use. The events it carries reach the owner first."""
        outputs = json.dumps([o.model_dump(mode="json") for o in completion.outputs])
        used = GpuUse(pool, completion.timing)
        trailing = Forwarded.of(job_id, completion.events)
        await self._finish(
            job_id, completion.token, "succeeded", outputs=outputs, used=used, trailing=trailing
        )

    async def fail(self, job_id: str, failure: Failure, pool: str = "") -> None:
        """Record a failure: retryable ones are requeued until attempts run out, then dead-lettered.
        The events it carries reach the owner first."""
        outcome = "retry" if failure.error.retryable else "failed"
        used = GpuUse(pool, failure.timing)
        trailing = Forwarded.of(job_id, failure.events)
        await self._finish(job_id, failure.token, outcome, error=failure.error, used=used, trailing=trailing)

    async def release(self, job_id: str, token: str, comfyui_lost: bool = False) -> None:
        """Give a job back unfinished: requeued, the attempt not counted. ``comfyui_lost``: the
        worker's ComfyUI died or went silent with the job in it; after ``max_comfyui_losses`` of
        those the job is failed (``killed_comfyui``) rather than handed to the next GPU to kill."""
        if comfyui_lost:
            error = killed_comfyui(self.settings.max_comfyui_losses)
            await self._finish(job_id, token, "lost", error=error)
        else:
            await self._finish(job_id, token, "release")

    async def _finish(
        self,
        job_id: str,
        token: str,
        outcome: str,
        *,
        outputs: str = "[]",
        error: JobError | None = None,
        used: GpuUse | None = None,
        trailing: Forwarded = NOTHING_FORWARDED,
    ) -> None:
        """End the lease (finish.lua); ``trailing``: the events the worker's report carries, published
        by the call that ends the lease, before its end is announced."""
        error_json = error.model_dump_json() if error else ""
        used = used or GpuUse("", None)
        expected = EXPECTED_STATE.get(outcome)  # the end the Lua script announces itself
        event = notices.finished(job_id, expected, error).model_dump_json() if expected else ""
        reply = await self.scripts.run(
            FinishArgs(
                prefix=self.prefix,
                id=job_id,
                token=token,
                now_ms=now_ms(),
                outcome=outcome,
                outputs_json=outputs,
                error_json=error_json,
                retention_ms=self.retention_ms,
                backoff_base_ms=int(self.settings.retry_backoff_seconds * 1000),
                backoff_max_ms=int(self.settings.retry_backoff_max_seconds * 1000),
                expected_state=expected.value if expected else "",
                event_json=event,
                max_losses=self.settings.max_comfyui_losses,
                pool=used.pool,
                timing_json=used.record(),
                gpu_records=GPU_RECORDS,
                cached_json=trailing.cached,
                events=trailing.payloads,
            )
        )
        if reply[0] == "stale":
            raise StaleLease(job_id)
        if reply[0] == "again":
            return
        _, state, user, queued_at, published = reply
        METRICS.observe_gpu(used.pool, used.timing)
        log.info("lease ended", extra={"job_id": job_id, "outcome": outcome, "state": state})
        if JobState(state).finished:
            METRICS.observe_finished(state, (now_ms() - int(queued_at)) / 1000)
        if not int(published):
            await self._announce(job_id, user, state, error)

    async def _announce(self, job_id: str, user: str, state: str, error: JobError | None) -> None:
        if JobState(state).finished:
            await self.events.publish(user, notices.finished(job_id, state, error))
        else:
            place = await self.position(job_id)
            await self.events.publish(user, notices.position(job_id, place if place is not None else -1))

    async def reap(self, now: int | None = None, batch: int = 200) -> list[tuple[str, str, str]]:
        """Requeue (after a backoff) or dead-letter jobs whose lease expired; end every job that has
        held a worker's GPU longer than its pool allows (``Settings.job_limit``), however its worker
        renews it: the job fails for good (``time_limit_error``), and the worker, refused at its next
        heartbeat, stops it in ComfyUI; promote due backoffs. One Lua step, one Redis round trip.

        Returns ``(job_id, user, outcome)`` per job touched; ``now`` (ms) lets tests look ahead.
        """
        reply = await self.scripts.run(
            ReapArgs(
                prefix=self.prefix,
                now_ms=now if now is not None else now_ms(),
                retention_ms=self.retention_ms,
                backoff_base_ms=int(self.settings.retry_backoff_seconds * 1000),
                backoff_max_ms=int(self.settings.retry_backoff_max_seconds * 1000),
                batch=batch,
                lease_error_json=LEASE_LOST.model_dump_json(),
                **self._job_limits(),
            )
        )
        touched = [(str(reply[i]), str(reply[i + 1]), str(reply[i + 2])) for i in range(0, len(reply), 3)]
        for job_id, user, outcome in touched:
            log.warning(REAPED.get(outcome, "lease expired"), extra={"job_id": job_id, "outcome": outcome})
            await self._announce_reaped(job_id, user, outcome)
        return touched

    def _job_limits(self) -> dict[str, Any]:
        """reap.lua's maximum job times: the default one, and each pool's own, in ms with their
        JobTimeLimit error."""
        default = self.settings.max_job_seconds
        pools: list[str | int] = []
        for pool, seconds in self.settings.pool_max_job_seconds.items():
            pools += [pool, int(seconds * 1000), time_limit_error(pool, seconds).model_dump_json()]
        return {
            "default_limit_ms": int(default * 1000),
            "default_limit_error_json": time_limit_error("{pool}", default).model_dump_json(),
            "pool_limits": tuple(pools),
        }

    async def overrun(self, job_id: str, token: str, pool: str) -> None:
        """End a job that held a GPU of ``pool`` past the pool's maximum job time: failed for good
        (``time_limit_error``) and in the dead letters, where the admin sees it and may requeue it."""
        error = time_limit_error(pool, self.settings.job_limit(pool))
        await self._finish(job_id, token, "overrun", error=error)

    async def _announce_reaped(self, job_id: str, user: str, outcome: str) -> None:
        if outcome == "overrun":  # reap.lua ended it as finish.lua ends an 'overrun'
            fields = await self.redis.hgetall(self.keys.job(job_id))
            ended = job_from_hash(fields)
            METRICS.observe_finished(ended.state.value, (now_ms() - int(fields["queued_at"])) / 1000)
            await self.events.publish(user, notices.finished(job_id, ended.state, ended.error))
        elif outcome == "dead":
            await self.events.publish(user, notices.finished(job_id, JobState.FAILED, LEASE_LOST))
        elif outcome == "cancelled":
            await self.events.publish(user, notices.finished(job_id, JobState.CANCELLED))
        else:
            place = await self.position(job_id)
            await self.events.publish(user, notices.position(job_id, place if place is not None else -1))
