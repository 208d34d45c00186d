"""The Redis key schema: every key the queue manager writes, its type and its lifetime.

``{p}`` is ``Settings.key_prefix`` (default ``qm``). Only the queue manager talks to Redis.

| key | type | holds | lifetime |
|---|---|---|---|
| ``{p}:job:{id}`` | hash | one job (see below) | unfinished: forever; finished: retention |
| ``{p}:queue:{scope}`` | zset | queued job ids by schedule score; scope = pool or ``*`` (any) | until empty |
| ``{p}:scopes`` | set | every scope that ever had a queue | forever |
| ``{p}:delayed`` | zset | job ids waiting out a retry backoff, by due time (ms) | until due |
| ``{p}:leases`` | zset | leased/running job ids by lease expiry (ms) | until finished or expired |
| ``{p}:finished`` | zset | finished job ids by finish time (ms), pruned after retention | retention |
| ``{p}:dead`` | zset | dead-lettered job ids by time (ms) | retention |
| ``{p}:user:{u}:jobs`` | zset | a user's job ids by submit time (ms), pruned after retention | retention |
| ``{p}:user:{u}:queued`` | set | a user's queued (incl. delayed) job ids: the queued limit | until empty |
| ``{p}:user:{u}:running`` | set | a user's leased/running job ids: the running limit | until empty |
| ``{p}:users`` | set | users who ever submitted | forever |
| ``{p}:held_back`` | set | users a claim passed by at the running limit: their job end wakes | until then |
| ``{p}:user_priority`` | hash | user -> priority (admin-set) | forever |
| ``{p}:fair:round`` | string | the fair scheduler's virtual round (of the last dispatched job) | forever |
| ``{p}:fair:queue_round`` | hash | ``<100-level>:<scope>`` -> the round that queue dispatches | forever |
| ``{p}:fair:user_round`` | hash | user -> round of their last queued job | forever |
| ``{p}:fair:user_served`` | hash | user -> latest round one of their jobs was dispatched in | forever |
| ``{p}:seq`` | string | submit counter: a job's queue number, the tie-breaker inside a round | forever |
| ``{p}:paused`` | string | ``1`` while dispatch is paused | until resumed |
| ``{p}:closed`` | string | ``1`` from the evening's save: participants' changes refused | until the morning |
| ``{p}:opened`` | string | ``1`` once the morning's load ran (QM_RESTORE_FIRST: no lease before) | forever |
| ``{p}:holds`` | string | the snapshot (``taken_at``) this Redis saved or restored: all of it | forever |
| ``{p}:carried`` | string | JSON: the jobs the last save held as running (run again) | next save or Resume |
| ``{p}:worker:{id}`` | hash | registration, state, job, last seen (gone: draining) | 1 day after last seen |
| ``{p}:workers`` | zset | worker ids by last seen (ms) | pruned after 1 day |
| ``{p}:catalogue:{hash}`` | string | a worker's ComfyUI ``/object_info`` by catalogue hash | while kept |
| ``{p}:catalogue_ext:{hash}`` | hash | its web extensions and example workflows (catalogue.py) | while kept |
| ``{p}:catalogue_current`` | string | the approved catalogue hash, the one the workspaces serve | forever |
| ``{p}:catalogue_pending`` | hash | catalogue hash -> what it changes, for the admin | until decided |
| ``{p}:session:{sha256}`` | hash | a session by its id's SHA-256: user, admin, password's digest | session |
| ``{p}:user:{u}:sessions`` | set | a user's session digests, for logout everywhere | session |
| ``{p}:login_failures:{kind}:{sha256}`` | string | failed logins per name or address | login window |
| ``{p}:events`` | pub/sub | ``{"user", "event"}`` for every participant event | - |
| ``{p}:wake`` | pub/sub | a scope that has new work, to wake long-polling claims | - |
| ``{p}:cancels`` | pub/sub | a running job's id once its owner cancels it, to answer its heartbeat | - |
| ``{p}:ended`` | pub/sub | a job's id when its lease ends; a push chain's id when it changes | - |
| ``{p}:push:{chain}`` | hash | a push request's chain: slot, request id, current job, limits | its request |
| ``{p}:push_token:{sha256}`` | hash | reply token (by digest): its pool, chain, container | its request |
| ``{p}:push_leases:{chain}`` | set | the lease tokens a push request got (its reply token's) | its request |
| ``{p}:admin:samples`` | list | the admin page's queue/worker samples, newest last, capped | capped |
| ``{p}:admin:sampled:{n}`` | string | set (NX) by the process that takes interval n's sample | expires |
| ``{p}:admin:gpu:{pool}`` | list | per finished job: GPU, idle gap, upload seconds (JSON) | capped |
| ``{p}:admin:left`` | hash | pool -> ms its deregistered workers were up, for the cost | forever |
| ``{p}:admin:left_spans`` | zset | those workers' spans (JSON, by end), for the busy fraction | newest 1000 |
| ``{p}:ws:ud:{u}`` | hash | a participant's user data (saved workflows, templates): path -> bytes | forever |
| ``{p}:ws:udmeta:{u}`` | hash | the same paths -> ``"<size> <modified ms>"`` | forever |
| ``{p}:ws:settings:{u}`` | hash | a participant's ComfyUI settings: id -> JSON value | forever |
| ``{p}:ws:hidden:{u}`` | set | job ids the participant deleted from their history | forever |

Every family is also declared in ``FAMILIES`` below with what the evening snapshot does with it
(``snapshot.py``): ``COPIED`` keys travel verbatim, ``REBUILT`` ones are rebuilt from the job
records at restore, ``LEFT`` ones are not carried, with the reason. A test writes through every API
and fails on any key that no family declares.

A job hash holds ``spec`` (opaque JSON: prompt, inputs, client_id, extra_data, outputs_to_execute)
and scalar fields Lua reads: id, user, scope, pool, priority, state, attempts, max_attempts, score,
queued_at, started_at, finished_at (ms), worker_id, token (current lease), done_token (last lease
ended by its holder: makes complete/fail repeatable), lease_expires, cancel, dead, comfyui_losses
(ComfyUI deaths the job was running in), ran_at (ms: when its worker said ComfyUI was done with
it, '' before; the maximum job time counts no further), outputs and error (JSON); and ``number``
(the queue number, from ``{p}:seq`` at submit) and ``cached`` (JSON: the nodes ComfyUI reused, from
the worker's ``execution_cached``), which only the workspace reads. While a busy worker holds the queued job
prepared: hold_token, hold_worker and hold_expires (ms); that worker's hash names it in ``next_id``.

Lua scripts build job, user and worker keys from the prefix they get as ``ARGV[1]``; a single
Redis (not a cluster) is assumed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

ANY_POOL = "*"
WORKER_TTL_SECONDS = 24 * 3600


class Carried(StrEnum):
    COPIED = "copied"  # the snapshot holds the key as it is; restore writes it back
    REBUILT = "rebuilt"  # restore rebuilds it from the job records the snapshot holds
    LEFT = "left"  # not carried; Family.why says why nothing is lost


@dataclass(frozen=True)
class Family:
    pattern: str  # after ``{prefix}:``; ``{name}`` stands for one path segment or more
    type: str  # the Redis type (``pubsub``: a channel, never stored)
    carried: Carried
    why: str = ""

    def regex(self, prefix: str) -> re.Pattern[str]:
        parts = re.split(r"\{[a-z]+\}", self.pattern)
        return re.compile(re.escape(f"{prefix}:") + ".+".join(re.escape(part) for part in parts) + r"\Z")


FAMILIES: tuple[Family, ...] = (
    Family("job:{id}", "hash", Carried.REBUILT, "the job records are the snapshot's core"),
    Family("queue:{scope}", "zset", Carried.REBUILT, "each waiting job rejoins at its old score"),
    Family("scopes", "set", Carried.REBUILT),
    Family("delayed", "zset", Carried.REBUILT, "a job waiting out a backoff queues again at once"),
    Family(
        "leases", "zset", Carried.REBUILT, "running jobs queue again, the interrupted attempt not counted"
    ),
    Family("finished", "zset", Carried.REBUILT),
    Family("dead", "zset", Carried.REBUILT),
    Family("user:{u}:jobs", "zset", Carried.REBUILT),
    Family("user:{u}:queued", "set", Carried.REBUILT),
    Family("user:{u}:running", "set", Carried.LEFT, "nothing runs after a restore: running jobs queue again"),
    Family("users", "set", Carried.REBUILT),
    Family("held_back", "set", Carried.LEFT, "nothing runs after a restore: no job end is awaited"),
    Family("user_priority", "hash", Carried.COPIED),
    Family("fair:round", "string", Carried.COPIED),
    Family("fair:queue_round", "hash", Carried.COPIED),
    Family("fair:user_round", "hash", Carried.COPIED),
    Family("fair:user_served", "hash", Carried.COPIED),
    Family("seq", "string", Carried.COPIED),
    Family("paused", "string", Carried.LEFT, "the evening drain pauses dispatch; the morning resumes it"),
    Family("closed", "string", Carried.LEFT, "set by the evening's save, cleared by the morning's load"),
    Family("carried", "string", Carried.REBUILT, "the restore writes it from the snapshot's running jobs"),
    Family("opened", "string", Carried.LEFT, "set by the morning's load, on the Redis it restored into"),
    Family(
        "holds", "string", Carried.LEFT, "names a snapshot this Redis saved or restored; a new one has none"
    ),
    Family("worker:{id}", "hash", Carried.LEFT, "workers register again when they start"),
    Family("workers", "zset", Carried.LEFT, "workers register again when they start"),
    Family("catalogue:{hash}", "string", Carried.COPIED),
    Family("catalogue_ext:{hash}", "hash", Carried.COPIED),
    Family("catalogue_current", "string", Carried.COPIED),
    Family("catalogue_pending", "hash", Carried.COPIED),
    Family("events", "pubsub", Carried.LEFT, "a channel: nothing is stored"),
    Family("wake", "pubsub", Carried.LEFT, "a channel: nothing is stored"),
    Family("cancels", "pubsub", Carried.LEFT, "a channel: nothing is stored"),
    Family("ended", "pubsub", Carried.LEFT, "a channel: nothing is stored"),
    Family("push_token:{digest}", "hash", Carried.LEFT, "no request outlives the evening"),
    Family("push_leases:{chain}", "set", Carried.LEFT, "no request outlives the evening"),
    Family(
        "push:{chain}",
        "hash",
        Carried.LEFT,
        "no request outlives the evening: its jobs queue again with the leases",
    ),
    Family("admin:samples", "list", Carried.LEFT, "the admin chart describes a platform that no longer runs"),
    Family("admin:sampled:{n}", "string", Carried.LEFT, "expires within one sampling interval"),
    Family("admin:gpu:{pool}", "list", Carried.LEFT, "GPU use of a platform that no longer runs"),
    Family("admin:left", "hash", Carried.LEFT, "the cost of a platform that no longer runs"),
    Family("admin:left_spans", "zset", Carried.LEFT, "GPU use of a platform that no longer runs"),
    Family("ws:ud:{u}", "hash", Carried.COPIED),
    Family("ws:udmeta:{u}", "hash", Carried.COPIED),
    Family("ws:settings:{u}", "hash", Carried.COPIED),
    Family("ws:hidden:{u}", "set", Carried.COPIED),
    Family("session:{digest}", "hash", Carried.LEFT, "participants log in again the next morning"),
    Family("user:{u}:sessions", "set", Carried.LEFT, "participants log in again the next morning"),
    Family("login_failures:{kind}:{digest}", "string", Carried.LEFT, "expires within the login window"),
)


def family_of(key: str, prefix: str) -> Family | None:
    """The declared family a Redis key belongs to, or None (a key nobody declared)."""
    return next((family for family in FAMILIES if family.regex(prefix).match(key)), None)


@dataclass(frozen=True)
class Keys:
    prefix: str = "qm"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def queue(self, scope: str) -> str:
        return f"{self.prefix}:queue:{scope}"

    def user_jobs(self, user: str) -> str:
        return f"{self.prefix}:user:{user}:jobs"

    def user_queued(self, user: str) -> str:
        return f"{self.prefix}:user:{user}:queued"

    def user_running(self, user: str) -> str:
        return f"{self.prefix}:user:{user}:running"

    def user_data(self, user: str) -> str:
        return f"{self.prefix}:ws:ud:{user}"

    def user_data_meta(self, user: str) -> str:
        return f"{self.prefix}:ws:udmeta:{user}"

    def user_settings(self, user: str) -> str:
        return f"{self.prefix}:ws:settings:{user}"

    def hidden(self, user: str) -> str:
        return f"{self.prefix}:ws:hidden:{user}"

    def admin_sampled(self, interval: int) -> str:
        return f"{self.prefix}:admin:sampled:{interval}"

    @property
    def admin_samples(self) -> str:
        return f"{self.prefix}:admin:samples"

    def admin_gpu(self, pool: str) -> str:
        return f"{self.prefix}:admin:gpu:{pool}"

    @property
    def admin_left(self) -> str:
        return f"{self.prefix}:admin:left"

    @property
    def admin_left_spans(self) -> str:
        return f"{self.prefix}:admin:left_spans"

    def session(self, digest: str) -> str:
        return f"{self.prefix}:session:{digest}"

    def user_sessions(self, user: str) -> str:
        return f"{self.prefix}:user:{user}:sessions"

    def login_failures(self, kind: str, digest: str) -> str:
        return f"{self.prefix}:login_failures:{kind}:{digest}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    def catalogue(self, catalogue_hash: str) -> str:
        return f"{self.prefix}:catalogue:{catalogue_hash}"

    def catalogue_extensions(self, catalogue_hash: str) -> str:
        return f"{self.prefix}:catalogue_ext:{catalogue_hash}"

    @property
    def catalogue_current(self) -> str:
        return f"{self.prefix}:catalogue_current"

    @property
    def catalogue_pending(self) -> str:
        return f"{self.prefix}:catalogue_pending"

    @property
    def scopes(self) -> str:
        return f"{self.prefix}:scopes"

    @property
    def delayed(self) -> str:
        return f"{self.prefix}:delayed"

    @property
    def leases(self) -> str:
        return f"{self.prefix}:leases"

    @property
    def finished(self) -> str:
        return f"{self.prefix}:finished"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def users(self) -> str:
        return f"{self.prefix}:users"

    @property
    def user_priority(self) -> str:
        return f"{self.prefix}:user_priority"

    @property
    def seq(self) -> str:
        return f"{self.prefix}:seq"

    @property
    def paused(self) -> str:
        return f"{self.prefix}:paused"

    @property
    def closed(self) -> str:
        return f"{self.prefix}:closed"

    @property
    def opened(self) -> str:
        return f"{self.prefix}:opened"

    @property
    def holds(self) -> str:
        return f"{self.prefix}:holds"

    @property
    def carried(self) -> str:
        return f"{self.prefix}:carried"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    @property
    def wake(self) -> str:
        return f"{self.prefix}:wake"

    @property
    def cancels(self) -> str:
        return f"{self.prefix}:cancels"

    @property
    def ended(self) -> str:
        return f"{self.prefix}:ended"

    def push_request(self, chain_id: str) -> str:
        return f"{self.prefix}:push:{chain_id}"

    def push_token(self, digest: str) -> str:
        return f"{self.prefix}:push_token:{digest}"

    def push_leases(self, chain_id: str) -> str:
        return f"{self.prefix}:push_leases:{chain_id}"
