"""Tailscale: the VPS's single-use key, the GPU nodes' reusable ephemeral key, and the tailnet policy.

Our rules let GPU nodes reach only the worker API port on the VPS; admins (tag owners) reach the
VPS's SSH and the worker port for debugging. Nothing else is allowed between the tags. With
`managePolicy` they are merged into the organizer's policy file: every rule and section of theirs
stays; the rules whose destinations are our tags' ports are ours and rewritten each `up`. A policy
that holds rules on our tags we did not write, or that lets our tagged nodes reach more (the default
allow-all), is refused with what to change, never overwritten.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
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


def _host(destination: str) -> str:
    """`tag:comfy-vps:22` -> `tag:comfy-vps` (the part before the port)."""
    return destination.rsplit(":", 1)[0]


def _ours(rule: dict[str, Any], shapes: set[str]) -> bool:
    """A rule the program wrote: accept, to nothing but our tags' SSH/worker/GPU destinations."""
    return rule.get("action") == "accept" and bool(rule.get("dst")) and set(rule["dst"]) <= shapes


def _foreign(rule: dict[str, Any], tags: set[str]) -> str | None:
    """Why a rule of the organizer's clashes with ours, or None."""
    if any(_host(dst) in tags for dst in rule.get("dst", [])):
        return "reaches our tagged nodes on ports the program does not open"
    if any(src == "*" or src in tags for src in rule.get("src", [])):
        return "lets our tagged nodes (GPU nodes from any cloud) reach beyond the worker API"
    return None


def merged_policy(current: dict[str, Any], ours: dict[str, Any], tags: Iterable[str]) -> dict[str, Any]:
    """The organizer's ``current`` policy with ``ours`` merged in; RunError when they clash."""
    tags = set(tags)
    shapes = {dst for rule in ours["acls"] for dst in rule["dst"]}
    kept = [rule for rule in current.get("acls", []) if not _ours(rule, shapes)]
    clashes = [(rule, why) for rule in kept if (why := _foreign(rule, tags))]
    if any(tag in json.dumps(current.get("grants", [])) for tag in tags):
        clashes.append(({"grants": "..."}, "grants name our tags"))
    if clashes:
        listed = "; ".join(f"{json.dumps(rule)} ({why})" for rule, why in clashes)
        raise pulumi.RunError(
            f"the tailnet policy holds rules the program did not write that clash with its tags "
            f"{', '.join(sorted(tags))}: {listed}. Fix: edit them in the Tailscale admin console "
            "(Access controls) so that only the program's rules name these tags (and replace an "
            "allow-all rule with your own), or set comfy-workshop:tailscale.managePolicy to false and "
            "keep the GPU-tag rule yourself."
        )
    owners = dict(current.get("tagOwners", {}))
    for tag, wanted in ours["tagOwners"].items():
        # Our own tags are owned as configured; another tag we name (sshFrom) keeps its owners too.
        owners[tag] = wanted if tag in tags else list(dict.fromkeys([*owners.get(tag, []), *wanted]))
    return {**current, "tagOwners": owners, "acls": kept + ours["acls"]}


class Tailnet(pulumi.ComponentResource):
    """Keys and policy. ``vps_key`` and ``gpu_key`` are secret outputs."""

    vps_key: pulumi.Output[str]
    gpu_key: pulumi.Output[str]
    policy: tailscale.Acl | None

    def __init__(
        self, name: str, config: TailscaleConfig, worker_port: int, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("comfy-workshop:tailnet:Tailnet", name, None, opts)
        # Keys carry tags, and a tag must be owned in the policy before a key may use it.
        self.policy = self._policy(name, config, worker_port) if config.manage_policy else None
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

    def _policy(self, name: str, config: TailscaleConfig, worker_port: int) -> tailscale.Acl:
        """The organizer's policy as it is now, with our rules merged in (see ``merged_policy``)."""
        ours = tailnet_policy(config, worker_port)
        current = tailscale.get_acl_output(opts=pulumi.InvokeOptions(parent=self))
        tags = (config.vps_tag, config.gpu_tag)
        text = current.json.apply(
            lambda found: json.dumps(merged_policy(json.loads(found), ours, tags), indent=2)
        )
        return tailscale.Acl(
            f"{name}-policy",
            acl=text,
            overwrite_existing_content=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
