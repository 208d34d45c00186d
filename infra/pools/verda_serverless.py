"""Verda serverless containers: a push pool that scales on requests sent to its endpoint."""

from __future__ import annotations

from typing import Literal

import pulumi
from pydantic import Field, field_validator

from infra.pools.base import (
    GpuPool,
    ModelsVolume,
    PoolComponent,
    PoolConfigBase,
    PoolContext,
    PoolMode,
    ReplicaRange,
    RequiredSecret,
)
from infra.pools.verda_instance import VERDA_LOCATIONS, VERDA_SECRETS
from infra.schema import one_of


class VerdaServerlessConfig(PoolConfigBase, ReplicaRange):
    kind: Literal["verda-serverless"] = "verda-serverless"
    gpu: str = Field(default="H100", min_length=2, description="compute resource name, e.g. H100")
    gpu_count: int = Field(default=1, ge=1, le=8)
    spot: bool = False
    location: str = "FIN-03"
    concurrent_requests_per_replica: int = Field(default=1, ge=1, le=8)
    scale_down_delay_seconds: int = Field(default=300, ge=0, le=3600)
    models_volume: ModelsVolume | None = None

    @field_validator("location")
    @classmethod
    def _known_location(cls, value: str) -> str:
        return one_of(value, VERDA_LOCATIONS, "Verda location")


class VerdaServerlessPool(GpuPool[VerdaServerlessConfig]):
    kind = "verda-serverless"
    mode = PoolMode.PUSH
    config_model = VerdaServerlessConfig

    def needs_registry(self, config: VerdaServerlessConfig) -> bool:
        return True

    def required_secrets(self, config: VerdaServerlessConfig) -> tuple[RequiredSecret, ...]:
        return VERDA_SECRETS

    def capacity(self, config: VerdaServerlessConfig) -> int:
        return config.max_replicas * config.concurrent_requests_per_replica

    def build(
        self, config: VerdaServerlessConfig, ctx: PoolContext, opts: pulumi.ResourceOptions | None = None
    ) -> PoolComponent:
        pool = PoolComponent(self.kind, config.name, opts)
        pool.finish(
            {
                **self.base_summary(config),
                "gpu": config.gpu,
                "minReplicas": config.min_replicas,
                "maxReplicas": config.max_replicas,
                "spot": config.spot,
                "location": config.location,
            }
        )
        return pool
