"""What the program hands every pool: where the queue is, the pool's token, storage and network."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pulumi

from infra.comfyui import ComfyUIConfig
from infra.pools.base import PoolMode, RegistryConfig, SharedVolume, StorageAccess, owned_name, remote_name
from infra.pools.worker_image import WorkerImages

R = TypeVar("R", bound=pulumi.Resource)


class SharedVolumes:
    """Models volumes declared once per stack: pools naming the same volume share one resource (the
    engine would otherwise create two at once, both kept by ``retain_on_delete``). ``configured`` is
    every volume the stack config names: a volume of one name in several places is no move."""

    def __init__(
        self, parent: pulumi.Resource | None = None, configured: Iterable[SharedVolume | None] = ()
    ) -> None:
        self._parent = parent
        self._declared: dict[Hashable, pulumi.Resource] = {}
        self._configured = [volume for volume in configured if volume is not None]

    def once(
        self,
        volume: SharedVolume,
        pool: tuple[str, pulumi.Resource],
        declare: Callable[[pulumi.ResourceOptions, dict[str, Any]], R],
    ) -> R:
        """The resource of ``volume`` (declared by ``declare`` the first time; the stack config made
        sure every pool naming it gives the same size and keep). ``pool`` is the asking pool's name and
        component. ``declare`` adds to its inputs what the provider's check reads of the rest of the
        stack: ``keep``, and ``also_at``, the other places the config puts a volume of that name."""
        name, component = pool
        if volume.key in self._declared:
            return self._declared[volume.key]  # type: ignore[return-value]
        # Its first pool declared it as `<pool>-models` before volumes were shared: same resource.
        old = pulumi.Alias(name=f"{name}-models", parent=component)
        opts = pulumi.ResourceOptions(parent=self._parent, retain_on_delete=volume.keep, aliases=[old])
        places = {v.place for v in self._configured if (v.provider, v.name) == (volume.provider, volume.name)}
        resource = declare(opts, {"keep": volume.keep, "also_at": sorted(places - {volume.place})})
        self._declared[volume.key] = resource
        return resource


@dataclass(frozen=True)
class PoolContext:
    """``files_volume``, ``models_dir`` exist on the local stack only (workers on its own Docker);
    ``models_manifest`` is the JSON workers read from `WORKER_MODELS_MANIFEST` when models are listed.
    ``queue_url`` is the worker API inside the tailnet (pull workers); ``public_url`` the queue
    manager's public URL (`QM_PUBLIC_URL`), the only one a serverless container can reach."""

    stack: str
    queue_url: pulumi.Input[str]
    worker_token: pulumi.Input[str]
    public_url: str | None = None
    tailnet_auth_key: pulumi.Input[str] | None = None
    models: StorageAccess | None = None
    user_files: StorageAccess | None = None
    registry: RegistryConfig | None = None
    docker_provider: pulumi.ProviderResource | None = None
    docker_network: pulumi.Input[str] | None = None
    files_volume: pulumi.Input[str] | None = None
    models_dir: str | None = None
    models_manifest: str | None = None
    warmup_workflow: str | None = None
    images: WorkerImages = field(default_factory=WorkerImages)
    shared: SharedVolumes = field(default_factory=SharedVolumes)
    comfyui: ComfyUIConfig = field(default_factory=ComfyUIConfig)  # what the worker image runs
    # What a pull pool's machines start after: the morning's restore step (its workers claim at once)
    start_after: pulumi.Input[pulumi.Resource] | None = None

    def starting_after(self, opts: pulumi.ResourceOptions) -> pulumi.ResourceOptions:
        """``opts`` for a resource that runs workers: it waits for ``start_after``."""
        if self.start_after is None:
            return opts
        return pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[self.start_after]))

    def queue_url_for(self, pool: str, mode: PoolMode) -> pulumi.Input[str]:
        """Where ``pool``'s workers reach the queue manager: pull workers through the tailnet, push
        containers (not on the tailnet) at its public URL, where their leases' reply_url points
        too (the pool token guards the worker API on both)."""
        if mode is PoolMode.PULL:
            return self.queue_url
        if self.public_url is None:
            raise ValueError(
                f"pool {pool}: a push pool's containers reach the queue manager at its public URL, and "
                "this stack has none: run push pools in the workshop stack"
            )
        return self.public_url

    def registry_for(self, pool: str, kind: str) -> RegistryConfig:
        """The registry a pool pulls its worker image from (config validation requires it)."""
        if self.registry is None:
            raise ValueError(f"pool {pool}: {kind} needs `registry` to pull the worker image")
        return self.registry

    def worker_image(self, pool: str, kind: str, *, with_runpod: bool = False) -> pulumi.Output[str]:
        """The pushed GPU worker image a pool's hosts pull (``repository@digest``), built once per
        stack for every pool that asks for the same variant."""
        return self.images.reference(self.registry_for(pool, kind), self.comfyui, with_runpod=with_runpod)

    def remote_name(self, pool: str) -> str:
        """The deterministic name of a pool's objects at the provider: the providers look them up by it."""
        return remote_name(self.stack, pool)

    def owned_name(self, pool: str, what: str) -> str:
        """The name of a pool's object that shows nothing of who made it (``base.owned_name``): tagged
        with the workshop's public URL (the stack's name where it has none: the local stack)."""
        return owned_name(self.stack, pool, what, self.workshop)

    @property
    def workshop(self) -> str:
        """What tags this workshop's objects (``base.workshop_tag``): its public URL (the stack's name
        where it has none: the local stack)."""
        return self.public_url or self.stack
