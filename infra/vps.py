"""The Hetzner VPS: SSH key, firewall, optional data volume, the server with its cloud-init, and a
step that waits until cloud-init has finished, so nothing talks to Docker on a half-built host.

Replacing the server is never a side effect: changes to its cloud-init, SSH keys or image are
ignored on update (`pulumi up --replace <server urn>` replaces it on purpose).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_hcloud as hcloud
import pulumi_tls as tls

from infra.config import VpsConfig
from infra.templates import read
from infra.templates.cloud_init import CloudInitSpec, cloud_init

ANYWHERE = ["0.0.0.0/0", "::/0"]
TAILSCALE_PORT = "41641"


def firewall_rules(config: VpsConfig, web_sources: list[str]) -> list[hcloud.FirewallRuleArgsDict]:
    """Inbound: the site from ``web_sources`` (Cloudflare's ranges: it proxies every request),
    Tailscale's direct UDP from anywhere, SSH only from the allow-list (else over the tailnet)."""
    rules: list[hcloud.FirewallRuleArgsDict] = [
        {"direction": "in", "protocol": "tcp", "port": "80", "source_ips": web_sources},
        {"direction": "in", "protocol": "tcp", "port": "443", "source_ips": web_sources},
        {"direction": "in", "protocol": "udp", "port": TAILSCALE_PORT, "source_ips": ANYWHERE},
        {"direction": "in", "protocol": "icmp", "source_ips": ANYWHERE},
    ]
    if config.ssh_allow_list:
        sources = [str(network) for network in config.ssh_allow_list]
        rules.append({"direction": "in", "protocol": "tcp", "port": "22", "source_ips": sources})
    return rules


@dataclass(frozen=True)
class VpsArgs:
    config: VpsConfig
    stack: str
    deploy_public_key: pulumi.Input[str]
    deploy_private_key: pulumi.Input[str]
    tailscale_auth_key: pulumi.Output[str]
    tailscale_tags: tuple[str, ...]
    web_sources: pulumi.Output[list[str]]


class Vps(pulumi.ComponentResource):
    """``ready`` finishes after cloud-init; ``connection`` is how Pulumi's SSH steps reach the host."""

    server: hcloud.Server
    firewall: hcloud.Firewall
    volume: hcloud.Volume | None
    ready: command.remote.Command
    connection: command.remote.ConnectionArgs
    ssh_host: pulumi.Output[str]
    host_public_key: pulumi.Output[str]
    tailnet_ip: pulumi.Output[str]
    tailnet_name: pulumi.Output[str]

    def __init__(self, name: str, args: VpsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("comfy-workshop:vps:Vps", name, None, opts)
        config = args.config
        child = pulumi.ResourceOptions(parent=self)
        labels = {"app": "comfy-workshop", "stack": args.stack}
        ssh_key = hcloud.SshKey(
            f"{name}-ssh-key", public_key=args.deploy_public_key, labels=labels, opts=child
        )
        rules = args.web_sources.apply(lambda sources: firewall_rules(config, sources))
        self.firewall = hcloud.Firewall(f"{name}-firewall", rules=rules, labels=labels, opts=child)
        host_key = tls.PrivateKey(f"{name}-host-key", algorithm="ED25519", opts=child)
        self.host_public_key = host_key.public_key_openssh
        self.volume = self._volume(name, config, labels)
        self.server = self._server(name, args, ssh_key, host_key, labels)
        attachment = self._attach(name)
        self.ssh_host = (
            self.server.ipv4_address if config.ssh_allow_list else pulumi.Output.from_input(config.hostname)
        )
        self.connection = command.remote.ConnectionArgs(
            host=self.ssh_host,
            user="root",
            private_key=pulumi.Output.secret(args.deploy_private_key),
            host_key=self.host_public_key,
            dial_error_limit=90,
            per_dial_timeout=10,
        )
        self.ready = self._ready(name, attachment)
        # The ready step prints the tailnet address, then the full MagicDNS name, as its last lines.
        self.tailnet_ip = self.ready.stdout.apply(lambda out: _last_lines(out)[0])
        self.tailnet_name = self.ready.stdout.apply(lambda out: _last_lines(out)[1])
        self.register_outputs({"ipv4": self.server.ipv4_address, "sshHost": self.ssh_host})

    def _volume(self, name: str, config: VpsConfig, labels: dict[str, str]) -> hcloud.Volume | None:
        if config.data_volume_gb is None:
            return None
        return hcloud.Volume(
            f"{name}-data",
            size=config.data_volume_gb,
            location=config.location,
            format="ext4",
            labels=labels,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _server(
        self,
        name: str,
        args: VpsArgs,
        ssh_key: hcloud.SshKey,
        host_key: tls.PrivateKey,
        labels: dict[str, str],
    ) -> hcloud.Server:
        config = args.config
        volume_id = self.volume.id if self.volume is not None else None

        def render(values: list[str | None]) -> str:
            auth_key, private_key, public_key, volume = values
            spec = CloudInitSpec(
                hostname=config.hostname,
                tailscale_tags=args.tailscale_tags,
                tailscale_auth_key=str(auth_key),
                host_private_key=str(private_key),
                host_public_key=str(public_key),
                data_volume_id=volume,
            )
            return cloud_init(spec)

        user_data: pulumi.Output[str] = pulumi.Output.all(
            args.tailscale_auth_key, host_key.private_key_openssh, host_key.public_key_openssh, volume_id
        ).apply(render)
        user_data = pulumi.Output.secret(user_data)  # it holds the tailnet key and the host key
        return hcloud.Server(
            f"{name}-server",
            name=config.hostname,
            server_type=config.server_type,
            image=config.image,
            location=config.location,
            ssh_keys=[ssh_key.id],
            firewall_ids=[self.firewall.id.apply(int)],
            user_data=user_data,
            public_nets=[hcloud.ServerPublicNetArgs(ipv4_enabled=True, ipv6_enabled=True)],
            labels=labels,
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["userData", "sshKeys", "image"]),
        )

    def _attach(self, name: str) -> hcloud.VolumeAttachment | None:
        if self.volume is None:
            return None
        return hcloud.VolumeAttachment(
            f"{name}-data-attachment",
            server_id=self.server.id.apply(int),
            volume_id=self.volume.id.apply(int),
            automount=False,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _ready(self, name: str, attachment: hcloud.VolumeAttachment | None) -> command.remote.Command:
        # `delete` takes the VPS out of the tailnet before the server goes, so tomorrow's VPS gets
        # the same tailnet name instead of "<hostname>-1".
        waits_for: list[pulumi.Resource] = [self.server, *([attachment] if attachment else [])]
        return command.remote.Command(
            f"{name}-ready",
            connection=self.connection,
            create="sh -s",
            stdin=read("wait-ready.sh"),
            # Detached and delayed: logging out cuts the tailnet this very SSH session may run over.
            delete="nohup sh -c 'sleep 3; tailscale logout' >/dev/null 2>&1 &",
            triggers=[self.server.id],
            opts=pulumi.ResourceOptions(parent=self, depends_on=waits_for),
        )


def _last_lines(stdout: str) -> tuple[str, str]:
    lines = stdout.strip().splitlines()
    if len(lines) < 2:
        raise pulumi.RunError(
            f"the VPS's ready step printed {stdout!r}, not its tailnet address and name: is Tailscale up "
            "there? (`tailscale status` on the VPS)"
        )
    return lines[-2].strip(), lines[-1].strip()
