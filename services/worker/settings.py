"""The worker's configuration: one ``WorkerSettings`` read from ``WORKER_*`` environment variables.

Every field's description documents its variable (``WORKER_`` + upper-case field name). List
values (``WORKER_COMFYUI_COMMAND``, ``WORKER_COMFYUI_ARGS``) are JSON arrays.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_worker_id() -> str:
    return socket.gethostname().replace("_", "-")[:100] or "worker"


class WorkerSettings(BaseSettings):
    """Worker agent settings; each field is the env var ``WORKER_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="WORKER_", extra="ignore", populate_by_name=True)

    queue_url: str = Field(
        default="http://127.0.0.1:8000", description="WORKER_QUEUE_URL: the queue manager's base URL"
    )
    token: SecretStr = Field(
        default=SecretStr(""), description="WORKER_TOKEN: this pool's bearer token for the worker API"
    )
    pool: str = Field(default="local", description="WORKER_POOL: the pool this worker serves")
    provider: str = Field(
        default="local", description="WORKER_PROVIDER: verda | verda-serverless | runpod | local"
    )
    worker_id: str = Field(
        default_factory=_default_worker_id,
        validation_alias=AliasChoices("WORKER_ID", "worker_id"),
        description="WORKER_ID: this worker's unique name (default: the hostname)",
    )
    device: str = Field(default="gpu", description="WORKER_DEVICE: gpu | cpu (cpu adds ComfyUI's --cpu)")
    comfyui_url: str | None = Field(
        default=None, description="WORKER_COMFYUI_URL: attach to a running ComfyUI instead of starting one"
    )
    comfyui_dir: Path = Field(
        default=Path("/opt/ComfyUI"), description="WORKER_COMFYUI_DIR: ComfyUI checkout (holds main.py)"
    )
    comfyui_command: list[str] = Field(
        default_factory=list,
        description='WORKER_COMFYUI_COMMAND: JSON launcher replacing ["python", "<dir>/main.py"]',
    )
    comfyui_args: list[str] = Field(
        default_factory=list, description='WORKER_COMFYUI_ARGS: extra ComfyUI flags, e.g. ["--cpu"]'
    )
    comfyui_port: int = Field(default=8188, description="WORKER_COMFYUI_PORT: port of the child ComfyUI")
    data_dir: Path = Field(
        default=Path("/var/lib/comfy-worker"),
        description="WORKER_DATA_DIR: ComfyUI's input/, output/ and temp/ folders live here",
    )
    storage_url: str = Field(
        default="file:///var/lib/comfy-workshop/files",
        description="WORKER_STORAGE_URL: user-file storage, file:///path or s3://bucket[/prefix] "
        "(S3 endpoint and keys in S3_ENDPOINT_URL, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY)",
    )
    models_manifest: Path | None = Field(
        default=None, description="WORKER_MODELS_MANIFEST: YAML/JSON list of model files to hold"
    )
    models_manifest_json: str | None = Field(
        default=None, description="WORKER_MODELS_MANIFEST_JSON: the manifest itself (cloud pools get it so)"
    )
    models_s3_endpoint_url: str | None = Field(
        default=None, description="WORKER_MODELS_S3_ENDPOINT_URL: the models bucket's S3 endpoint"
    )
    models_s3_access_key_id: SecretStr | None = Field(
        default=None,
        description="WORKER_MODELS_S3_ACCESS_KEY_ID: read-only key of the models bucket (needed for an "
        "s3:// WORKER_MODELS_URL: the files' S3_* key is never used for it)",
    )
    models_s3_secret_access_key: SecretStr | None = Field(
        default=None, description="WORKER_MODELS_S3_SECRET_ACCESS_KEY: its secret"
    )
    models_lock_stale_seconds: float = Field(
        default=60.0,
        gt=0,
        description="WORKER_MODELS_LOCK_STALE_SECONDS: a shared volume's sync lock not renewed for this "
        "long belongs to a sync that died and is taken over",
    )
    models_url: str | None = Field(
        default=None, description="WORKER_MODELS_URL: the models vault, e.g. s3://comfy-models"
    )
    models_dir: Path = Field(
        default=Path("/var/lib/comfy-worker/models"),
        description="WORKER_MODELS_DIR: local disk the models are synced to",
    )
    shared_models_dir: Path | None = Field(
        default=None,
        description="WORKER_SHARED_MODELS_DIR: shared filesystem / network volume the models are synced "
        "to once (under a lock on the volume) and read from (extra_model_paths.yaml); read-only: checked",
    )
    warmup: bool = Field(
        default=True, description="WORKER_WARMUP: run a tiny workflow before reporting ready"
    )
    warmup_workflow: dict[str, Any] | None = Field(
        default=None,
        description="WORKER_WARMUP_WORKFLOW: the pool's own warm-up graph (JSON, API format) instead of "
        "the built-in no-model one, e.g. one step with its checkpoint",
    )
    ready_timeout: float = Field(
        default=300.0, gt=0, description="WORKER_READY_TIMEOUT: seconds ComfyUI may take to answer"
    )
    comfyui_timeout: float = Field(
        default=30.0,
        gt=0,
        description="WORKER_COMFYUI_TIMEOUT: seconds ComfyUI may take to answer a call; one that does "
        "not is silent: its job is given back, and a child ComfyUI silent this long again is restarted",
    )
    interrupt_grace_seconds: float = Field(
        default=60.0,
        gt=0,
        description="WORKER_INTERRUPT_GRACE_SECONDS: how long a job's node may run on after ComfyUI is "
        "interrupted (her cancel, or the lease's end at the pool's maximum job time); a node that never "
        "checks for an interrupt (a hang) has its child ComfyUI restarted then, so the GPU is free again "
        "(an attached ComfyUI: the worker takes no job until it holds no prompt)",
    )
    ws_silence_seconds: float = Field(
        default=5.0, gt=0, description="WORKER_WS_SILENCE_SECONDS: socket silence before polling /history"
    )
    poll_seconds: float = Field(default=1.0, gt=0, description="WORKER_POLL_SECONDS: /history poll period")
    progress_per_second: float = Field(
        default=10.0,
        gt=0,
        description="WORKER_PROGRESS_PER_SECOND: progress events forwarded per job (after a burst of 2)",
    )
    previews_per_second: float = Field(
        default=2.0,
        gt=0,
        description="WORKER_PREVIEWS_PER_SECOND: preview images forwarded per job (after a burst of 2)",
    )
    storage_retry_seconds: float = Field(
        default=300.0,
        ge=0,
        description="WORKER_STORAGE_RETRY_SECONDS: how long a job's files wait for a file store that does "
        "not answer (its inputs before it runs; its outputs after, while the next jobs run) before the "
        "job fails and is retried; and how long the models sync waits for the models bucket before it "
        "fails naming the models still missing",
    )
    shutdown_grace_seconds: float = Field(
        default=60.0, ge=0, description="WORKER_SHUTDOWN_GRACE_SECONDS: time to finish a job on SIGTERM"
    )
    retry_seconds: float = Field(
        default=120.0,
        gt=0,
        description="WORKER_RETRY_SECONDS: how long calls to the queue manager are retried",
    )
    push_port: int = Field(default=8080, description="WORKER_PUSH_PORT: port of the push HTTP handler")
    push_host: str = Field(
        default="0.0.0.0", description="WORKER_PUSH_HOST: address the push HTTP handler listens on"
    )

    @model_validator(mode="after")
    def _check(self) -> WorkerSettings:
        has_manifest = self.models_manifest is not None or bool(self.models_manifest_json)
        if has_manifest and self.models_url is None and self.shared_models_dir is None:
            raise ValueError(
                "WORKER_MODELS_MANIFEST(_JSON) is set but there is nowhere to get models from: set "
                "WORKER_MODELS_URL (s3://bucket of the models vault) or WORKER_SHARED_MODELS_DIR"
            )
        keyed = all(
            secret is not None and secret.get_secret_value()
            for secret in (self.models_s3_access_key_id, self.models_s3_secret_access_key)
        )
        if (self.models_url or "").startswith("s3://") and not keyed:
            raise ValueError(
                f"WORKER_MODELS_URL is the bucket {self.models_url} but WORKER_MODELS_S3_ACCESS_KEY_ID and "
                "WORKER_MODELS_S3_SECRET_ACCESS_KEY are not both set: set them (and "
                "WORKER_MODELS_S3_ENDPOINT_URL) to the models bucket's read-only key, the vault stack's "
                "models-read credentials. The worker never reads the models with the files' key (S3_*)"
            )
        return self

    @property
    def launcher(self) -> list[str]:
        return self.comfyui_command or ["python", str(self.comfyui_dir / "main.py")]

    @property
    def comfyui_flags(self) -> list[str]:
        cpu = ["--cpu"] if self.device == "cpu" and "--cpu" not in self.comfyui_args else []
        return [*cpu, *self.comfyui_args]
