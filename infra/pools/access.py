"""What cloud pools share: provider credentials from the stack config and the worker's environment.

Credentials are read from `comfy-workshop:*` config (secrets stay Pulumi secrets); a key that is not
set is left out, and the dynamic provider then reads the matching environment variable when it runs.
The worker environment is split into plain values and secrets, so each kind can put the secrets
where its provider keeps them (an env file on the instance, Verda secrets, RunPod template env).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi

from infra.pools.base import PoolContext
from infra.secret import secret

PROJECT = "comfy-workshop"
SHARED_MODELS_DIR = "/mnt/models"
RUNPOD_MODELS_DIR = "/runpod-volume/models"  # RunPod mounts a network volume at /runpod-volume


def _config() -> pulumi.Config:
    return pulumi.Config(PROJECT)


def verda_connection() -> dict[str, pulumi.Input[str]]:
    """`verdaClientId` / `verdaClientSecret` (else VERDA_CLIENT_ID / VERDA_CLIENT_SECRET at run time)."""
    found: dict[str, pulumi.Input[str]] = {}
    client_id = _config().get("verdaClientId")
    client_secret = _config().get_secret("verdaClientSecret")
    if client_id:
        found["client_id"] = client_id
    if client_secret is not None:
        found["client_secret"] = client_secret
    return found


def verda_inference_key() -> pulumi.Output[str]:
    """The key the dispatcher calls Verda container endpoints with (`verdaInferenceKey`)."""
    return secret(_config().get_secret("verdaInferenceKey") or "")


def runpod_connection() -> dict[str, pulumi.Input[str]]:
    """`runpodApiKey` (else RUNPOD_API_KEY at run time)."""
    key = _config().get_secret("runpodApiKey")
    return {"api_key": key} if key is not None else {}


def runpod_api_key() -> pulumi.Output[str]:
    return secret(_config().get_secret("runpodApiKey") or "")


def registry_password() -> pulumi.Output[str]:
    return secret(_config().get_secret("registryPassword") or "")


@dataclass(frozen=True)
class WorkerEnv:
    """A worker container's settings: ``plain`` may be shown; ``secret`` never leaves Pulumi secrets."""

    plain: dict[str, pulumi.Input[str]] = field(default_factory=dict)
    secret: dict[str, pulumi.Input[str]] = field(default_factory=dict)

    def merged(self) -> dict[str, pulumi.Input[str]]:
        return {**self.plain, **{key: secret(value) for key, value in self.secret.items()}}


def worker_env(ctx: PoolContext, pool: str, provider: str, models_dir: str | None) -> WorkerEnv:
    """`WORKER_*` and `S3_*` for a cloud worker of ``pool``: where the queue and the files are."""
    plain: dict[str, pulumi.Input[str]] = {
        "WORKER_QUEUE_URL": ctx.queue_url,
        "WORKER_POOL": pool,
        "WORKER_PROVIDER": provider,
        "WORKER_DEVICE": "gpu",
    }
    secrets: dict[str, pulumi.Input[str]] = {"WORKER_TOKEN": ctx.worker_token}
    if models_dir:
        plain["WORKER_SHARED_MODELS_DIR"] = models_dir
    if ctx.user_files is not None:
        files = ctx.user_files
        plain["WORKER_STORAGE_URL"] = pulumi.Output.concat("s3://", files.bucket, "/files")
        plain["S3_ENDPOINT_URL"] = files.endpoint
        plain["S3_REGION"] = "auto"
        secrets["S3_ACCESS_KEY_ID"] = files.access_key_id
        secrets["S3_SECRET_ACCESS_KEY"] = files.secret_access_key
    return WorkerEnv(plain, secrets)
