"""RunPod serverless endpoints: a push pool (jobs go to the endpoint's `/run`)."""

from __future__ import annotations

from typing import Literal

import pulumi
from pydantic import Field

from infra.pools.base import (
    GpuPool,
    PoolComponent,
    PoolConfigBase,
    PoolContext,
    PoolMode,
    ReplicaRange,
    RequiredSecret,
)
from infra.schema import Label, Model


class NetworkVolume(Model):
    name: Label
    size_gb: int = Field(default=500, ge=10, le=4000)
    data_center_id: str = Field(default="EU-RO-1", min_length=4)


class RunpodServerlessConfig(PoolConfigBase, ReplicaRange):
    kind: Literal["runpod-serverless"] = "runpod-serverless"
    gpu_type_ids: list[str] = Field(default_factory=lambda: ["NVIDIA H100 80GB HBM3"], min_length=1)
    gpu_count: int = Field(default=1, ge=1, le=8)
    idle_timeout_seconds: int = Field(default=60, ge=5, le=3600)
    flashboot: bool = True
    models_volume: NetworkVolume | None = None


RUNPOD_SECRETS = (RequiredSecret("comfy-workshop:runpodApiKey", "RunPod API key", "RUNPOD_API_KEY"),)


class RunpodServerlessPool(GpuPool[RunpodServerlessConfig]):
    kind = "runpod-serverless"
    mode = PoolMode.PUSH
    config_model = RunpodServerlessConfig

    def needs_registry(self, config: RunpodServerlessConfig) -> bool:
        return True

    def required_secrets(self, config: RunpodServerlessConfig) -> tuple[RequiredSecret, ...]:
        return RUNPOD_SECRETS

    def capacity(self, config: RunpodServerlessConfig) -> int:
        return config.max_replicas

    def build(
        self, config: RunpodServerlessConfig, ctx: PoolContext, opts: pulumi.ResourceOptions | None = None
    ) -> PoolComponent:
        pool = PoolComponent(self.kind, config.name, opts)
        pool.finish(
            {
                **self.base_summary(config),
                "gpuTypeIds": list(config.gpu_type_ids),
                "minReplicas": config.min_replicas,
                "maxReplicas": config.max_replicas,
            }
        )
        return pool
