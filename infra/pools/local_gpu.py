"""GPUs on a Docker host the organizer owns: a pull pool of worker containers with `--gpus`."""

from __future__ import annotations

from typing import Literal

import pulumi
from pydantic import Field

from infra.local_workers import LocalWorkers, local_worker_containers
from infra.pools.base import GpuPool, PoolComponent, PoolConfigBase, PoolContext, PoolMode


class LocalGpuConfig(PoolConfigBase):
    kind: Literal["local-gpu"] = "local-gpu"
    count: int = Field(default=1, ge=1, le=16, description="worker containers (one per GPU usually)")
    gpus: str = Field(default="all", min_length=1, description="docker --gpus value, e.g. all or device=0")


class LocalGpuPool(GpuPool[LocalGpuConfig]):
    kind = "local-gpu"
    mode = PoolMode.PULL
    config_model = LocalGpuConfig

    def capacity(self, config: LocalGpuConfig) -> int:
        return config.count

    def build(
        self, config: LocalGpuConfig, ctx: PoolContext, opts: pulumi.ResourceOptions | None = None
    ) -> PoolComponent:
        pool = PoolComponent(self.kind, config.name, opts)
        spec = LocalWorkers(config.name, self.kind, config.count, "gpu", gpus=config.gpus)
        local_worker_containers(spec, ctx, pool)
        pool.finish({**self.base_summary(config), "gpus": config.gpus})
        return pool
