"""The Lua scripts that make every queue state change atomic, loaded once per Redis client.

Each script's ARGV is one frozen dataclass here, its fields in ARGV order (``ARGV[1]`` is always
the key prefix): callers build that object and ``Scripts.run`` flattens it, so the Python side
of the contract is typed in one place. The header comment of ``lua/<script>.lua`` lists the same
names (``ARGV: prefix, id, ...``); a test holds the two together.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

LUA_DIR = Path(__file__).with_name("lua")
LIB = (LUA_DIR / "lib.lua").read_text()
Arg = str | int | bytes


def _load(redis: Redis, name: str) -> AsyncScript:
    return redis.register_script(LIB + "\n" + (LUA_DIR / f"{name}.lua").read_text())


@dataclass(frozen=True)
class Argv:
    """Part of a script's ARGV: its fields in order; a nested part's fields in its place, a tuple's
    items (a variadic tail, ``name...`` in the Lua header) one by one, ``None`` (an optional part
    left out) nothing."""

    def flat(self) -> list[Arg]:
        out: list[Arg] = []
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, Argv):
                out += value.flat()
            elif isinstance(value, tuple):
                out += value
            elif value is not None:
                out.append(value)
        return out


@dataclass(frozen=True)
class ScriptArgs(Argv):
    script: ClassVar[str]  # lua/<script>.lua
    prefix: str


@dataclass(frozen=True)
class Claimant(Argv):
    """Who a claim leases the next job to, and on what terms (claim.lua; submit.lua's parked claim)."""

    pool: str
    worker_id: str
    token: str
    now_ms: int
    lease_ms: int
    max_running_per_user: int  # 0 = no limit
    scan_limit: int


@dataclass(frozen=True)
class SubmitArgs(ScriptArgs):
    script = "submit"
    id: str
    user: str
    scope: str
    pool: str
    priority: int
    mode: str
    max_queued: int
    now_ms: int
    max_attempts: int
    spec_json: str
    front: int = 0  # 1: ComfyUI's ``front``, before the owner's other waiting jobs
    claim: Claimant | None = None  # a claim parked in this queue manager gets the next job at once
    claim_id: str | None = None  # that claim's id ('' = unnamed; None with no claim)


@dataclass(frozen=True)
class ClaimArgs(ScriptArgs):
    script = "claim"
    claimant: Claimant
    prepare: int = 0  # 1: a busy worker prepares its next job, which is held for it, not leased
    next_token: str = ""  # an idle worker's claim: also hold the job after its lease ('' = none)
    claim_id: str = ""  # an idle worker's claim: sent again with a repeat after a lost reply


@dataclass(frozen=True)
class RegisterArgs(ScriptArgs):
    script = "register"
    worker_id: str
    pool: str
    capabilities_json: str
    state: str
    now_ms: int
    ttl_seconds: int
    live_ms: int
    limit: int  # live workers the pool may have (Settings.worker_limit)


@dataclass(frozen=True)
class DrainArgs(ScriptArgs):
    script = "drain"
    worker_id: str
    now_ms: int


@dataclass(frozen=True)
class DeregisterArgs(ScriptArgs):
    script = "deregister"
    worker_id: str
    parked_ms: int  # the longest a claim it sent before may still wait (claim_wait_max_seconds)
    now_ms: int


@dataclass(frozen=True)
class StartArgs(ScriptArgs):
    script = "start"
    id: str
    hold_token: str
    claimant: Claimant  # the worker starting its prepared job; token: for a lease to run instead
    next_token: str = ""  # hold the job after it for the same worker with this token ('' = none)


@dataclass(frozen=True)
class TouchArgs(ScriptArgs):
    script = "touch"
    id: str
    token: str
    now_ms: int
    lease_ms: int
    mode: str  # 'heartbeat' | 'events' | 'watch'
    ran: int = 0  # 1: the worker's ComfyUI is done with the job (its outputs may still be on their way)
    cached_json: str = ""  # the nodes ComfyUI reused, as the events said ('' = none said)
    events: tuple[str, ...] = ()  # UserEvent JSON payloads for the job's owner


@dataclass(frozen=True)
class FinishArgs(ScriptArgs):
    script = "finish"
    id: str
    token: str
    now_ms: int
    outcome: str
    outputs_json: str
    error_json: str
    retention_ms: int
    backoff_base_ms: int
    backoff_max_ms: int
    expected_state: str
    event_json: str
    max_losses: int
    pool: str = ""  # the reporting worker's pool, for its GPU use
    timing_json: str = ""  # the worker's timing of the job ('' = none)
    gpu_records: int = 0  # how many timings {p}:admin:gpu:{pool} keeps
    cached_json: str = ""  # the nodes ComfyUI reused, from the trailing events ('' = none said)
    events: tuple[str, ...] = ()  # the job's trailing events, UserEvent JSON payloads for its owner


@dataclass(frozen=True)
class ReapArgs(ScriptArgs):
    script = "reap"
    now_ms: int
    retention_ms: int
    backoff_base_ms: int
    backoff_max_ms: int
    batch: int
    lease_error_json: str
    default_limit_ms: int
    default_limit_error_json: str  # names the pool where it says ``{pool}``
    pool_limits: tuple[Arg, ...]  # pool, limit_ms, error_json per pool with its own limit


@dataclass(frozen=True)
class CancelArgs(ScriptArgs):
    script = "cancel"
    id: str
    owner: str  # '' = the admin: any owner's job
    now_ms: int
    retention_ms: int


@dataclass(frozen=True)
class RequeueDeadArgs(ScriptArgs):
    script = "requeue_dead"
    id: str
    mode: str  # the scheduling mode (a requeued job waits at its owner's priority of now)


@dataclass(frozen=True)
class AwaitRestoreArgs(ScriptArgs):
    script = "await_restore"


@dataclass(frozen=True)
class OpenDayArgs(ScriptArgs):
    script = "open_day"


@dataclass(frozen=True)
class ApproveArgs(ScriptArgs):
    script = "approve"
    digest: str
    waiting: str  # '1': the admin's approval, only of a version that waits for her


@dataclass(frozen=True)
class PriorityArgs(ScriptArgs):
    script = "priority"
    mode: str
    job_id: str  # this job's priority ('' = none: the user's)
    user: str  # this user's priority bonus ('' = none: the job's)
    priority: int


@dataclass(frozen=True)
class RejoinArgs(ScriptArgs):
    script = "rejoin"
    mode: str
    snapshot: str  # the snapshot's taken_at (ISO 8601): {p}:holds names it once it is restored
    night_json: str  # the snapshot's fair state: {"round", "queue_round", "user_round", "user_served"}
    night_ids: tuple[str, ...]  # the snapshot's waiting jobs: every other waiting job moves


@dataclass(frozen=True)
class PositionsArgs(ScriptArgs):
    script = "positions"
    ids: tuple[str, ...]


@dataclass(frozen=True)
class EndSessionsArgs(ScriptArgs):
    script = "end_sessions"
    user: str  # every session of this user; '' = only the session of ``digest``
    digest: str = ""


@dataclass(frozen=True)
class ForgetArgs(ScriptArgs):
    script = "forget"
    user: str
    max_bytes: int  # of her kept jobs' workflows (QM_MAX_KEPT_BYTES)
    max_jobs: int


@dataclass(frozen=True)
class ChainArgs(ScriptArgs):
    script = "chain"
    chain: str
    fields: tuple[str, ...]  # name, value pairs for the chain's record


@dataclass(frozen=True)
class TakeArgs(ScriptArgs):
    script = "take"
    chain: str
    after: str  # the lease token of the job the container is done with
    now_ms: int


@dataclass(frozen=True)
class LeaveArgs(ScriptArgs):
    script = "leave"
    chain: str
    after: str  # the lease token the take whose caller is gone was from


@dataclass(frozen=True)
class BindArgs(ScriptArgs):
    script = "bind"
    digest: str  # of the push request's reply token
    holder: str  # the container's id the call names


@dataclass(frozen=True)
class SaveFileArgs(ScriptArgs):
    script = "save_file"
    user: str
    path: str
    body: bytes
    meta: str  # "<size> <modified ms>"
    overwrite: int  # 0: refuse a path that exists
    source: str  # a move's file, which goes in the same step ('' = none)
    max_files: int
    max_bytes: int


@dataclass(frozen=True)
class SaveSettingsArgs(ScriptArgs):
    script = "save_settings"
    user: str
    max_settings: int
    max_bytes: int
    settings: tuple[str, ...]  # name, JSON value pairs


@dataclass(frozen=True)
class DeleteFileArgs(ScriptArgs):
    script = "delete_file"
    user: str
    path: str


@dataclass(frozen=True)
class HideArgs(ScriptArgs):
    script = "hide"
    user: str
    ids: tuple[str, ...]


@dataclass(frozen=True)
class ForgetClaimArgs(ScriptArgs):
    script = "forget_claim"
    worker_id: str
    claim_id: str


SCRIPT_ARGS: tuple[type[ScriptArgs], ...] = (
    SubmitArgs,
    ClaimArgs,
    RegisterArgs,
    DrainArgs,
    DeregisterArgs,
    StartArgs,
    TouchArgs,
    FinishArgs,
    ReapArgs,
    CancelArgs,
    RequeueDeadArgs,
    PriorityArgs,
    ApproveArgs,
    AwaitRestoreArgs,
    OpenDayArgs,
    RejoinArgs,
    PositionsArgs,
    EndSessionsArgs,
    ForgetArgs,
    ChainArgs,
    TakeArgs,
    LeaveArgs,
    BindArgs,
    SaveFileArgs,
    SaveSettingsArgs,
    DeleteFileArgs,
    HideArgs,
    ForgetClaimArgs,
)


class Scripts:
    """Every script registered with one Redis client; ``run`` calls the one its ARGV names."""

    def __init__(self, redis: Redis) -> None:
        self._loaded = {cls.script: _load(redis, cls.script) for cls in SCRIPT_ARGS}

    async def run(self, args: ScriptArgs) -> Any:
        return await self._loaded[args.script](args=args.flat())
