"""Verda (formerly DataCrunch) GPU instances: a pull pool for the steady baseline of a workshop."""

from __future__ import annotations

import re
from typing import Any, Literal

import pulumi
import pulumi_tls as tls
from pydantic import Field, field_validator

from infra.credential_registry import REGISTRY_PASSWORD, Credential
from infra.pools.access import FILES_PLACE, SHARED_MODELS_DIR, WorkerEnv, verda_connection, worker_env
from infra.pools.base import (
    ModelsVolume,
    PoolConfigBase,
    PoolMode,
    SharedVolume,
    owned_name,
    remote_name,
    workshop_tag,
)
from infra.pools.context import PoolContext
from infra.pools.kind import GpuPool, PoolComponent
from infra.pools.verda import CREDENTIALS, LOCATIONS, models_volume, shared_volume
from infra.pools.verda_startup import StartupSpec, setup_digest, startup_script
from infra.providers.resources import VerdaInstance, VerdaSharedVolume, VerdaSshKey, VerdaStartupScript
from infra.providers.verda_instance import os_volume_name
from infra.schema import one_of
from infra.secret import secret

SSH_KEY, STARTUP = "ssh", "startup"  # what the pool's SSH key and startup script are in their names


def hostname(prefix: str, index: int) -> str:
    """The host name of the pool's instance ``index``: its name at Verda and on the tailnet."""
    return f"{prefix}-{index}"


class VerdaInstanceConfig(PoolConfigBase):
    kind: Literal["verda-instance"] = "verda-instance"
    count: int = Field(default=1, ge=0, le=16, description="instances kept running")
    instance_type: str = Field(default="1H100.80S.30V", pattern=r"^\d+[A-Z0-9]+\.[0-9A-Z.]+$")
    spot: bool = False
    location: str = "FIN-03"
    workers_per_gpu: int = Field(default=1, ge=1, le=4)
    models_volume: ModelsVolume | None = None
    os_volume_gb: int = Field(default=100, ge=50, le=2000, description="OS disk, deleted with the instance")

    @field_validator("location")
    @classmethod
    def _known_location(cls, value: str) -> str:
        return one_of(value, LOCATIONS, "Verda location")

    @property
    def gpus_per_instance(self) -> int:
        match = re.match(r"\d+", self.instance_type)
        return int(match.group()) if match else 1


class VerdaInstancePool(GpuPool[VerdaInstanceConfig]):
    mode = PoolMode.PULL
    config_model = VerdaInstanceConfig

    def needs_registry(self, config: VerdaInstanceConfig) -> bool:
        return True

    def credentials(self, config: VerdaInstanceConfig) -> tuple[Credential, ...]:
        return CREDENTIALS

    def shared_volume(self, config: VerdaInstanceConfig) -> SharedVolume | None:
        return shared_volume(config.models_volume, config.location)

    def host_names(self, config: VerdaInstanceConfig, stack: str) -> tuple[str, ...]:
        return tuple(hostname(remote_name(stack, config.name), index) for index in range(config.count))

    def names(self, config: VerdaInstanceConfig, stack: str, workshop: str) -> tuple[str, ...]:
        owned = tuple(owned_name(stack, config.name, what, workshop) for what in (SSH_KEY, STARTUP))
        os_volumes = tuple(os_volume_name(host) for host in self.host_names(config, stack))
        return (*super().names(config, stack, workshop), *os_volumes, *owned)

    def capacity(self, config: VerdaInstanceConfig) -> int:
        return config.count * config.gpus_per_instance * config.workers_per_gpu

    def build(
        self, config: VerdaInstanceConfig, ctx: PoolContext, opts: pulumi.ResourceOptions | None = None
    ) -> PoolComponent:
        pool = self.component(config, opts)
        child = pulumi.ResourceOptions(parent=pool)
        conn, prefix = verda_connection(), ctx.remote_name(config.name)
        volume = models_volume(ctx, (config.name, pool), self.shared_volume(config), conn)
        env = worker_env(ctx, config.name, "verda", models_dir=SHARED_MODELS_DIR)  # the volume or host disk
        boot = self._boot(config, ctx, volume, env, conn, child)
        machine = {
            "instance_type": config.instance_type,
            "location": config.location,
            "is_spot": config.spot,
            "os_volume_size": config.os_volume_gb,
            "description": f"comfy-workshop {ctx.stack}/{config.name}",
            "workshop_tag": workshop_tag(ctx.workshop),
            # What the startup script says of where its workers store files: proves an untagged
            # leftover of a lost state ours (read at create only).
            "worker_files": {key: env.plain[key] for key in FILES_PLACE if key in env.plain},
        }
        instances = [
            VerdaInstance(
                f"{config.name}-{index}",
                {"name": hostname(prefix, index), **machine, **boot, **conn},
                ctx.starting_after(child),
            )
            for index in range(config.count)
        ]
        pool.finish(
            {
                **self.base_summary(config),
                "instanceType": config.instance_type,
                "count": config.count,
                "spot": config.spot,
                "location": config.location,
                "hosts": [instance.ip for instance in instances],
            }
        )
        return pool

    def _boot(
        self,
        config: VerdaInstanceConfig,
        ctx: PoolContext,
        volume: VerdaSharedVolume | None,
        env: WorkerEnv,
        conn: dict[str, pulumi.Input[str]],
        opts: pulumi.ResourceOptions,
    ) -> dict[str, pulumi.Input[Any]]:
        """How every instance of the pool boots: the pool's SSH key, its startup script (which joins
        the tailnet, mounts the models volume and starts the workers) and that script's setup digest."""
        key = tls.PrivateKey(f"{config.name}-ssh", algorithm="ED25519", opts=opts)
        ssh_key = VerdaSshKey(
            f"{config.name}-ssh-key",
            {"name": ctx.owned_name(config.name, SSH_KEY), "public_key": key.public_key_openssh, **conn},
            opts,
        )
        spec = self._spec(config, ctx, volume, env)
        text = secret(spec.apply(startup_script))
        script_props = {"name": ctx.owned_name(config.name, STARTUP), "script": text, **conn}
        script = VerdaStartupScript(f"{config.name}-startup", script_props, opts)
        return {
            "ssh_key_ids": [ssh_key.remote_id],
            "startup_script_id": script.remote_id,
            "setup_digest": spec.apply(setup_digest),
            "existing_volumes": [volume.volume_id] if volume else [],
        }

    def _spec(
        self, config: VerdaInstanceConfig, ctx: PoolContext, volume: VerdaSharedVolume | None, env: WorkerEnv
    ) -> pulumi.Output[StartupSpec]:
        registry = ctx.registry_for(config.name, self.kind)
        if ctx.tailnet_auth_key is None:
            raise ValueError(f"pool {config.name}: verda-instance needs the GPU tailnet key")
        values = pulumi.Output.all(
            image=ctx.worker_image(config.name, self.kind),
            key=ctx.tailnet_auth_key,
            password=REGISTRY_PASSWORD.required(),
            env=pulumi.Output.all(**env.plain, **env.secret),
            mount=volume.mount_command if volume else "",
        )

        def render(v: dict[str, Any]) -> StartupSpec:
            return StartupSpec(
                pool=config.name,
                image=v["image"],
                workers_per_gpu=config.workers_per_gpu,
                tailnet_key=v["key"],
                registry_server=registry.server,
                registry_username=registry.username,
                registry_password=v["password"],
                worker_env=v["env"],
                mount_command=v["mount"] or None,
                sync_models="WORKER_MODELS_MANIFEST_JSON" in v["env"],
            )

        return values.apply(render)
