"""The one interface every GPU pool kind implements (decision 6 in docs/decisions.md).

A kind is a config schema (a pydantic model whose ``kind`` literal is the discriminator, written
once there) plus a ``GpuPool`` that turns one validated config into a ``PoolComponent``. The program
knows nothing else about a kind: it reads ``mode`` (pull: workers claim from the queue manager; push:
the queue manager sends jobs to the provider's endpoint), ``needs_registry`` (the worker image must
be pushed somewhere the provider pulls from) and ``credentials`` (checked before anything is declared).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, TypeVar

import pulumi

from infra.credential_registry import Credential
from infra.pools.access import push_pool_env
from infra.pools.base import PoolConfigBase, PoolMode, SharedVolume
from infra.pools.context import PoolContext


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
    """One pool kind. Subclasses set ``mode`` and ``config_model`` and implement ``build``."""

    mode: ClassVar[PoolMode]
    config_model: ClassVar[type[PoolConfigBase]]

    @property
    def kind(self) -> str:
        """The config model's ``kind`` literal: the discriminator is the one place it is written."""
        return str(self.config_model.model_fields["kind"].default)

    def needs_registry(self, config: C) -> bool:
        """Whether the worker image must be pushed to `registry` for this pool's hosts to pull."""
        return False

    def credentials(self, config: C) -> tuple[Credential, ...]:
        """Credentials that must be given for this pool (checked before any resource is declared)."""
        return ()

    def shared_volume(self, config: C) -> SharedVolume | None:
        """The models volume this pool mounts at its provider, if any (checked across pools in the
        stack config, declared once for all of them)."""
        return None

    def host_names(self, config: C, stack: str) -> tuple[str, ...]:
        """The names this pool gives objects at its provider that must be host names (DNS labels:
        an instance's hostname, a container deployment's name), checked before anything is declared."""
        return ()

    def names(self, config: C, stack: str, workshop: str) -> tuple[str, ...]:
        """Every name this pool gives objects at its provider (``host_names``, its models volume's, and
        the tagged names of ``base.owned_name``, ``workshop`` its public URL): none may be longer than
        ``NAME_LIMIT``. A kind's own names are added to these."""
        volume = self.shared_volume(config)
        return (*self.host_names(config, stack), *((volume.name,) if volume else ()))

    def capacity(self, config: C) -> int:
        """How many jobs this pool can run at once at most (the dispatcher's in-flight bound)."""
        return 1

    @abstractmethod
    def build(self, config: C, ctx: PoolContext, opts: pulumi.ResourceOptions | None = None) -> PoolComponent:
        """Declare the pool's resources under one component named after ``config.name``."""

    def component(self, config: C, opts: pulumi.ResourceOptions | None) -> PoolComponent:
        return PoolComponent(self.kind, config.name, opts)

    def base_summary(self, config: C) -> dict[str, Any]:
        return {
            "name": config.name,
            "kind": self.kind,
            "mode": self.mode.value,
            "capacity": self.capacity(config),
        }

    def dispatch_env(self, config: C, endpoint: dict[str, pulumi.Input[Any]]) -> dict[str, pulumi.Input[str]]:
        """A push pool's ``QM_PUSH_POOL_<NAME>``: how the dispatcher reaches ``endpoint`` (style, url,
        api_key, ...), and how many jobs it may have there at once (``capacity``)."""
        return push_pool_env(config.name, {**endpoint, "capacity": self.capacity(config)})
