"""The registry of GPU pool kinds. Adding a provider: one new module, then one line in each list below.

A kind module holds its config schema (``kind: Literal[...]`` is the discriminator, the one place
the kind's name is written; validators end their messages with "; fix: ...") and a ``GpuPool``
subclass whose ``build`` declares the pool under one ``PoolComponent``. Kind modules never import
each other: what several share lives in ``access`` (credentials, worker env, push settings),
``verda`` (Verda locations, models filesystem, registry credentials) and ``local_workers``. The
program calls ``build`` once per configured pool with a ``PoolContext`` (queue URL, the pool's
worker token, the GPU tailnet key, R2 access, registry, Docker provider and volumes for local kinds)
and reads back ``summary`` (exported, shown on the admin page) and ``queue_manager_env`` (extra
`QM_*` settings, e.g. push endpoints and provider API keys).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from infra.pools.base import PoolConfigBase, PoolMode
from infra.pools.context import PoolContext
from infra.pools.kind import GpuPool, PoolComponent
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
