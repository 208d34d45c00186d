"""Worker containers on a Docker daemon the program drives directly (the local stack, local GPUs).

They join the platform's private network and claim jobs from the queue manager by its network
alias, so nothing of the worker API is published on a host port. On the local stack they share the
queue manager's files volume (``ctx.files_volume``), so outputs land where the workspace
reads them.

Their models: on the local stack, the host's models folder (``ctx.models_dir``), read-only. With a
models bucket (a workshop's GPU box), one Docker volume per pool on that daemon, which its workers
fill once under the sync's lock (not each in its own container layer, again at every replacement)
and which outlives the evening's destroy like the cloud pools' models volumes.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from infra.images import build_image, worker_source
from infra.platform import FILES_DIR
from infra.pools.access import worker_env as pool_worker_env
from infra.pools.context import PoolContext
from infra.secret import secret


@dataclass(frozen=True)
class LocalWorkers:
    """What to run: ``count`` containers of the ``variant`` ("cpu" or "gpu") worker image."""

    pool: str
    provider_name: str
    count: int
    variant: str
    gpus: str | None = None


MODELS_DIR = "/models"
MANIFEST_FILE = "/etc/comfy-worker/models.json"


def worker_env(
    spec: LocalWorkers, ctx: PoolContext, index: int, shared_models: bool
) -> list[pulumi.Output[str]]:
    """The worker's `WORKER_*` (and, off the local stack, `S3_*`) settings; credentials stay secret."""
    env = pool_worker_env(ctx, spec.pool, spec.provider_name, MODELS_DIR if shared_models else None)
    plain = {**env.plain, "WORKER_ID": f"{spec.pool}-{index}", "WORKER_DEVICE": spec.variant}
    if ctx.user_files is None:  # the local stack: files on the volume shared with the queue manager
        plain["WORKER_STORAGE_URL"] = f"file://{FILES_DIR}"
    if ctx.models_manifest:
        plain["WORKER_MODELS_MANIFEST"] = MANIFEST_FILE
    shown = [pulumi.Output.concat(key, "=", value) for key, value in plain.items()]
    hidden = [secret(pulumi.Output.concat(key, "=", value)) for key, value in env.secret.items()]
    return shown + hidden


def local_worker_containers(
    spec: LocalWorkers, ctx: PoolContext, parent: pulumi.Resource
) -> list[docker.Container]:
    """Build the worker image on the pool's daemon and start ``spec.count`` containers from it."""
    on_daemon = pulumi.ResourceOptions(parent=parent, provider=ctx.docker_provider)
    image = build_image(
        f"{spec.pool}-image", worker_source(spec.variant, ctx.comfyui), ctx.docker_provider, on_daemon
    )
    networks = [docker.ContainerNetworksAdvancedArgs(name=ctx.docker_network)] if ctx.docker_network else None
    manifest = ctx.models_manifest
    uploads = [docker.ContainerUploadArgs(file=MANIFEST_FILE, content=manifest)] if manifest else None
    models = _models_volume(spec, ctx, on_daemon)
    return [
        docker.Container(
            f"{spec.pool}-worker-{index}",
            name=f"comfy-{ctx.stack}-{spec.pool}-{index}",
            image=image,
            envs=worker_env(spec, ctx, index, shared_models=bool(ctx.models_dir) or models is not None),
            networks_advanced=networks,
            volumes=_volumes(ctx, models),
            uploads=uploads,
            gpus=spec.gpus,
            restart="unless-stopped",
            labels=[docker.ContainerLabelArgs(label="comfy-workshop.pool", value=spec.pool)],
            opts=ctx.starting_after(on_daemon),
        )
        for index in range(spec.count)
    ]


def _models_volume(
    spec: LocalWorkers, ctx: PoolContext, on_daemon: pulumi.ResourceOptions
) -> pulumi.Output[str] | None:
    """The pool's models volume on its daemon, when its workers sync from a models bucket (its name
    as an output, so the workers start after it is made)."""
    if ctx.models_dir or ctx.models is None or not ctx.models_manifest:
        return None
    kept = pulumi.ResourceOptions.merge(on_daemon, pulumi.ResourceOptions(retain_on_delete=True))
    return docker.Volume(f"{spec.pool}-models", name=f"comfy-{ctx.stack}-{spec.pool}-models", opts=kept).name


def _volumes(ctx: PoolContext, models: pulumi.Output[str] | None) -> list[docker.ContainerVolumeArgs] | None:
    """The files volume shared with the queue manager; the host's models folder, read-only, or the
    pool's models volume, which its workers fill."""
    volumes = []
    if ctx.files_volume is not None:
        volumes.append(docker.ContainerVolumeArgs(volume_name=ctx.files_volume, container_path=FILES_DIR))
    if ctx.models_dir:
        volumes.append(
            docker.ContainerVolumeArgs(host_path=ctx.models_dir, container_path=MODELS_DIR, read_only=True)
        )
    if models is not None:
        volumes.append(docker.ContainerVolumeArgs(volume_name=models, container_path=MODELS_DIR))
    return volumes or None
