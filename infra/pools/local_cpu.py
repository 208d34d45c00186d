"""ComfyUI on the CPU: the local stack's worker, so a job runs end to end without a GPU or account."""

from __future__ import annotations

from typing import Literal

import pulumi
from pydantic import Field

from infra.pools.base import PoolConfigBase, PoolMode
from infra.pools.context import PoolContext
from infra.pools.kind import GpuPool, PoolComponent
from infra.pools.local_workers import LocalWorkers, local_worker_containers


class LocalCpuConfig(PoolConfigBase):
    kind: Literal["local-cpu"] = "local-cpu"
    count: int = Field(default=1, ge=1, le=4, description="CPU worker containers")


class LocalCpuPool(GpuPool[LocalCpuConfig]):
    mode = PoolMode.PULL
    config_model = LocalCpuConfig

    def capacity(self, config: LocalCpuConfig) -> int:
        return config.count

    def build(
        self, config: LocalCpuConfig, ctx: PoolContext, opts: pulumi.ResourceOptions | None = None
    ) -> PoolComponent:
        pool = self.component(config, opts)
        local_worker_containers(LocalWorkers(config.name, self.kind, config.count, "cpu"), ctx, pool)
        pool.finish(self.base_summary(config))
        return pool
