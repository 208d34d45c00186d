"""Container images built by the program from `images/<name>/` on the target Docker daemon.

An image's tag is a hash of exactly the files it is built from, so `pulumi up` rebuilds (and
replaces the containers running) an image only when one of those files changed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pulumi
import pulumi_docker as docker
import pulumi_docker_build as docker_build

from infra.comfyui import ComfyUIConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
SKIPPED_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "node_modules"}


@dataclass(frozen=True)
class ImageSource:
    """An image folder under `images/` and the repository paths its Dockerfile copies."""

    name: str
    inputs: tuple[str, ...]
    variant: str | None = None
    args: tuple[tuple[str, str], ...] = ()  # more build arguments (the ComfyUI version: infra.comfyui)

    @property
    def dockerfile(self) -> str:
        return f"images/{self.name}/Dockerfile"

    @property
    def repository(self) -> str:
        suffix = f"-{self.variant}" if self.variant else ""
        return f"comfy-workshop/{self.name}{suffix}"

    @property
    def build_args(self) -> dict[str, str]:
        return {**({"VARIANT": self.variant} if self.variant else {}), **dict(self.args)}


def queue_manager_source(comfyui: ComfyUIConfig | None = None) -> ImageSource:
    """The queue manager image, serving the frontend the configured ComfyUI pins."""
    return ImageSource(
        "queue-manager",
        (
            "images/queue-manager",
            "services/protocol",
            "services/storage",
            "services/queue_manager",
            "services/__init__.py",
            "pyproject.toml",
            "uv.lock",
        ),
        args=(comfyui or ComfyUIConfig()).queue_manager_build_args(),
    )


QUEUE_MANAGER = queue_manager_source()


def worker_source(variant: str, comfyui: ComfyUIConfig | None = None) -> ImageSource:
    """The worker image with ComfyUI at the configured ref; build argument ``VARIANT=cpu`` selects
    the CPU build the local stack runs."""
    return ImageSource(
        "worker",
        (
            "images/worker",
            "services/protocol",
            "services/storage",
            "services/worker",
            "services/__init__.py",
            "pyproject.toml",
            "uv.lock",
        ),
        variant=variant,
        args=(comfyui or ComfyUIConfig()).worker_build_args(),
    )


def _files(root: Path, relative: str) -> list[Path]:
    path = root / relative
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not SKIPPED_PARTS & set(p.parts))


@lru_cache(maxsize=32)
def context_hash(source: ImageSource, root: Path = REPO_ROOT) -> str:
    """SHA-256 over the relative path and bytes of every input file (missing inputs hash as absent)."""
    digest = hashlib.sha256(repr(sorted(source.build_args.items())).encode())
    for relative in source.inputs:
        for file in _files(root, relative):
            digest.update(str(file.relative_to(root)).encode() + b"\0")
            digest.update(file.read_bytes())
    return digest.hexdigest()


def image_ref(source: ImageSource) -> str:
    return f"{source.repository}:{context_hash(source)[:16]}"


def build_image(
    name: str,
    source: ImageSource,
    provider: pulumi.ProviderResource | None,
    opts: pulumi.ResourceOptions | None = None,
) -> pulumi.Output[str]:
    """Build ``source`` where its containers run and return the reference a container can use.

    On a remote daemon (``provider``: the VPS over SSH) the daemon builds it from the sent context;
    cloud-init turned its containerd image store off, which that build needs. On this machine
    (``provider`` None) BuildKit builds it and loads it into the local daemon, which works whatever
    image store the organizer's Docker uses.
    """
    if provider is None:
        return _build_here(name, source, opts)
    image = docker.RemoteImage(
        name,
        name=image_ref(source),
        build=docker.RemoteImageBuildArgs(
            context=str(REPO_ROOT), dockerfile=source.dockerfile, build_args=source.build_args
        ),
        triggers={"context": context_hash(source)},
        keep_locally=True,
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(provider=provider)),
    )
    return image.image_id


def _build_here(name: str, source: ImageSource, opts: pulumi.ResourceOptions | None) -> pulumi.Output[str]:
    ref = image_ref(source)
    image = docker_build.Image(
        name,
        tags=[ref],
        context=docker_build.BuildContextArgs(location=str(REPO_ROOT)),
        dockerfile=docker_build.DockerfileArgs(location=str(REPO_ROOT / source.dockerfile)),
        build_args=source.build_args,
        push=False,
        load=True,
        build_on_preview=False,
        opts=opts,
    )
    # The tag is known before the build; going through the image's id makes containers wait for it.
    return image.id.apply(lambda _: ref)
