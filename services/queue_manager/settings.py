"""The queue manager's configuration: one ``Settings`` read from ``QM_*`` environment variables.

Every field's description is the documentation of its environment variable (``QM_`` + upper-case
field name). Outside ``QM_ENV=development`` the settings refuse to start without an admin password
and a session secret, so a forgotten secret is a failed start, not an open door.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

USER_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
DEV_SECRET = "development-only-secret"  # noqa: S105 - used only when QM_ENV=development


PUSH_POOL_PREFIX = "QM_PUSH_POOL_"


PUSH_CHAIN_SECONDS = 600.0
# The longest one job may hold a GPU unless its pool says otherwise: a long video job fits.
MAX_JOB_SECONDS = 3600.0


class PushPool(BaseModel):
    """One serverless pool the queue manager pushes jobs to."""

    name: str = Field(min_length=1, max_length=64)
    style: Literal["runpod", "verda"]
    url: str = Field(description="runpod: https://api.runpod.ai/v2/<endpoint id>; verda: endpoint_base_url")
    api_key: SecretStr
    capacity: int = Field(ge=1, le=1000, description="requests in flight at most (the pool's max replicas)")
    path: str = Field(default="/lease", description="verda: the container route that takes a lease")
    poll_seconds: float = Field(default=2.0, gt=0)
    request_timeout_seconds: float = Field(default=30.0, gt=0, description="HTTP calls to the provider")
    max_jobs_per_request: int = Field(
        default=100, ge=1, le=10000, description="jobs one request may run in a row (1: one job per request)"
    )
    chain_seconds: float = Field(
        default=PUSH_CHAIN_SECONDS,
        ge=0,
        description="a request takes further jobs only this long after it was sent; the provider's time "
        "limit on one request must cover chain_seconds and one job's maximum time (``push_request_limit``)",
    )
    linger_seconds: float = Field(
        default=1.0,
        ge=0,
        le=10,
        description="how long a container whose job ended waits for another before its request ends (a "
        "serverless replica stays up and billed longer than this after a request anyway)",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_own_job_limit(cls, value: Any) -> Any:
        if isinstance(value, dict) and "job_timeout_seconds" in value:
            raise ValueError(
                "job_timeout_seconds is no longer a push pool's own setting: a pool's maximum job time is "
                'QM_POOL_MAX_JOB_SECONDS (e.g. {"runpod": 3600}) for every pool kind; move it there'
            )
        return value


def push_request_limit(chain_seconds: float, max_job_seconds: float) -> float:
    """The longest a push request can run: its chain window, then one more job at its pool's
    maximum job time (the provider's own limit on a request must not cut it short)."""
    return chain_seconds + max_job_seconds


class Scheduling(StrEnum):
    FIFO = "fifo"
    FAIR = "fair"
    PRIORITY = "priority"


class Settings(BaseSettings):
    """Queue manager settings; each field is the env var ``QM_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="QM_", extra="ignore")

    env: str = Field(
        default="production",
        description="QM_ENV: 'development' allows missing secrets (insecure); else required",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="QM_REDIS_URL: the Redis the queue lives in (durability policy: durability.py)",
    )
    key_prefix: str = Field(default="qm", description="QM_KEY_PREFIX: prefix of every Redis key")
    admin_user: str = Field(default="admin", description="QM_ADMIN_USER: the admin's login name")
    admin_password: SecretStr | None = Field(
        default=None, description="QM_ADMIN_PASSWORD: the admin's password (required outside development)"
    )
    session_secret: SecretStr | None = Field(
        default=None,
        description="QM_SESSION_SECRET: signs login cookies; 16+ characters (required outside development)",
    )
    session_hours: float = Field(default=12.0, gt=0, description="QM_SESSION_HOURS: login session lifetime")
    login_failures_per_user: int = Field(
        default=10,
        ge=1,
        description="QM_LOGIN_FAILURES_PER_USER: failed logins for one name from one address (or one "
        "browser that logged in as it before) within the login window before further attempts for that "
        "name from there get 429",
    )
    login_failures_per_address: int = Field(
        default=50,
        ge=1,
        description="QM_LOGIN_FAILURES_PER_ADDRESS: failed logins from one client address within the login "
        "window after which names nobody has are refused there without a password check; it locks no "
        "participant's name (a room behind one NAT shares an address)",
    )
    max_sockets_per_user: int = Field(
        default=10,
        ge=1,
        description="QM_MAX_SOCKETS_PER_USER: open WebSockets (workspace tabs, event streams) one "
        "participant may hold per queue manager process; more are closed with code 1008 and a reason",
    )
    login_window_seconds: int = Field(
        default=300, ge=1, description="QM_LOGIN_WINDOW_SECONDS: how long a failed login counts"
    )
    worker_tokens: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict,
        description='QM_WORKER_TOKENS: JSON object pool -> bearer token, e.g. {"h100": "..."}',
    )
    pool_capacity: Annotated[dict[str, Annotated[int, Field(ge=1)]], NoDecode] = Field(
        default_factory=dict,
        description='QM_POOL_CAPACITY: JSON pool -> how many jobs it runs at once, e.g. {"h100": 8} (the '
        "program writes it from each pool's config). A pool's token may keep twice that many workers "
        "registered and alive (room for each to be replaced or to sync its models); more get 429",
    )
    max_job_seconds: float = Field(
        default=MAX_JOB_SECONDS,
        gt=0,
        description="QM_MAX_JOB_SECONDS: the longest one job may hold a GPU of a pool that "
        "QM_POOL_MAX_JOB_SECONDS does not name; a job running longer is stopped and fails, not tried again",
    )
    pool_max_job_seconds: Annotated[dict[str, Annotated[float, Field(gt=0)]], NoDecode] = Field(
        default_factory=dict,
        description="QM_POOL_MAX_JOB_SECONDS: JSON pool -> the longest one job may hold one of its GPUs, "
        'e.g. {"h100": 3600} (the program writes it from each pool\'s maxJobSeconds), for pull and push '
        "pools alike. The queue manager ends a job past it (its worker cannot extend it): the job fails "
        "with JobTimeLimit, goes to the dead letters (the admin may requeue it) and is not tried again",
    )
    max_workers_per_pool: int = Field(
        default=64,
        ge=1,
        description="QM_MAX_WORKERS_PER_POOL: live worker registrations of a pool QM_POOL_CAPACITY does "
        "not name (nor QM_PUSH_POOLS); more get 429",
    )
    participants: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict,
        description="QM_PARTICIPANTS: JSON object user -> password; hashed with argon2 at startup",
    )
    participants_file: Path | None = Field(
        default=None,
        description="QM_PARTICIPANTS_FILE: path to a JSON file user -> password (a Docker secret); merged "
        "with QM_PARTICIPANTS",
    )
    scheduling: Scheduling = Field(
        default=Scheduling.FAIR,
        description="QM_SCHEDULING: fifo | fair (round-robin over users) | priority (admin-set priorities)",
    )
    max_queued_per_user: int = Field(
        default=20, ge=1, description="QM_MAX_QUEUED_PER_USER: queued jobs one participant may have"
    )
    max_running_per_user: int = Field(
        default=0,
        ge=0,
        description="QM_MAX_RUNNING_PER_USER: leased/running jobs per participant; 0 = no limit",
    )
    lease_seconds: float = Field(
        default=20.0,
        gt=0,
        description="QM_LEASE_SECONDS: a lease lasts this long unless a heartbeat renews it",
    )
    max_attempts: int = Field(
        default=3, ge=1, description="QM_MAX_ATTEMPTS: leases a job may use before it is dead-lettered"
    )
    max_comfyui_losses: int = Field(
        default=3,
        ge=1,
        description="QM_MAX_COMFYUI_LOSSES: a job that was running in this many ComfyUI deaths (or "
        "hangs) is failed as their likely cause; a ComfyUI loss never counts as an attempt",
    )
    retry_backoff_seconds: float = Field(
        default=1.0, ge=0, description="QM_RETRY_BACKOFF_SECONDS: first requeue delay; doubles per attempt"
    )
    retry_backoff_max_seconds: float = Field(
        default=10.0, ge=0, description="QM_RETRY_BACKOFF_MAX_SECONDS: upper bound of the requeue delay"
    )
    reap_interval_seconds: float = Field(
        default=0.5, gt=0, description="QM_REAP_INTERVAL_SECONDS: how often expired leases are looked for"
    )
    claim_wait_max_seconds: float = Field(
        default=25.0,
        gt=0,
        le=60,
        description="QM_CLAIM_WAIT_MAX_SECONDS: longest long-poll a claim may ask for",
    )
    retention_hours: float = Field(
        default=72.0, gt=0, description="QM_RETENTION_HOURS: finished job records expire after this"
    )
    max_body_bytes: int = Field(
        default=2_000_000,
        ge=1024,
        description="QM_MAX_BODY_BYTES: larger request bodies are refused with 413 (all but uploads)",
    )
    max_kept_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="QM_MAX_KEPT_BYTES: most bytes of one participant's jobs (workflows and what their "
        "workers reported: outputs, errors) kept in Redis; past it her oldest finished jobs are forgotten "
        "before their retention ends",
    )
    max_saved_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="QM_MAX_SAVED_BYTES: most bytes one participant's saved files (workflows, templates, "
        "user.css) may take in Redis, and their settings as much again; past it a save is refused",
    )
    max_upload_bytes: int = Field(
        default=100 * 1024 * 1024,
        ge=1024,
        description="QM_MAX_UPLOAD_BYTES: largest file a participant may upload to their workspace "
        "(/w/<user>/api/upload/...); bigger ones are refused with 413",
    )
    max_user_files_bytes: int = Field(
        default=10 * 1024 * 1024 * 1024,
        ge=1024,
        description="QM_MAX_USER_FILES_BYTES: most bytes one participant's folder in the file store may "
        "hold in all (uploads and results); an upload that would pass it is refused with 413",
    )
    max_catalogue_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="QM_MAX_CATALOGUE_BYTES: largest worker registration; it carries ComfyUI's node "
        "catalogue (/object_info), ~0.5 MB stock, several MB with many custom node packs",
    )
    restore_first: bool = Field(
        default=False,
        description="QM_RESTORE_FIRST: on a Redis the morning's restore (`cli load`) has not opened yet, "
        "lease no job until it has: the GPUs may start before the restore step, and a job they took "
        "then would run ahead of last night's queue, or twice (the Pulumi program sets it)",
    )
    files_url: str = Field(
        default="file:///var/lib/comfy-workshop/files",
        description="QM_FILES_URL: user-file storage (file:///dir or s3://bucket/prefix, S3_* for its "
        "endpoint and keys), the same the workers use",
    )
    stats_interval_seconds: float = Field(
        default=30.0,
        gt=0,
        description="QM_STATS_INTERVAL_SECONDS: how often the admin charts' queue and GPU figures are "
        "sampled (one sample per interval, however many queue managers share the Redis)",
    )
    public_url: str = Field(
        default="http://127.0.0.1:8000",
        description="QM_PUBLIC_URL: base URL workers and push pools use to reach the queue manager; "
        "browsers' state changes and sockets must name its host (or a loopback name)",
    )
    log_level: str = Field(default="INFO", description="QM_LOG_LEVEL: DEBUG, INFO, WARNING or ERROR")
    push_pools: Annotated[list[PushPool], NoDecode] = Field(
        default_factory=list,
        description='QM_PUSH_POOLS: JSON list of push pools, e.g. [{"name": "runpod", "style": "runpod", '
        '"url": "https://api.runpod.ai/v2/abc", "api_key": "...", "capacity": 40}]; each '
        "QM_PUSH_POOL_<NAME> adds one pool as a JSON object (the program writes one per pool)",
    )
    models: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="QM_MODELS: JSON list of the model files every GPU holds, the stack config's manifest "
        'paths (e.g. ["checkpoints/sdxl.safetensors"]; the program writes it). A node\'s option naming a '
        "weights file (.safetensors, .gguf, ...: catalogues.WEIGHTS) none of them is, is neither offered "
        "nor accepted by the workspaces; unset: the workers' catalogue as they publish it",
    )
    gpu_prices: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict,
        description='QM_GPU_PRICES: JSON pool -> price per GPU hour, e.g. {"h100": 2.29}; others cost 0',
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """``QM_PUSH_POOL_<NAME>`` variables join ``QM_PUSH_POOLS`` (init arguments still win)."""
        return (
            init_settings,
            PushPoolVariables(settings_cls),
            env_settings,
            dotenv_settings,
            file_secret_settings,
        )

    @field_validator("push_pools", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        return _decoded(value, "QM_PUSH_POOLS must be a JSON list of pools")

    @field_validator("models", mode="before")
    @classmethod
    def _json_models(cls, value: Any) -> Any:
        return _decoded(value, 'must be a JSON list of model paths like ["checkpoints/sdxl.safetensors"]')

    @field_validator("gpu_prices", mode="before")
    @classmethod
    def _json_prices(cls, value: Any) -> Any:
        return _decoded(value, 'must be a JSON object of pool -> price like {"h100": 2.29}')

    @field_validator("pool_capacity", mode="before")
    @classmethod
    def _json_capacity(cls, value: Any) -> Any:
        return _decoded(value, 'must be a JSON object of pool -> jobs at once like {"h100": 8}')

    @field_validator("pool_max_job_seconds", mode="before")
    @classmethod
    def _json_job_limits(cls, value: Any) -> Any:
        return _decoded(value, 'must be a JSON object of pool -> seconds like {"h100": 3600}')

    @field_validator("worker_tokens", "participants", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _parse_json_object(value, "a JSON object")
        return value

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> Settings:
        if self.participants_file is not None:
            self.participants = {**_read_participants(self.participants_file), **self.participants}
        _check_user_names(self.participants, self.admin_user)
        if self.development:
            self.admin_password = self.admin_password or SecretStr(DEV_SECRET)
            self.session_secret = self.session_secret or SecretStr(DEV_SECRET)
            return self
        if self.admin_password is None or not self.admin_password.get_secret_value():
            raise ValueError("QM_ADMIN_PASSWORD is not set: set it (or QM_ENV=development for a local try)")
        secret = self.session_secret.get_secret_value() if self.session_secret else ""
        if len(secret) < 16:
            raise ValueError("QM_SESSION_SECRET must be set to at least 16 random characters")
        return self

    @property
    def development(self) -> bool:
        return self.env == "development"

    def worker_limit(self, pool: str) -> tuple[int, str]:
        """How many live workers ``pool``'s token may keep registered, and the setting that says so:
        twice its capacity (each of its workers replaced, or syncing models, at once)."""
        pushed = {push.name: push.capacity for push in self.push_pools}
        capacity = self.pool_capacity.get(pool) or pushed.get(pool, 0)
        if capacity:
            return 2 * capacity, "QM_POOL_CAPACITY"
        return self.max_workers_per_pool, "QM_MAX_WORKERS_PER_POOL"

    def job_limit(self, pool: str) -> float:
        """The longest one job may hold a GPU of ``pool`` (any kind), in seconds."""
        return self.pool_max_job_seconds.get(pool, self.max_job_seconds)

    @property
    def heartbeat_seconds(self) -> float:
        """How often workers should renew their lease: three chances before it expires."""
        return self.lease_seconds / 3


USER_NAME_RULE = "must be 1-64 letters, digits, '.', '_', '@' or '-'"


def _check_user_names(participants: dict[str, SecretStr], admin_user: str) -> None:
    """Participants' and the admin's names by one rule (``USER_NAME``): each is a folder of the
    vault (``users/<name>/``), a Redis key's part and the workspace's URL (``/w/<name>/``)."""
    bad = [name for name in participants if not USER_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"participant names {bad} {USER_NAME_RULE}")
    if not USER_NAME.fullmatch(admin_user):
        raise ValueError(
            f"QM_ADMIN_USER {admin_user[:80]!r} {USER_NAME_RULE}: set it to such a name (the stack "
            "config's adminUser)"
        )
    if admin_user in participants:
        raise ValueError(f"{admin_user!r} is the admin's name (QM_ADMIN_USER): rename that participant")


def _decoded(value: Any, expected: str) -> Any:
    """A JSON-encoded environment value decoded; anything else (init arguments) as given."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{expected}: {exc.msg}") from None


def _parse_json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f'must be {what} like {{"name": "secret"}}: {exc.msg}') from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"must be {what} of name -> string")
    return value


def _read_participants(path: Path) -> dict[str, SecretStr]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"QM_PARTICIPANTS_FILE {path} cannot be read: {exc.strerror}") from None
    return {user: SecretStr(pw) for user, pw in _parse_json_object(text, "a JSON object").items()}


class PushPoolVariables(EnvSettingsSource):
    """``QM_PUSH_POOLS`` plus every ``QM_PUSH_POOL_<NAME>`` (each pool's API key is its own secret, so
    the program writes one variable per pool), as one ``push_pools`` list."""

    def __call__(self) -> dict[str, Any]:
        extra = {k: v for k, v in self.env_vars.items() if k.upper().startswith(PUSH_POOL_PREFIX) and v}
        if not extra:
            return {}
        listed = self.env_vars.get("qm_push_pools") or "[]"
        pools = Settings._json_list(listed)
        return {"push_pools": [*pools, *(_push_pool(k.upper(), v) for k, v in sorted(extra.items()))]}


def _push_pool(name: str, text: str) -> PushPool:
    try:
        return PushPool.model_validate_json(text)
    except ValueError as exc:
        raise ValueError(f"{name} is not a push pool: {exc}") from None
