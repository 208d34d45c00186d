"""A Docker provider for the VPS's daemon over SSH, usable only once cloud-init has finished.

`docker -H ssh://...` runs the system `ssh`, which needs the deploy key and the host key in files:
a local step writes them (key mode 0600) under `.pulumi-local/ssh/`, which git ignores.
"""

from __future__ import annotations

import pulumi
import pulumi_command as command
import pulumi_docker as docker

from infra.images import REPO_ROOT
from infra.secret import secret

SSH_DIR = REPO_ROOT / ".pulumi-local" / "ssh"
WRITE_FILES = (
    'umask 077 && mkdir -p "$SSH_DIR" && cat > "$KEY_FILE" && printf "%s\\n" "$KNOWN_HOST" > "$KNOWN_HOSTS"'
)


def ssh_options(stack: str) -> list[str]:
    return [
        "-i", str(SSH_DIR / f"{stack}_ed25519"),
        "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={SSH_DIR / f'{stack}_known_hosts'}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "ConnectTimeout=20",
    ]  # fmt: skip


class RemoteDocker(pulumi.ComponentResource):
    """``provider`` drives the VPS's Docker daemon; it waits for ``ready``."""

    provider: docker.Provider

    def __init__(
        self,
        name: str,
        stack: str,
        host: pulumi.Input[str],
        host_public_key: pulumi.Input[str],
        private_key: pulumi.Output[str],
        ready: pulumi.Resource,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("comfy-workshop:docker:RemoteDocker", name, None, opts)
        identity = command.local.Command(
            f"{name}-ssh-identity",
            create=WRITE_FILES,
            delete=f"rm -f '{SSH_DIR / f'{stack}_ed25519'}'",
            stdin=secret(private_key),
            environment={
                "SSH_DIR": str(SSH_DIR),
                "KEY_FILE": str(SSH_DIR / f"{stack}_ed25519"),
                "KNOWN_HOSTS": str(SSH_DIR / f"{stack}_known_hosts"),
                "KNOWN_HOST": pulumi.Output.concat(host, " ", host_public_key),
            },
            triggers=[host, host_public_key],
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.provider = docker.Provider(
            f"{name}-provider",
            host=pulumi.Output.concat("ssh://root@", host),
            ssh_opts=ssh_options(stack),
            # Configuring the provider (e.g. in a CI preview) must not need SSH to the VPS.
            disable_docker_daemon_check=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[identity, ready]),
        )
        self.register_outputs({"host": host})
