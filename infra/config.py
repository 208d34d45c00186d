"""The stack configuration as typed models, one per stack role, validated before any resource exists.

`load_config()` reads every `comfy-workshop:*` key, picks the role (`comfy-workshop:role` or the
stack name), validates with pydantic and checks required secrets are set. Every problem found is
reported at once as a `ConfigError` naming the key, the bad value and the fix.
"""

from __future__ import annotations

import json
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from infra.comfyui import ComfyUIConfig
from infra.pools import LOCAL_KINDS, PoolConfig, kind_of
from infra.pools.base import RegistryConfig, SharedVolume
from infra.pools.local_gpu import LocalGpuConfig
from infra.schema import BucketName, Domain, Label, Model, TailscaleTag, one_of, unique_names
from services.worker.manifest import ModelFile as ManifestEntry
from services.worker.manifest import manifest_problem

HETZNER_LOCATIONS = ("fsn1", "nbg1", "hel1", "ash", "hil", "sin")
# Shared-vCPU Intel (cx) and Arm (cax) servers exist in the EU locations only.
EU_ONLY_TYPES = ("cx", "cax")
EU_LOCATIONS = ("fsn1", "nbg1", "hel1")
SERVER_IMAGES = ("ubuntu-24.04", "ubuntu-22.04", "debian-12")
R2_LOCATION_HINTS = ("apac", "eeur", "enam", "weur", "wnam", "oc")
MAX_PARTICIPANTS = 200


class Role(StrEnum):
    VAULT = "vault"
    WORKSHOP = "workshop"
    LOCAL = "local"


def _participant_names(value: object) -> object:
    """`participants: 20` means user01..user20; a list gives the names themselves."""
    if isinstance(value, bool) or not isinstance(value, int):
        return value
    if not 1 <= value <= MAX_PARTICIPANTS:
        raise ValueError(
            f"a workshop has 1 to {MAX_PARTICIPANTS} participants; fix: set a count in that range "
            "or list the participants' names"
        )
    width = max(2, len(str(value)))
    return [f"user{index:0{width}d}" for index in range(1, value + 1)]


Participants = Annotated[
    list[Label], BeforeValidator(_participant_names), Field(min_length=1, max_length=MAX_PARTICIPANTS)
]


class ModelFile(Model, ManifestEntry):
    """One model file workers must hold: the worker's manifest entry (its rules, services/worker/manifest.py),
    as the stack config writes it (camelCase keys, no unknown ones)."""


MAX_MANIFEST_BYTES = 120_000
"""The models manifest as JSON, at most: Linux holds one environment variable to 128 KiB with its name."""


def manifest_json(models: list[ModelFile]) -> str | None:
    """The manifest workers read from `WORKER_MODELS_MANIFEST`, or None when no model is listed."""
    if not models:
        return None
    return json.dumps({"models": [model.model_dump(exclude_none=True) for model in models]})


class QueuePolicy(Model):
    """How jobs are ordered and limited (passed to the queue manager as `QM_*` settings)."""

    scheduling: Literal["fifo", "fair", "priority"] = "fair"
    max_queued_per_user: int = Field(default=20, ge=1, le=1000)
    max_running_per_user: int = Field(default=0, ge=0, le=64, description="0 = no limit")
    lease_seconds: int = Field(default=20, ge=5, le=600)
    max_attempts: int = Field(default=3, ge=1, le=10)
    retention_hours: int = Field(default=72, ge=1, le=24 * 90)
    max_upload_mb: int = Field(default=100, ge=1, le=2048)
    max_files_mb_per_user: int = Field(
        default=10 * 1024, ge=1, le=1024 * 1024, description="what one participant's folder may hold in all"
    )
    drain_timeout_seconds: int = Field(default=600, ge=0, le=3600, description="evening destroy waits")


class VpsConfig(Model):
    """The Hetzner server that runs nginx, the queue manager and Redis."""

    server_type: str = Field(default="cx33", pattern=r"^(cx|cpx|cax|ccx)\d{2}$")
    location: str = "fsn1"
    image: str = "ubuntu-24.04"
    hostname: Label = "comfy-workshop"
    data_volume_gb: int | None = Field(default=None, ge=10, le=10_240)
    ssh_allow_list: list[IPv4Network | IPv6Network] = Field(default_factory=list)
    web_from_cloudflare_only: bool = Field(
        default=True, description="ports 80/443 accept only Cloudflare's address ranges"
    )

    @field_validator("location")
    @classmethod
    def _location(cls, value: str) -> str:
        return one_of(value, HETZNER_LOCATIONS, "Hetzner location")

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        return one_of(value, SERVER_IMAGES, "server image")

    @model_validator(mode="after")
    def _type_offered_here(self) -> VpsConfig:
        family = self.server_type.rstrip("0123456789")
        if family in EU_ONLY_TYPES and self.location not in EU_LOCATIONS:
            raise ValueError(
                f"Hetzner does not offer {family} servers ({self.server_type}) in {self.location}; "
                f"fix: use a cpx or ccx type there (e.g. cpx31), or the location {' or '.join(EU_LOCATIONS)}"
            )
        return self


class TailscaleConfig(Model):
    """Tags of the VPS and the GPU nodes, and who owns them in the tailnet policy."""

    vps_tag: TailscaleTag = "tag:comfy-vps"
    gpu_tag: TailscaleTag = "tag:comfy-gpu"
    tag_owners: list[str] = Field(default_factory=lambda: ["autogroup:admin"], min_length=1)
    manage_policy: bool = Field(default=True, description="merge our rules into the tailnet policy file")
    ssh_from: list[str] = Field(
        default_factory=list, description="more tailnet sources allowed to SSH to the VPS, e.g. tag:ci"
    )

    @model_validator(mode="after")
    def _distinct(self) -> TailscaleConfig:
        if self.vps_tag == self.gpu_tag:
            raise ValueError(
                f"vpsTag and gpuTag are both {self.vps_tag!r}: GPU nodes would be the VPS; "
                "fix: give them different tags"
            )
        return self


class Bucket(Model):
    name: BucketName
    location_hint: str | None = None
    jurisdiction: Literal["default", "eu"] = "default"

    @field_validator("location_hint")
    @classmethod
    def _hint(cls, value: str | None) -> str | None:
        return None if value is None else one_of(value, R2_LOCATION_HINTS, "R2 location hint")


class R2Config(Model):
    models: Bucket = Bucket(name="comfy-models", location_hint="oc")
    cache: Bucket = Bucket(name="comfy-cache", jurisdiction="eu")
    user_files: Bucket = Bucket(name="comfy-user-files", jurisdiction="eu")
    abort_multipart_days: int = Field(default=7, ge=1, le=30)
    cache_expiry_days: int = Field(default=30, ge=1, le=365)

    @model_validator(mode="after")
    def _distinct(self) -> R2Config:
        unique_names([self.models.name, self.cache.name, self.user_files.name], "bucket name")
        return self


class _People(Model):
    """Who logs in: the participants and the admin, each name once (the queue manager refuses to
    start otherwise, which an `up` would find only after the server is up)."""

    participants: Participants
    admin_user: Label = "admin"

    @field_validator("participants")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        unique_names(value, "participant")
        return value

    @field_validator("admin_user")
    @classmethod
    def _not_a_participant(cls, value: str, info: ValidationInfo) -> str:
        if value in info.data.get("participants", ()):
            raise ValueError(
                f"{value!r} is also a participant's name; fix: rename that participant, or set "
                "adminUser to a name no participant has"
            )
        return value


class VaultConfig(_People):
    role: Literal["vault"] = "vault"
    domain: Domain
    cloudflare_account_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    r2: R2Config = R2Config()
    certificate_days: Literal[7, 30, 90, 365, 730, 1095, 5475] = 5475


class _WithPools(Model):
    pools: list[PoolConfig] = Field(min_length=1)
    models: list[ModelFile] = Field(default_factory=list)  # at most MAX_MODELS: manifest_problem
    comfyui: ComfyUIConfig = ComfyUIConfig()  # the workers' ComfyUI and the frontend served with it

    @field_validator("models")
    @classmethod
    def _one_entry_per_file(cls, value: list[ModelFile]) -> list[ModelFile]:
        problem = manifest_problem([model.path for model in value])  # the workers' own rule
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("models")
    @classmethod
    def _fits_one_variable(cls, value: list[ModelFile]) -> list[ModelFile]:
        """The workers get the manifest in one environment variable, which Linux caps (a container's
        start fails with 'argument list too long' past it)."""
        size = len(manifest_json(value) or "")
        if size > MAX_MANIFEST_BYTES:
            raise ValueError(
                f"the {len(value)} models take {size:,} bytes as the workers' WORKER_MODELS_MANIFEST_JSON, "
                f"more than the {MAX_MANIFEST_BYTES:,} one environment variable may hold (every GPU "
                "worker would fail to start); fix: shorten the models' paths and sources (keys in the "
                "models bucket), or list fewer models"
            )
        return value

    @field_validator("models")
    @classmethod
    def _models_fit_their_volumes(cls, value: list[ModelFile], info: ValidationInfo) -> list[ModelFile]:
        """A shared models volume holds every model the manifest lists (pools are checked first)."""
        total = sum(model.size for model in value)
        for pool in info.data.get("pools", []):
            volume = kind_of(pool).shared_volume(pool)
            if volume is not None and total > volume.size_gb * 10**9:
                raise ValueError(
                    f"the models listed take {total / 10**9:.1f} GB, but pool {pool.name}'s models volume "
                    f"{volume.name!r} holds {volume.size_gb} GB; fix: set modelsVolume.sizeGb of pool "
                    f"{pool.name} to {-(-total // 10**9)} or more, or list fewer models"
                )
        return value

    @field_validator("pools")
    @classmethod
    def _unique_pools(cls, value: list[PoolConfig]) -> list[PoolConfig]:
        unique_names([pool.name for pool in value], "pool name")
        return value

    @field_validator("pools")
    @classmethod
    def _shared_volumes_agree(cls, value: list[PoolConfig]) -> list[PoolConfig]:
        """Pools naming one models volume share one resource, so one size and one keep."""
        first: dict[tuple[str, str, str], tuple[str, SharedVolume]] = {}
        for pool in value:
            volume = kind_of(pool).shared_volume(pool)
            if volume is None:
                continue
            name, seen = first.setdefault(volume.key, (pool.name, volume))
            for key, what, theirs, ours, unit in (
                ("sizeGb", "sizes", seen.size_gb, volume.size_gb, " GB"),
                ("keep", "keep settings", seen.keep, volume.keep, ""),
            ):
                if theirs != ours:
                    raise ValueError(
                        f"pools {name} and {pool.name} share the models volume {volume.name!r} "
                        f"({volume.place}) with different {what} ({theirs} and {ours}{unit}); "
                        f"fix: give both the same modelsVolume.{key}"
                    )
        return value


class WorkshopConfig(_WithPools):
    role: Literal["workshop"] = "workshop"
    domain: Domain
    vault_stack: str = Field(pattern=r"^([A-Za-z0-9_.-]+/){0,2}[A-Za-z0-9_.-]+$")
    cloudflare_zone: Domain | None = None
    vps: VpsConfig = VpsConfig()
    queue: QueuePolicy = QueuePolicy()
    tailscale: TailscaleConfig = TailscaleConfig()
    registry: RegistryConfig | None = None

    @property
    def public_url(self) -> str:
        """The queue manager's public URL: participants' browsers, push pools' callbacks and containers
        (and the workshop's tag in the names of its objects at the providers)."""
        return f"https://{self.domain}"

    @field_validator("pools")
    @classmethod
    def _no_pool_on_the_deploying_machine(cls, value: list[PoolConfig]) -> list[PoolConfig]:
        """A local kind's workers start on the Docker its pool names, by default the one of the
        machine running `pulumi up` (a laptop, the deploy workflow's runner): never in this stack."""
        for index, pool in enumerate(value):
            if pool.kind == "local-cpu":
                raise ValueError(
                    f"pool {pool.name} (local-cpu) runs only in the local stack; fix: use kind "
                    "verda-instance, verda-serverless, runpod-serverless, or local-gpu with a dockerHost"
                )
            if isinstance(pool, LocalGpuConfig) and pool.docker_host is None:
                raise ValueError(
                    f"pool {pool.name} (local-gpu) names no dockerHost, so its workers would start on "
                    "whichever machine runs pulumi up; fix: pulumi config set --path "
                    f"'comfy-workshop:pools[{index}].dockerHost' ssh://root@gpu-box (your GPU machine)"
                )
        return value

    @model_validator(mode="after")
    def _registry_when_needed(self) -> WorkshopConfig:
        needing = [pool.name for pool in self.pools if kind_of(pool).needs_registry(pool)]
        if needing and self.registry is None:
            raise ValueError(
                f"pools {', '.join(needing)} pull the worker image from a registry but `registry` is not "
                "set; fix: add registry: {server, repository, username} and "
                "`pulumi config set --secret comfy-workshop:registryPassword <token>`"
            )
        return self

    @property
    def zone(self) -> str:
        return self.cloudflare_zone or ".".join(self.domain.split(".")[-2:])


class LocalConfig(_WithPools, _People):
    role: Literal["local"] = "local"
    participants: Participants = Field(default_factory=lambda: ["alice", "bob"])
    queue: QueuePolicy = QueuePolicy()
    http_port: int = Field(default=8080, ge=1024, le=65535)
    models_dir: str | None = Field(
        default=None, pattern=r"^/", description="host folder with ComfyUI model folders, mounted read-only"
    )

    @model_validator(mode="after")
    def _models_have_a_source(self) -> LocalConfig:
        if self.models and self.models_dir is None:
            raise ValueError(
                "models are listed but the local stack has no models bucket; fix: set modelsDir to the "
                "folder that holds them (ComfyUI's layout: checkpoints/, loras/, ...)"
            )
        return self

    @field_validator("pools")
    @classmethod
    def _local_only(cls, value: list[PoolConfig]) -> list[PoolConfig]:
        remote = [f"{pool.name} ({pool.kind})" for pool in value if pool.kind not in LOCAL_KINDS]
        if remote:
            raise ValueError(
                f"the local stack runs only on this machine's Docker, but {', '.join(remote)} is a cloud "
                f"pool; fix: use kind {' or '.join(LOCAL_KINDS)} here, cloud pools in the workshop stack"
            )
        return value


StackConfig = VaultConfig | WorkshopConfig | LocalConfig
MODELS: dict[Role, type[VaultConfig] | type[WorkshopConfig] | type[LocalConfig]] = {
    Role.VAULT: VaultConfig,
    Role.WORKSHOP: WorkshopConfig,
    Role.LOCAL: LocalConfig,
}
