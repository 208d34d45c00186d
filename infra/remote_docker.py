"""A Docker provider for the VPS's daemon over SSH, usable only once cloud-init has finished.

`docker -H ssh://...` runs the system `ssh`, which needs the deploy key and the host key in files.
The program itself writes them, on every `pulumi preview`/`up`, on whichever machine runs it (a
laptop, a fresh checkout, the deploy workflow): under `~/.ssh/comfy-workshop/`, key mode 0600. The
provider's SSH options name them through `~`, so its configuration is the same on every machine and
a deploy from elsewhere changes nothing. `pulumi destroy` does not need them: everything on the
VPS's Docker goes with the server, and the drain step connects with the key kept in the state.
"""

from __future__ import annotations

import os
from pathlib import Path

import pulumi
import pulumi_docker as docker

IDENTITY_DIR = "~/.ssh/comfy-workshop"


def identity_files(stack: str) -> tuple[str, str]:
    """The key and known-hosts files of ``stack``, as ssh reads them (``~`` is the deploying user's)."""
    return f"{IDENTITY_DIR}/{stack}_ed25519", f"{IDENTITY_DIR}/{stack}_known_hosts"


def ssh_options(stack: str) -> list[str]:
    key, known_hosts = identity_files(stack)
    options = {
        "IdentitiesOnly": "yes",
        "UserKnownHostsFile": known_hosts,
        "StrictHostKeyChecking": "yes",
        "ConnectTimeout": "20",
    }
    return ["-i", key, *[arg for name, value in options.items() for arg in ("-o", f"{name}={value}")]]


def write_identity(stack: str, host: str, host_public_key: str, private_key: str) -> str:
    """Write the deploy key and the VPS's host key where ``ssh_options`` points; return ``host``."""
    key, known_hosts = (Path(os.path.expanduser(path)) for path in identity_files(stack))
    key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path, text in ((key, private_key.rstrip("\n") + "\n"), (known_hosts, f"{host} {host_public_key}\n")):
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
        path.chmod(0o600)
    return host


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
        # The host is known only once the files exist, so nothing uses the provider before that.
        written = pulumi.Output.all(host, host_public_key, private_key).apply(
            lambda values: write_identity(stack, *values)
        )
        self.provider = docker.Provider(
            f"{name}-provider",
            host=pulumi.Output.unsecret(pulumi.Output.concat("ssh://root@", written)),
            ssh_opts=ssh_options(stack),
            # Configuring the provider (e.g. in a CI preview) must not need SSH to the VPS.
            disable_docker_daemon_check=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[ready]),
        )
        self.register_outputs({"host": host})
