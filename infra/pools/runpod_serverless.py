"""RunPod serverless endpoints: a push pool (jobs go to the endpoint's `/run`)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import pulumi
from pydantic import AfterValidator, Field

from infra.credential_registry import REGISTRY_PASSWORD, RUNPOD_API_KEY, Credential
from infra.pools.access import RUNPOD_MODELS_DIR, runpod_connection, worker_env
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
from infra.providers.resources import RunPodEndpoint, RunPodNetworkVolume, RunPodRegistryAuth, RunPodTemplate
from infra.providers.runpod import login_name_shape
from infra.secret import secret
from services.queue_manager.settings import PUSH_CHAIN_SECONDS, push_request_limit


def _data_center(value: str) -> str:
    if not re.fullmatch(r"[A-Z]{2,3}-[A-Z]{2,3}-\d{1,2}", value):
        raise ValueError(
            "not a data center id; fix: use a RunPod data center id such as EU-RO-1 or US-KS-2 (upper case), "
            "one that offers network volumes and the pool's GPUs"
        )
    return value


def _gpu_types(value: list[str]) -> list[str]:
    bad = [gpu for gpu in value if not gpu.startswith(("NVIDIA ", "AMD "))]
    if bad:
        raise ValueError(
            f"{', '.join(map(repr, bad))} is not a GPU type id; fix: use RunPod's GPU type id, e.g. "
            "'NVIDIA H100 80GB HBM3' or 'NVIDIA A100 80GB PCIe' (RunPod's GPU types list shows them)"
        )
    return value


class NetworkVolume(ModelsVolume):
    size_gb: int = Field(default=500, ge=10, le=4000)
    data_center_id: Annotated[str, AfterValidator(_data_center)] = "EU-RO-1"


class RunpodServerlessConfig(PoolConfigBase, ReplicaRange):
    kind: Literal["runpod-serverless"] = "runpod-serverless"
    gpu_type_ids: Annotated[list[str], AfterValidator(_gpu_types)] = Field(
        default_factory=lambda: ["NVIDIA H100 80GB HBM3"], min_length=1
    )
    gpu_count: int = Field(default=1, ge=1, le=8)
    idle_timeout_seconds: int = Field(default=60, ge=5, le=3600)
    flashboot: bool = True
    container_disk_gb: int = Field(default=30, ge=10, le=500)
    registry_auth_id: str | None = Field(
        default=None,
        description="an existing RunPod registry auth id; default: one made from `registry` and its token",
    )
    models_volume: NetworkVolume | None = None


class RunpodServerlessPool(GpuPool[RunpodServerlessConfig]):
    mode = PoolMode.PUSH
    config_model = RunpodServerlessConfig

    def needs_registry(self, config: RunpodServerlessConfig) -> bool:
        return True

    def credentials(self, config: RunpodServerlessConfig) -> tuple[Credential, ...]:
        return (RUNPOD_API_KEY,)

    def shared_volume(self, config: RunpodServerlessConfig) -> SharedVolume | None:
        volume = config.models_volume
        return (
            None
            if volume is None
            else SharedVolume("runpod", volume.name, volume.data_center_id, volume.size_gb, volume.keep)
        )

    def names(self, config: RunpodServerlessConfig, stack: str, workshop: str) -> tuple[str, ...]:
        """The template's and the endpoint's name (any stack name goes at RunPod: not host names), and
        the registry login's (with its fingerprint) unless the pool names its own (``registry_auth_id``)."""
        login = (
            ()
            if config.registry_auth_id
            else (login_name_shape(owned_name(stack, config.name, REGISTRY_LOGIN, workshop)),)
        )
        return (*super().names(config, stack, workshop), remote_name(stack, config.name), *login)

    def capacity(self, config: RunpodServerlessConfig) -> int:
        return config.max_replicas

    def build(
        self, config: RunpodServerlessConfig, ctx: PoolContext, opts: pulumi.ResourceOptions | None = None
    ) -> PoolComponent:
        pool = self.component(config, opts)
        child = pulumi.ResourceOptions(parent=pool)
        conn, prefix = runpod_connection(), ctx.remote_name(config.name)
        volume = self._volume(config, ctx, pool, conn)
        template = self._template(config, ctx, volume is not None, prefix, conn, child)
        endpoint = self._endpoint(config, template, volume, prefix, conn, child)
        dispatch = {"style": "runpod", "url": endpoint.endpoint_url, "api_key": RUNPOD_API_KEY.required()}
        pool.queue_manager_env = self.dispatch_env(config, dispatch)
        pool.finish(
            {
                **self.base_summary(config),
                "gpuTypeIds": list(config.gpu_type_ids),
                "minReplicas": config.min_replicas,
                "maxReplicas": config.max_replicas,
                "endpoint": endpoint.endpoint_url,
            }
        )
        return pool

    def _template(
        self,
        config: RunpodServerlessConfig,
        ctx: PoolContext,
        with_volume: bool,
        prefix: str,
        conn: dict[str, pulumi.Input[str]],
        opts: pulumi.ResourceOptions,
    ) -> RunPodTemplate:
        """What a worker of the endpoint runs: the image, its settings (all secret), the disk."""
        models_dir = RUNPOD_MODELS_DIR if with_volume else None
        env = worker_env(ctx, config.name, "runpod", models_dir, self.mode)
        props = {
            "name": prefix,
            "image": ctx.worker_image(config.name, self.kind, with_runpod=True),
            "env": secret(pulumi.Output.all(**env.plain, **env.secret)),
            "container_disk_gb": config.container_disk_gb,
            "start_cmd": ["runpod"],
            "registry_auth_id": self._registry_auth(config, ctx, conn, opts),
            **conn,
        }
        return RunPodTemplate(f"{config.name}-template", props, opts)

    def _endpoint(
        self,
        config: RunpodServerlessConfig,
        template: RunPodTemplate,
        volume: RunPodNetworkVolume | None,
        prefix: str,
        conn: dict[str, pulumi.Input[str]],
        opts: pulumi.ResourceOptions,
    ) -> RunPodEndpoint:
        """The endpoint the queue manager sends jobs to, scaling workers of ``template`` on the GPUs."""
        # Workers run where the models volume is, or they would start without their models.
        placed = (
            {"network_volume_id": volume.remote_id, "data_center_ids": [config.models_volume.data_center_id]}
            if volume and config.models_volume
            else {}
        )
        props = {
            "name": prefix,
            "template_id": template.remote_id,
            "gpu_type_ids": list(config.gpu_type_ids),
            "gpu_count": config.gpu_count,
            "workers_min": config.min_replicas,
            "workers_max": config.max_replicas,
            "idle_timeout_s": config.idle_timeout_seconds,
            "flashboot": config.flashboot,
            # A request runs a chain of jobs (its window, then one more job's time).
            "execution_timeout_s": push_request_limit(PUSH_CHAIN_SECONDS, config.max_job_seconds),
            **placed,
            **conn,
        }
        return RunPodEndpoint(f"{config.name}-endpoint", props, opts)

    def _registry_auth(
        self,
        config: RunpodServerlessConfig,
        ctx: PoolContext,
        conn: dict[str, pulumi.Input[str]],
        opts: pulumi.ResourceOptions,
    ) -> pulumi.Input[str]:
        """The login RunPod pulls the pushed (private) worker image with."""
        if config.registry_auth_id:
            return config.registry_auth_id
        registry = ctx.registry_for(config.name, self.kind)
        props = {
            "name": ctx.owned_name(config.name, REGISTRY_LOGIN),
            "username": registry.username,
            "password": REGISTRY_PASSWORD.required(),
            **conn,
        }
        return RunPodRegistryAuth(f"{config.name}-registry", props, opts).remote_id

    def _volume(
        self,
        config: RunpodServerlessConfig,
        ctx: PoolContext,
        pool: PoolComponent,
        conn: dict[str, pulumi.Input[str]],
    ) -> RunPodNetworkVolume | None:
        """The network volume with the models: one per name and data center however many pools mount
        it, kept by `pulumi destroy` and adopted again the next day."""
        spec = self.shared_volume(config)
        if spec is None:
            return None

        def declare(opts: pulumi.ResourceOptions, kept: dict[str, Any]) -> RunPodNetworkVolume:
            props = {"name": spec.name, "size": spec.size_gb, "data_center": spec.place, **kept, **conn}
            return RunPodNetworkVolume(f"models-{spec.name}-{spec.place.lower()}", props, opts)

        return ctx.shared.once(spec, (config.name, pool), declare)
