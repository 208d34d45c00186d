"""What pool kinds are configured with: the config base models and plain value types.

Nothing here imports another pool module, so every other module of the package may import it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

import pulumi
from pydantic import BeforeValidator, Field, model_validator

from infra.schema import Label, Model
from services.queue_manager.settings import MAX_JOB_SECONDS


def remote_name(stack: str, pool: str) -> str:
    """The deterministic name of a pool's objects at the provider: the providers look them up by it."""
    return f"cw-{stack}-{pool}"


REGISTRY_LOGIN = "registry"
"""What a pool's registry login is called in its tagged name (``owned_name``)."""
NAME_LIMIT = 63
"""The longest name the program gives an object at a provider. A Verda instance's host name and a
deployment's name are DNS labels (63); neither Verda's SDK and API docs nor RunPod's say how long a
secret, login, SSH key, startup script, template or endpoint name may be, so the strictest rule seen
holds for every name (checked at preview, `infra.loading`)."""


def owned_name(stack: str, pool: str, what: str, workshop: str) -> str:
    """The name of a pool's object that shows nothing of who made it at the provider (a secret or a
    login, whose value is never shown back; the SSH key and startup script, made anew when the state is
    lost): ``remote_name``, what it is, and a tag of the workshop (a hash of ``workshop``, its public
    URL). Another workshop with the same stack and pool names never names one alike, so an object found
    under it is this workshop's: a leftover of a failed create or of a lost state, taken over."""
    return f"{remote_name(stack, pool)}-{what}-{workshop_tag(workshop)}"


def workshop_tag(workshop: str) -> str:
    """The tag of the workshop whose public URL is ``workshop``: 8 hex digits no other workshop writes
    (in the names of ``owned_name``, and in the description of its Verda instances)."""
    return hashlib.sha256(workshop.encode()).hexdigest()[:8]


JOB_SECONDS_RANGE = (60, 24 * 3600)


def _job_seconds(value: object) -> object:
    """A pool's ``maxJobSeconds``: whole seconds, from a minute to a day."""
    low, high = JOB_SECONDS_RANGE
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)  # as `pulumi config set` may store it
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(
            f"a pool's maximum job time is whole seconds from {low} to {high} (a day); fix: set e.g. "
            f"{MAX_JOB_SECONDS:g} (an hour, room for long video jobs), or more for longer workflows"
        )
    return value


class PoolMode(StrEnum):
    PULL = "pull"
    PUSH = "push"


class ModelsVolume(Model):
    """A provider-side shared filesystem that keeps the models between workshop days."""

    name: Label
    size_gb: int = Field(default=500, ge=50, le=10_000)
    keep: bool = Field(
        default=True,
        description="kept by `pulumi destroy` (billed while it exists, its models not downloaded again the "
        "next day); set false and run `pulumi up` before the last destroy to delete it with the stack",
    )


class RegistryConfig(Model):
    """Where the worker image is pushed for pools whose hosts pull it (`registryPassword` is secret)."""

    server: str = Field(min_length=3, examples=["ghcr.io"])
    repository: str = Field(min_length=3, examples=["ghcr.io/acme/comfy-worker"])
    username: str = Field(min_length=1)


class PoolConfigBase(Model):
    """What every pool has: a unique name (used in resource names, tokens and the admin page), and
    its worker token's generation: raise it to replace that pool's token on the next ``pulumi up``."""

    name: Label
    kind: str
    warmup_workflow: dict[str, Any] | None = Field(
        default=None,
        description="API-format ComfyUI graph each worker of the pool runs before it reports ready, e.g. "
        "one step with the pool's checkpoint so the first participant's job does not load it",
    )
    max_job_seconds: Annotated[int, BeforeValidator(_job_seconds)] = Field(
        default=int(MAX_JOB_SECONDS),
        description="the longest one job may hold one of the pool's GPUs (60 s to a day; an hour by default, "
        "room for long video jobs): the queue manager stops a job past it (a node that hangs) and fails "
        "it, so the GPU goes back to the queue",
    )
    token_generation: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="raise by one to rotate this pool's worker token (the old one is refused after the up)",
    )


class ReplicaRange(Model):
    """Autoscaling bounds for serverless kinds."""

    min_replicas: int = Field(default=0, ge=0, le=100)
    max_replicas: int = Field(default=4, ge=1, le=100)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> ReplicaRange:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"minReplicas ({self.min_replicas}) is greater than maxReplicas ({self.max_replicas}); "
                "fix: lower minReplicas or raise maxReplicas"
            )
        return self


@dataclass(frozen=True)
class SharedVolume:
    """A provider-side models volume a pool mounts: pools naming the same one (same provider, name
    and place) share it, so they must agree on its size."""

    provider: str
    name: str
    place: str  # the Verda location or the RunPod data center
    size_gb: int
    keep: bool = True  # through `pulumi destroy` (``retain_on_delete``)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.provider, self.name, self.place)


@dataclass(frozen=True)
class StorageAccess:
    """S3-compatible access to one bucket (credentials are secret outputs)."""

    endpoint: pulumi.Input[str]
    bucket: pulumi.Input[str]
    access_key_id: pulumi.Input[str]
    secret_access_key: pulumi.Input[str]
