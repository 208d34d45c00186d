"""Tailscale: the VPS's single-use key, the GPU nodes' reusable ephemeral key, and the tailnet policy.

The policy lets GPU nodes reach only the worker API port on the VPS; admins (tag owners) reach the
VPS's SSH and the worker port for debugging. Nothing else is allowed between the tags.
"""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_tailscale as tailscale

from infra.config import TailscaleConfig

DAY = 86_400


def tailnet_policy(config: TailscaleConfig, worker_port: int) -> dict[str, Any]:
    """The whole policy file (the `Acl` resource replaces it): tag owners and the allowed flows."""
    owners = list(config.tag_owners)
    tags = [
        config.vps_tag,
        config.gpu_tag,
        *(source for source in config.ssh_from if source.startswith("tag:")),
    ]
    acls = [
        {"action": "accept", "src": [config.gpu_tag], "dst": [f"{config.vps_tag}:{worker_port}"]},
        {
            "action": "accept",
            "src": owners,
            "dst": [f"{config.vps_tag}:22", f"{config.vps_tag}:{worker_port}", f"{config.gpu_tag}:*"],
        },
    ]
    if config.ssh_from:
        # e.g. the deploy workflow's runner, so `pulumi up`/`destroy` can reach Docker and the drain step.
        acls.append({"action": "accept", "src": list(config.ssh_from), "dst": [f"{config.vps_tag}:22"]})
    return {"tagOwners": {tag: owners for tag in tags}, "acls": acls}


class Tailnet(pulumi.ComponentResource):
    """Keys and policy. ``vps_key`` and ``gpu_key`` are secret outputs."""

    vps_key: pulumi.Output[str]
    gpu_key: pulumi.Output[str]
    policy: tailscale.Acl | None

    def __init__(
        self, name: str, config: TailscaleConfig, worker_port: int, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("comfy-workshop:tailnet:Tailnet", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # Keys carry tags, and a tag must be owned in the policy before a key may use it.
        self.policy = (
            tailscale.Acl(
                f"{name}-policy",
                acl=json.dumps(tailnet_policy(config, worker_port), indent=2),
                overwrite_existing_content=True,
                opts=child,
            )
            if config.manage_policy
            else None
        )
        after_policy = pulumi.ResourceOptions(parent=self, depends_on=[self.policy] if self.policy else [])
        vps = tailscale.TailnetKey(
            f"{name}-vps-key",
            reusable=False,
            ephemeral=False,
            preauthorized=True,
            tags=[config.vps_tag],
            expiry=DAY,
            description="comfy-workshop VPS",
            # Spent at first boot; a new key would only matter to a new server (cloud-init is ignored).
            recreate_if_invalid="never",
            opts=after_policy,
        )
        gpu = tailscale.TailnetKey(
            f"{name}-gpu-key",
            reusable=True,
            ephemeral=True,
            preauthorized=True,
            tags=[config.gpu_tag],
            expiry=DAY,
            description="comfy-workshop GPU nodes",
            opts=after_policy,
        )
        self.vps_key = pulumi.Output.secret(vps.key)
        self.gpu_key = pulumi.Output.secret(gpu.key)
        self.register_outputs({"vpsKey": self.vps_key, "gpuKey": self.gpu_key})
