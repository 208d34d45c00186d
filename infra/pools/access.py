"""What cloud pools share: provider credentials, the worker's environment, the push dispatch setting.

Credentials come from the registry (`infra.credential_registry`): the stack config, or else the
environment variable named there, as Pulumi secrets either way. The worker environment is split into
plain values and secrets, so each kind can put the secrets where its provider keeps them (an env
file on the instance, Verda secrets, RunPod template env).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi

from infra.credential_registry import RUNPOD_API_KEY, VERDA_CLIENT_ID, VERDA_CLIENT_SECRET, Credential
from infra.pools.base import PoolMode
from infra.pools.context import PoolContext
from infra.secret import secret

SHARED_MODELS_DIR = "/mnt/models"
RUNPOD_MODELS_DIR = "/runpod-volume/models"  # RunPod mounts a network volume at /runpod-volume
# Every secret a worker may be given (``worker_env``): a Verda deployment keeps each in a secret of
# its own, whose name the preview checks before anything is made.
WORKER_TOKEN = "WORKER_TOKEN"  # noqa: S105 (the setting's name)
MODELS_KEY = ("WORKER_MODELS_S3_ACCESS_KEY_ID", "WORKER_MODELS_S3_SECRET_ACCESS_KEY")
FILES_KEY = ("S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY")
# Where a worker stores participants' files (the workshop's bucket at its R2 account): plain settings,
# which no other workshop's workers have, so they show whose an instance's startup script is.
FILES_PLACE = ("WORKER_STORAGE_URL", "S3_ENDPOINT_URL")
WORKER_SECRETS = (WORKER_TOKEN, *MODELS_KEY, *FILES_KEY)
MODELS_SOURCE = ("WORKER_MODELS_URL", "WORKER_MODELS_S3_ENDPOINT_URL", *MODELS_KEY)
# All a GPU host's models sync (``sync-models``) is given: the manifest, the models bucket and its read
# key, the folder it fills, and the queue manager and pool token to show its progress on the admin
# page. Never the files' key (every participant's files, read and write), which it does not use.
HOST_SYNC_ENV = (
    "WORKER_QUEUE_URL", "WORKER_POOL", "WORKER_PROVIDER", WORKER_TOKEN, "WORKER_SHARED_MODELS_DIR",
    "WORKER_MODELS_MANIFEST_JSON", *MODELS_SOURCE,
)  # fmt: skip


def host_sync_split(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """A GPU host's worker environment as its two kinds of container need it: the models sync's
    (``HOST_SYNC_ENV`` only), and the workers', who only read the folder the sync filled (all but
    the models bucket and its key)."""
    sync = {key: value for key, value in env.items() if key in HOST_SYNC_ENV}
    workers = {key: value for key, value in env.items() if key not in MODELS_SOURCE}
    return sync, workers


def connection(**props: Credential) -> dict[str, pulumi.Input[str]]:
    """Provider inputs ``prop -> credential`` for those given; the provider reports any missing one."""
    found = {prop: credential.value() for prop, credential in props.items()}
    return {prop: value for prop, value in found.items() if value is not None}


def verda_connection() -> dict[str, pulumi.Input[str]]:
    return connection(client_id=VERDA_CLIENT_ID, client_secret=VERDA_CLIENT_SECRET)


def runpod_connection() -> dict[str, pulumi.Input[str]]:
    return connection(api_key=RUNPOD_API_KEY)


@dataclass(frozen=True)
class WorkerEnv:
    """A worker container's settings: ``plain`` may be shown; ``secret`` never leaves Pulumi secrets."""

    plain: dict[str, pulumi.Input[str]] = field(default_factory=dict)
    secret: dict[str, pulumi.Input[str]] = field(default_factory=dict)

    def merged(self) -> dict[str, pulumi.Input[str]]:
        return {**self.plain, **{key: secret(value) for key, value in self.secret.items()}}

    def secrets_version(self) -> pulumi.Output[str]:
        """A digest of the secret values (safe to show): as a plain setting it changes the worker's
        spec whenever a secret stored elsewhere (a Verda secret) changes, so the workers restart."""

        def digest(values: dict[str, str]) -> str:
            text = "\n".join(f"{key}={value}" for key, value in sorted(values.items()))
            return hashlib.sha256(text.encode()).hexdigest()[:16]

        return pulumi.Output.unsecret(pulumi.Output.all(**self.secret).apply(digest))


def worker_env(
    ctx: PoolContext, pool: str, provider: str, models_dir: str | None, mode: PoolMode = PoolMode.PULL
) -> WorkerEnv:
    """`WORKER_*` and `S3_*` for a cloud worker of ``pool``: where the queue (as ``mode``'s workers
    reach it), the files and the models are. ``models_dir`` is the shared models volume (or GPU host
    folder) the worker syncs into."""
    plain: dict[str, pulumi.Input[str]] = {
        "WORKER_QUEUE_URL": ctx.queue_url_for(pool, mode),
        "WORKER_POOL": pool,
        "WORKER_PROVIDER": provider,
        "WORKER_DEVICE": "gpu",
    }
    secrets: dict[str, pulumi.Input[str]] = {WORKER_TOKEN: ctx.worker_token}
    if models_dir:
        plain["WORKER_SHARED_MODELS_DIR"] = models_dir
    if ctx.warmup_workflow:
        plain["WORKER_WARMUP_WORKFLOW"] = ctx.warmup_workflow
    _models_env(ctx, plain, secrets)
    if ctx.user_files is not None:
        files = ctx.user_files
        url, endpoint = FILES_PLACE
        plain[url] = pulumi.Output.concat("s3://", files.bucket, "/files")
        plain[endpoint] = files.endpoint
        plain["S3_REGION"] = "auto"
        secrets.update(zip(FILES_KEY, (files.access_key_id, files.secret_access_key), strict=True))
    return WorkerEnv(plain, secrets)


def _models_env(
    ctx: PoolContext, plain: dict[str, pulumi.Input[str]], secrets: dict[str, pulumi.Input[str]]
) -> None:
    """The manifest and the models bucket with its read-only credentials (separate from the files')."""
    if ctx.models_manifest:
        plain["WORKER_MODELS_MANIFEST_JSON"] = ctx.models_manifest
    if ctx.models is not None:
        plain["WORKER_MODELS_URL"] = pulumi.Output.concat("s3://", ctx.models.bucket)
        plain["WORKER_MODELS_S3_ENDPOINT_URL"] = ctx.models.endpoint
        secrets.update(zip(MODELS_KEY, (ctx.models.access_key_id, ctx.models.secret_access_key), strict=True))


def push_pool_env(pool: str, spec: dict[str, pulumi.Input[Any]]) -> dict[str, pulumi.Input[str]]:
    """`QM_PUSH_POOL_<NAME>`: how the queue manager's dispatcher reaches this pool (secret: holds a key)."""
    text = pulumi.Output.all(**spec).apply(lambda values: json.dumps({"name": pool, **values}))
    return {f"QM_PUSH_POOL_{pool.upper().replace('-', '_')}": secret(text)}
