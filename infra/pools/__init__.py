"""The registry of GPU pool kinds. Adding a provider: one new module, then one line in each list below.

A kind module holds its config schema (``kind: Literal[...]`` is the discriminator; validators end
their messages with "; fix: ...") and a ``GpuPool`` subclass whose ``build`` declares the pool under
one ``PoolComponent``. The program calls ``build`` once per configured pool with a ``PoolContext``
(queue URL for pull workers, public callback URL for push workers, the pool's worker token, the GPU
tailnet key, R2 access, registry, Docker provider for local kinds) and reads back ``summary``
(exported, shown on the admin page) and ``queue_manager_env`` (extra `QM_*` settings, e.g. push
endpoints and provider API keys).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from infra.pools.base import GpuPool, PoolComponent, PoolConfigBase, PoolContext, PoolMode
from infra.pools.local_cpu import LocalCpuConfig, LocalCpuPool
from infra.pools.local_gpu import LocalGpuConfig, LocalGpuPool
from infra.pools.runpod_serverless import RunpodServerlessConfig, RunpodServerlessPool
from infra.pools.verda_instance import VerdaInstanceConfig, VerdaInstancePool
from infra.pools.verda_serverless import VerdaServerlessConfig, VerdaServerlessPool

KINDS: dict[str, GpuPool[Any]] = {
    pool.kind: pool
    for pool in (
        VerdaInstancePool(),
        VerdaServerlessPool(),
        RunpodServerlessPool(),
        LocalGpuPool(),
        LocalCpuPool(),
    )
}

PoolConfig = Annotated[
    VerdaInstanceConfig | VerdaServerlessConfig | RunpodServerlessConfig | LocalGpuConfig | LocalCpuConfig,
    Field(discriminator="kind"),
]

# Kinds that run on the organizer's own Docker daemon: the only ones the local stack accepts.
LOCAL_KINDS = ("local-cpu", "local-gpu")


def kind_of(config: PoolConfigBase) -> GpuPool[Any]:
    return KINDS[config.kind]


__all__ = [
    "KINDS",
    "LOCAL_KINDS",
    "GpuPool",
    "PoolComponent",
    "PoolConfig",
    "PoolConfigBase",
    "PoolContext",
    "PoolMode",
    "kind_of",
]
