"""What the store refuses, as exceptions the API turns into 4xx answers with the same message."""

from __future__ import annotations


class QueueError(Exception):
    """Base of every refusal a caller can cause; ``status`` is the HTTP status it maps to."""

    status = 400
    retry_after: int | None = None  # seconds, sent as Retry-After when set

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class WorkshopClosed(QueueError):
    """A change of what participants have (a save, a submit, a cancel, a deletion, the organizer's
    priority, requeue or catalogue approval) after the evening's snapshot (``{p}:closed``): it would
    be lost overnight."""

    status = 503

    def __init__(self) -> None:
        super().__init__(
            "the workshop is closed for the night: its queue and saved files were put away for tomorrow, "
            "and no change sent now would be kept, so this was not done (nothing changed). Keep your "
            "work open (or export it) and save, queue, cancel or delete it again once the workshop is back"
        )


class NotRestoredYet(QueueError):
    """The organizer's Resume before the morning's restore ran (``QM_RESTORE_FIRST``)."""

    status = 409

    def __init__(self) -> None:
        super().__init__(
            "the morning's restore has not run yet: GPUs take no job until last night's queue is back, "
            "so dispatch stays paused (nothing changed). Let `pulumi up` finish its restore step, or run "
            "`python -m services.queue_manager.cli load` in the queue manager's container"
        )


class JobNotFound(QueueError):
    status = 404

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} does not exist (or belongs to someone else, or has expired)")


class JobExists(QueueError):
    status = 409

    def __init__(self, job_id: str) -> None:
        super().__init__(f"a job with prompt_id {job_id} already exists: omit prompt_id or choose a new one")


class QueueLimit(QueueError):
    status = 429

    def __init__(self, user: str, limit: int) -> None:
        super().__init__(
            f"{user} already has {limit} queued jobs, the most allowed: wait for some to start or cancel some"
        )


class StaleLease(QueueError):
    status = 409

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"the lease on job {job_id} is not held with this token (it expired, was released or the job "
            "ended): stop working on it and claim again"
        )


class WorkerInAnotherPool(QueueError):
    """A pool token acting as a worker id another pool's worker registered."""

    status = 403

    def __init__(self, worker_id: str, bound: str, pool: str) -> None:
        super().__init__(
            f"worker {worker_id} is registered in pool {bound!r}, and this is pool {pool!r}'s token: a "
            "pool's token acts only as that pool's workers. Give this worker its own WORKER_ID, or the "
            "token of the pool it serves (WORKER_TOKEN)"
        )


class PoolFull(QueueError):
    """A registration past the live workers a pool may have (a leaked token registering in a loop)."""

    status = 429
    retry_after = 15

    def __init__(self, pool: str, limit: int, setting: str) -> None:
        super().__init__(
            f"pool {pool!r} already has {limit} live workers registered, the most its token may keep "
            f"({setting}): a worker that stopped leaves the count once it has been silent past its lease "
            f"(or deregisters), so retry then; if the pool really runs more workers, raise its capacity "
            f"in the stack config ({setting}) and run pulumi up"
        )


class WorkerHoldsAJob(QueueError):
    status = 409

    def __init__(self, worker_id: str, job_id: str) -> None:
        super().__init__(
            f"worker {worker_id} holds job {job_id}: finish or release it (POST /api/leases/{job_id}/"
            "complete, fail or release) before deregistering"
        )


class UnknownWorker(QueueError):
    status = 404

    def __init__(self, worker_id: str) -> None:
        super().__init__(f"worker {worker_id} is not registered: POST /api/workers/register first")


class NotDeadLettered(QueueError):
    """A requeue of a job that is no dead letter (a second click, a page not yet redrawn)."""

    status = 409

    def __init__(self, job_id: str, state: str) -> None:
        super().__init__(
            f"job {job_id} is {state}, not a dead letter: only dead-lettered jobs can be requeued (it was "
            "requeued already, or the page was out of date: the admin page shows where it is now)"
        )


class UnknownPool(QueueError):
    """A job pinned to a pool no worker token names: no worker could ever claim it."""

    status = 422

    def __init__(self, pool: str, pools: list[str]) -> None:
        named = ", ".join(repr(name) for name in sorted(pools)) or "none"
        super().__init__(
            f"no pool is named {pool[:64]!r}: the pools are {named} (QM_WORKER_TOKENS); name one of "
            "them, or leave 'pool' out to run the job on any pool"
        )


class UnknownUser(QueueError):
    """An admin action naming somebody who is neither a participant nor ever submitted a job."""

    status = 404

    def __init__(self, user: str) -> None:
        super().__init__(
            f"{user} is no participant of this workshop (QM_PARTICIPANTS) and has no jobs: check the "
            "name against the admin page's participant list"
        )
