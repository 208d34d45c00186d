"""Verda serverless containers: a push pool that scales on requests sent to its endpoint."""

from __future__ import annotations

from typing import Literal

import pulumi
from pydantic import Field, field_validator

from infra.credential_registry import VERDA_INFERENCE_KEY, Credential
from infra.pools.access import SHARED_MODELS_DIR, WORKER_SECRETS, verda_connection, worker_env
from infra.pools.base import (
    REGISTRY_LOGIN,
    ModelsVolume,
    PoolConfigBase,
    PoolMode,
    ReplicaRange,
    SharedVolume,
    owned_name,
    remote_name,
)
from infra.pools.context import PoolContext
from infra.pools.kind import GpuPool, PoolComponent
from infra.pools.verda import CREDENTIALS, LOCATIONS, models_volume, registry_props, shared_volume
from infra.providers.resources import (
    VerdaDeployment,
    VerdaRegistryCredentials,
    VerdaSecret,
    VerdaSharedVolume,
)
from infra.schema import one_of

WORKER_PORT = 8080
PUSH_PATH = "/lease"  # the worker's push front door (services.worker.push) takes a Lease here


def secret_slug(key: str) -> str:
    """What the Verda secret holding the worker's setting ``key`` is called in its name."""
    return key.lower().replace("_", "-")


class VerdaServerlessConfig(PoolConfigBase, ReplicaRange):
    kind: Literal["verda-serverless"] = "verda-serverless"
    gpu: str = Field(default="H100", min_length=2, description="compute resource name, e.g. H100")
    gpu_count: int = Field(default=1, ge=1, le=8)
    spot: bool = False
    location: str = Field(
        default="FIN-03", description="where the models volume is made (Verda places containers itself)"
    )
    concurrent_requests_per_replica: int = Field(default=1, ge=1, le=8)
    # Short: containers bill in 10-minute increments, so idling past a burst mostly buys nothing.
    scale_down_delay_seconds: int = Field(default=60, ge=0, le=3600)
    models_volume: ModelsVolume | None = None

    @field_validator("location")
    @classmethod
    def _known_location(cls, value: str) -> str:
        return one_of(value, LOCATIONS, "Verda location")


class VerdaServerlessPool(GpuPool[VerdaServerlessConfig]):
    mode = PoolMode.PUSH
    config_model = VerdaServerlessConfig

    def needs_registry(self, config: VerdaServerlessConfig) -> bool:
        return True

    def credentials(self, config: VerdaServerlessConfig) -> tuple[Credential, ...]:
        # The queue manager calls the deployment's endpoint with the inference key (push dispatch).
        return (*CREDENTIALS, VERDA_INFERENCE_KEY)

    def shared_volume(self, config: VerdaServerlessConfig) -> SharedVolume | None:
        return shared_volume(config.models_volume, config.location)

    def host_names(self, config: VerdaServerlessConfig, stack: str) -> tuple[str, ...]:
        return (remote_name(stack, config.name),)  # the deployment's name, in its endpoint's URL

    def names(self, config: VerdaServerlessConfig, stack: str, workshop: str) -> tuple[str, ...]:
        owned = (REGISTRY_LOGIN, *(secret_slug(key) for key in WORKER_SECRETS))
        return (
            *super().names(config, stack, workshop),
            *(owned_name(stack, config.name, what, workshop) for what in owned),
        )

    def capacity(self, config: VerdaServerlessConfig) -> int:
        return config.max_replicas * config.concurrent_requests_per_replica

    def build(
        self, config: VerdaServerlessConfig, ctx: PoolContext, opts: pulumi.ResourceOptions | None = None
    ) -> PoolComponent:
        pool = self.component(config, opts)
        conn, prefix = verda_connection(), ctx.remote_name(config.name)
        volume = models_volume(ctx, (config.name, pool), self.shared_volume(config), conn)
        deployment = self._deployment(config, ctx, volume, pool, prefix, conn)
        dispatch = {
            "style": "verda",
            "url": deployment.endpoint_base_url,
            "path": PUSH_PATH,
            "api_key": VERDA_INFERENCE_KEY.required(),
        }
        pool.queue_manager_env = self.dispatch_env(config, dispatch)
        pool.finish(
            {
                **self.base_summary(config),
                "gpu": config.gpu,
                "minReplicas": config.min_replicas,
                "maxReplicas": config.max_replicas,
                "spot": config.spot,
                "location": config.location,
                "endpoint": deployment.endpoint_base_url,
            }
        )
        return pool

    def _deployment(
        self,
        config: VerdaServerlessConfig,
        ctx: PoolContext,
        volume: VerdaSharedVolume | None,
        pool: PoolComponent,
        prefix: str,
        conn: dict[str, pulumi.Input[str]],
    ) -> VerdaDeployment:
        """The container deployment, after the registry login and the secrets it names exist."""
        child = pulumi.ResourceOptions(parent=pool)
        models_dir = SHARED_MODELS_DIR if volume else None
        env = worker_env(ctx, config.name, "verda-serverless", models_dir, self.mode)
        secrets = [
            self._secret(config.name, ctx, key, value, conn, child) for key, value in env.secret.items()
        ]
        registry_name = ctx.owned_name(config.name, REGISTRY_LOGIN)
        registry = registry_props(registry_name, ctx.registry_for(config.name, self.kind))
        credentials = VerdaRegistryCredentials(f"{config.name}-registry", {**registry, **conn}, child)
        props = {
            "name": prefix,
            "image": ctx.worker_image(config.name, self.kind),
            "port": WORKER_PORT,
            "health_path": "/health",
            "cmd": ["serve-push"],
            # Verda secrets are referenced by name: their digest makes a new value roll the replicas.
            "env": {**env.plain, "WORKER_SECRETS_VERSION": env.secrets_version()},
            "secret_env": {key: name for key, name, _ in secrets},
            "mounts": [{"mount_path": SHARED_MODELS_DIR, "volume_id": volume.volume_id}] if volume else [],
            "compute": {"name": config.gpu, "size": config.gpu_count},
            "scaling": self._scaling(config),
            "registry_credentials": registry_name,
            "is_spot": config.spot,
            **conn,
        }
        after = [credentials, *[resource for _, _, resource in secrets]]
        return VerdaDeployment(
            f"{config.name}-deployment", props, pulumi.ResourceOptions(parent=pool, depends_on=after)
        )

    def _scaling(self, config: VerdaServerlessConfig) -> dict[str, int | float]:
        return {
            "min_replica_count": config.min_replicas,
            "max_replica_count": config.max_replicas,
            "scale_down_delay_s": config.scale_down_delay_seconds,
            "concurrent_requests_per_replica": config.concurrent_requests_per_replica,
            # One waiting request per replica already asks for another replica: bursts scale at once.
            "queue_load_threshold": 1.0,
        }

    def _secret(
        self,
        pool: str,
        ctx: PoolContext,
        key: str,
        value: pulumi.Input[str],
        conn: dict[str, pulumi.Input[str]],
        opts: pulumi.ResourceOptions,
    ) -> tuple[str, str, VerdaSecret]:
        slug = secret_slug(key)
        name = ctx.owned_name(pool, slug)
        resource = VerdaSecret(f"{pool}-{slug}", {"name": name, "value": value, **conn}, opts)
        return key, name, resource
