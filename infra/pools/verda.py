"""What the Verda pool kinds share: locations, credentials, the models filesystem, registry access."""

from __future__ import annotations

import base64
import json
from typing import Any

import pulumi

from infra.credential_registry import REGISTRY_PASSWORD, VERDA_CLIENT_ID, VERDA_CLIENT_SECRET, Credential
from infra.pools.base import ModelsVolume, RegistryConfig, SharedVolume
from infra.pools.context import PoolContext
from infra.providers.resources import VerdaSharedVolume
from infra.secret import secret

LOCATIONS = ("FIN-01", "FIN-02", "FIN-03", "ICE-01")
CREDENTIALS: tuple[Credential, ...] = (VERDA_CLIENT_ID, VERDA_CLIENT_SECRET)


def shared_volume(volume: ModelsVolume | None, location: str) -> SharedVolume | None:
    """A Verda pool's models filesystem: shared by the pools naming it in the same location."""
    if volume is None:
        return None
    return SharedVolume("verda", volume.name, location, volume.size_gb, volume.keep)


def models_volume(
    ctx: PoolContext,
    pool: tuple[str, pulumi.Resource],
    volume: SharedVolume | None,
    conn: dict[str, pulumi.Input[str]],
) -> VerdaSharedVolume | None:
    """The shared filesystem with the models: one resource per name and location however many pools
    mount it, kept by `pulumi destroy` and adopted again the next day."""
    if volume is None:
        return None

    def declare(opts: pulumi.ResourceOptions, kept: dict[str, Any]) -> VerdaSharedVolume:
        props = {"name": volume.name, "size": volume.size_gb, "location": volume.place, **kept, **conn}
        return VerdaSharedVolume(f"models-{volume.name}-{volume.place.lower()}", props, opts)

    return ctx.shared.once(volume, pool, declare)


def registry_props(name: str, registry: RegistryConfig) -> dict[str, pulumi.Input[str]]:
    """Verda registry credentials for the configured registry (ghcr and Docker Hub natively)."""
    kinds = {"ghcr.io": "ghcr", "docker.io": "dockerhub", "registry-1.docker.io": "dockerhub"}
    kind = kinds.get(registry.server, "custom")
    password = REGISTRY_PASSWORD.required()
    if kind != "custom":
        return {"name": name, "registry": kind, "username": registry.username, "access_token": password}
    auth = password.apply(lambda value: docker_config_json(registry, value))
    return {"name": name, "registry": "custom", "docker_config_json": secret(auth)}


def docker_config_json(registry: RegistryConfig, password: str) -> str:
    token = base64.b64encode(f"{registry.username}:{password}".encode()).decode()
    return json.dumps({"auths": {registry.server: {"auth": token}}})
