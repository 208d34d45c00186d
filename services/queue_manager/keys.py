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
| ``{p}:user_priority`` | hash | user -> priority (admin-set) | forever |
| ``{p}:fair:round`` | string | the fair scheduler's virtual round (of the last dispatched job) | forever |
| ``{p}:fair:user_round`` | hash | user -> round of their last queued job | forever |
| ``{p}:seq`` | string | submit counter, the tie-breaker inside a round | forever |
| ``{p}:paused`` | string | ``1`` while dispatch is paused | until resumed |
| ``{p}:worker:{id}`` | hash | registration, state, current job, last seen | 1 day after last seen |
| ``{p}:workers`` | zset | worker ids by last seen (ms) | pruned after 1 day |
| ``{p}:catalogue:{hash}`` | string | a worker's ComfyUI ``/object_info`` by catalogue hash | forever |
| ``{p}:catalogue_ext:{hash}`` | hash | its web extensions: ``<pack>/<file>.js`` -> source | forever |
| ``{p}:catalogue_current`` | string | the catalogue hash the workspaces serve | forever |
| ``{p}:events`` | pub/sub | ``{"user", "event"}`` for every participant event | - |
| ``{p}:wake`` | pub/sub | a scope that has new work, to wake long-polling claims | - |

A job hash holds ``spec`` (opaque JSON: prompt, inputs, client_id, extra_data) and scalar fields
Lua reads: id, user, scope, pool, priority, state, attempts, max_attempts, score, queued_at,
started_at, finished_at (ms), worker_id, token (current lease), done_token (last lease ended by its
holder: makes complete/fail repeatable), lease_expires, cancel, dead, outputs and error (JSON).

Lua scripts build job, user and worker keys from the prefix they get as ``ARGV[1]``; a single
Redis (not a cluster) is assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

ANY_POOL = "*"
WORKER_TTL_SECONDS = 24 * 3600


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
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    @property
    def wake(self) -> str:
        return f"{self.prefix}:wake"
