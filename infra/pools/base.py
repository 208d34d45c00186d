"""The one interface every GPU pool kind implements (decision 6 in docs/decisions.md).

A kind is a config schema (a pydantic model whose ``kind`` literal is the discriminator) plus a
``GpuPool`` that turns one validated config into a ``PoolComponent``. The program knows nothing
else about a kind: it reads ``mode`` (pull: workers claim from the queue manager; push: the queue
manager sends jobs to the provider's endpoint), ``needs_registry`` (the worker image must be pushed
somewhere the provider pulls from) and ``required_secrets`` (checked before anything is declared).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Generic, TypeVar

import pulumi
from pydantic import Field, model_validator

from infra.schema import Label, Model


class PoolMode(StrEnum):
    PULL = "pull"
    PUSH = "push"


@dataclass(frozen=True)
class RequiredSecret:
    """A secret the organizer must set before `pulumi up`; ``env`` is the alternative variable."""

    key: str
    what: str
    env: str | None = None

    @property
    def command(self) -> str:
        return f"pulumi config set --secret '{self.key}' <{self.what}>"


class ModelsVolume(Model):
    """A provider-side shared filesystem that keeps the models between workshop days."""

    name: Label
    size_gb: int = Field(default=500, ge=50, le=10_000)


class RegistryConfig(Model):
    """Where the worker image is pushed for pools whose hosts pull it (`registryPassword` is secret)."""

    server: str = Field(min_length=3, examples=["ghcr.io"])
    repository: str = Field(min_length=3, examples=["ghcr.io/acme/comfy-worker"])
    username: str = Field(min_length=1)


class PoolConfigBase(Model):
    """What every pool has: a unique name (used in resource names, tokens and the admin page)."""

    name: Label
    kind: str


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
class StorageAccess:
    """S3-compatible access to one bucket (credentials are secret outputs)."""

    endpoint: pulumi.Input[str]
    bucket: pulumi.Input[str]
    access_key_id: pulumi.Input[str]
    secret_access_key: pulumi.Input[str]


class WorkerImages:
    """The stack's pushed GPU worker images: one build and push per variant (plain, with the RunPod
    handler), however many pools pull it. ``PoolSet`` shares one among its pools' contexts."""

    def __init__(self, parent: pulumi.Resource | None = None) -> None:
        self._parent = parent
        self._pushed: dict[tuple[str, bool], pulumi.Output[str]] = {}

    def reference(self, registry: RegistryConfig, *, with_runpod: bool = False) -> pulumi.Output[str]:
        from infra.pools.worker_image import image_reference, pushed_worker_image  # it needs this module

        key = (registry.repository, with_runpod)
        if key not in self._pushed:
            name = "worker-image-runpod" if with_runpod else "worker-image"
            image = pushed_worker_image(name, registry, self._parent, with_runpod=with_runpod)
            self._pushed[key] = image_reference(image, registry)
        return self._pushed[key]


@dataclass(frozen=True)
class PoolContext:
    """What the program hands every pool: where the queue is, its token, storage and network."""

    stack: str
    queue_url: pulumi.Input[str]
    callback_url: pulumi.Input[str]
    worker_token: pulumi.Input[str]
    tailnet_auth_key: pulumi.Input[str] | None = None
    models: StorageAccess | None = None
    user_files: StorageAccess | None = None
    registry: RegistryConfig | None = None
    docker_provider: pulumi.ProviderResource | None = None
    docker_network: pulumi.Input[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    images: WorkerImages = field(default_factory=WorkerImages)

    def registry_for(self, pool: str, kind: str) -> RegistryConfig:
        """The registry a pool pulls its worker image from (config validation requires it)."""
        if self.registry is None:
            raise ValueError(f"pool {pool}: {kind} needs `registry` to pull the worker image")
        return self.registry

    def worker_image(self, pool: str, kind: str, *, with_runpod: bool = False) -> pulumi.Output[str]:
        """The pushed GPU worker image a pool's hosts pull (``repository@digest``), built once per
        stack for every pool that asks for the same variant."""
        return self.images.reference(self.registry_for(pool, kind), with_runpod=with_runpod)


class PoolComponent(pulumi.ComponentResource):
    """A built pool. ``summary`` is exported and shown on the admin page; ``queue_manager_env``
    adds settings the queue manager needs to dispatch to this pool (push endpoints, API keys)."""

    summary: pulumi.Output[dict[str, Any]]
    queue_manager_env: dict[str, pulumi.Input[str]]

    def __init__(self, kind: str, name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        token = "comfy-workshop:pools:" + "".join(part.title() for part in kind.split("-"))
        super().__init__(token, name, None, opts)
        self.queue_manager_env = {}

    def finish(self, summary: dict[str, Any]) -> None:
        """Set the summary and register outputs: call last in a kind's constructor."""
        self.summary = pulumi.Output.from_input(summary)
        self.register_outputs({"summary": self.summary})


C = TypeVar("C", bound=PoolConfigBase)


class GpuPool(ABC, Generic[C]):
    """One pool kind. Subclasses set the class attributes and implement ``build``."""

    kind: ClassVar[str]
    mode: ClassVar[PoolMode]
    config_model: ClassVar[type[PoolConfigBase]]

    def needs_registry(self, config: C) -> bool:
        """Whether the worker image must be pushed to `registry` for this pool's hosts to pull."""
        return False

    def required_secrets(self, config: C) -> tuple[RequiredSecret, ...]:
        """Secrets that must be set for this pool (checked before any resource is declared)."""
        return ()

    def capacity(self, config: C) -> int:
        """How many jobs this pool can run at once at most (the dispatcher's in-flight bound)."""
        return 1

    @abstractmethod
    def build(self, config: C, ctx: PoolContext, opts: pulumi.ResourceOptions | None = None) -> PoolComponent:
        """Declare the pool's resources under one component named after ``config.name``."""

    def base_summary(self, config: C) -> dict[str, Any]:
        return {
            "name": config.name,
            "kind": self.kind,
            "mode": self.mode.value,
            "capacity": self.capacity(config),
        }
