"""Verda (formerly DataCrunch) GPU instances: a pull pool for the steady baseline of a workshop."""

from __future__ import annotations

import re
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
    RequiredSecret,
)
from infra.schema import one_of

VERDA_LOCATIONS = ("FIN-01", "FIN-02", "FIN-03", "ICE-01")
VERDA_SECRETS = (
    RequiredSecret("comfy-workshop:verdaClientSecret", "Verda API client secret", "VERDA_CLIENT_SECRET"),
)


class VerdaInstanceConfig(PoolConfigBase):
    kind: Literal["verda-instance"] = "verda-instance"
    count: int = Field(default=1, ge=0, le=16, description="instances kept running")
    instance_type: str = Field(default="1H100.80S.30V", pattern=r"^\d+[A-Z0-9]+\.[0-9A-Z.]+$")
    spot: bool = False
    location: str = "FIN-03"
    workers_per_gpu: int = Field(default=1, ge=1, le=4)
    models_volume: ModelsVolume | None = None

    @field_validator("location")
    @classmethod
    def _known_location(cls, value: str) -> str:
        return one_of(value, VERDA_LOCATIONS, "Verda location")

    @property
    def gpus_per_instance(self) -> int:
        match = re.match(r"\d+", self.instance_type)
        return int(match.group()) if match else 1


class VerdaInstancePool(GpuPool[VerdaInstanceConfig]):
    kind = "verda-instance"
    mode = PoolMode.PULL
    config_model = VerdaInstanceConfig

    def needs_registry(self, config: VerdaInstanceConfig) -> bool:
        return True

    def required_secrets(self, config: VerdaInstanceConfig) -> tuple[RequiredSecret, ...]:
        return VERDA_SECRETS

    def capacity(self, config: VerdaInstanceConfig) -> int:
        return config.count * config.gpus_per_instance * config.workers_per_gpu

    def build(
        self, config: VerdaInstanceConfig, ctx: PoolContext, opts: pulumi.ResourceOptions | None = None
    ) -> PoolComponent:
        pool = PoolComponent(self.kind, config.name, opts)
        pool.finish(
            {
                **self.base_summary(config),
                "instanceType": config.instance_type,
                "count": config.count,
                "spot": config.spot,
                "location": config.location,
            }
        )
        return pool
