"""GPUs on a Docker host the organizer owns: a pull pool of worker containers with `--gpus`."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import pulumi
import pulumi_docker as docker
from pydantic import Field

from infra.pools.base import PoolConfigBase, PoolMode
from infra.pools.context import PoolContext
from infra.pools.kind import GpuPool, PoolComponent
from infra.pools.local_workers import LocalWorkers, local_worker_containers


class LocalGpuConfig(PoolConfigBase):
    kind: Literal["local-gpu"] = "local-gpu"
    count: int = Field(default=1, ge=1, le=16, description="worker containers (one per GPU usually)")
    gpus: str = Field(default="all", min_length=1, description="docker --gpus value, e.g. all or device=0")
    docker_host: str | None = Field(
        default=None,
        pattern=r"^(ssh|tcp|unix)://\S+$",
        description="another Docker daemon with GPUs, e.g. ssh://root@gpu-box; default: the stack's own",
    )


class LocalGpuPool(GpuPool[LocalGpuConfig]):
    mode = PoolMode.PULL
    config_model = LocalGpuConfig

    def capacity(self, config: LocalGpuConfig) -> int:
        return config.count

    def build(
        self, config: LocalGpuConfig, ctx: PoolContext, opts: pulumi.ResourceOptions | None = None
    ) -> PoolComponent:
        pool = self.component(config, opts)
        spec = LocalWorkers(config.name, self.kind, config.count, "gpu", gpus=config.gpus)
        local_worker_containers(spec, self._on_host(config, ctx, pool), pool)
        pool.finish(
            {**self.base_summary(config), "gpus": config.gpus, "dockerHost": config.docker_host or "stack"}
        )
        return pool

    def _on_host(self, config: LocalGpuConfig, ctx: PoolContext, pool: PoolComponent) -> PoolContext:
        """On another daemon the workers reach the queue by its URL, not the stack's Docker network."""
        if config.docker_host is None:
            return ctx
        host = docker.Provider(
            f"{config.name}-docker", host=config.docker_host, opts=pulumi.ResourceOptions(parent=pool)
        )
        return replace(
            ctx,
            docker_provider=host,
            docker_network=None,
            files_volume=None,
            models_dir=None,  # that host's own disk: its workers sync the manifest's models there
        )
