"""The GPU worker image, built by the program and pushed to the configured registry.

Pools whose hosts pull the image (Verda instances and containers, RunPod) ask their context for it
(``PoolContext.worker_image``), which declares each variant once per stack. The tag is the
hash of the files the image is built from, so an unchanged worker is neither rebuilt nor re-pulled;
the pools use the pushed ``repo@digest`` reference, so a new push rolls out exactly that build.
"""

from __future__ import annotations

import pulumi
import pulumi_docker_build as docker_build

from infra.comfyui import ComfyUIConfig
from infra.credential_registry import REGISTRY_PASSWORD
from infra.images import REPO_ROOT, context_hash, worker_source
from infra.pools.base import RegistryConfig


class WorkerImages:
    """The stack's pushed GPU worker images: one build and push per variant (plain, with the RunPod
    handler), however many pools pull it. ``PoolSet`` shares one among its pools' contexts."""

    def __init__(self, parent: pulumi.Resource | None = None) -> None:
        self._parent = parent
        self._pushed: dict[tuple[str, bool], pulumi.Output[str]] = {}

    def reference(
        self, registry: RegistryConfig, comfyui: ComfyUIConfig, *, with_runpod: bool = False
    ) -> pulumi.Output[str]:
        key = (registry.repository, with_runpod)
        if key not in self._pushed:
            name = "worker-image-runpod" if with_runpod else "worker-image"
            image = pushed_worker_image(name, registry, comfyui, self._parent, with_runpod=with_runpod)
            self._pushed[key] = image_reference(image, registry)
        return self._pushed[key]


def pushed_worker_image(
    name: str,
    registry: RegistryConfig,
    comfyui: ComfyUIConfig,
    parent: pulumi.Resource | None = None,
    *,
    with_runpod: bool = False,
) -> docker_build.Image:
    """Build the GPU worker (ComfyUI at ``comfyui.ref``; the RunPod handler when ``with_runpod``)
    and push it."""
    source = worker_source("gpu", comfyui)
    tag = context_hash(source)[:16] + ("-runpod" if with_runpod else "")
    return docker_build.Image(
        name,
        push=True,
        context=docker_build.BuildContextArgs(location=str(REPO_ROOT)),
        dockerfile=docker_build.DockerfileArgs(location=str(REPO_ROOT / source.dockerfile)),
        build_args={**source.build_args, "WITH_RUNPOD": "true" if with_runpod else "false"},
        platforms=[docker_build.Platform.LINUX_AMD64],
        tags=[f"{registry.repository}:{tag}"],
        registries=[
            docker_build.RegistryArgs(
                address=registry.server, username=registry.username, password=REGISTRY_PASSWORD.required()
            )
        ],
        opts=pulumi.ResourceOptions(parent=parent),
    )


def image_reference(image: docker_build.Image, registry: RegistryConfig) -> pulumi.Output[str]:
    """``repository@digest`` of the pushed build (what hosts should pull); the tag until it is known."""
    tagged = image.tags.apply(lambda tags: (tags or [registry.repository])[0])
    return pulumi.Output.all(image.digest, tagged).apply(
        lambda pair: f"{registry.repository}@{pair[0]}" if pair[0] else str(pair[1])
    )
