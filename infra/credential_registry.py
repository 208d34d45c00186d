"""Every credential the program and its providers use, each declared once: its stack config key, the
environment variable that may stand in for it, what it is, and where to get it.

The pre-flight check (`infra.loading`) asks `satisfied()`, the pools read `value()`, the dynamic
providers read `from_props()` in their own process, and every message about a missing or refused
credential is written from the same object, so the key and the variable are spelled in one place.
A credential given only as an environment variable reaches the program as a Pulumi secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config

from infra.secret import secret


@dataclass(frozen=True)
class Credential:
    """One secret (or id) the organizer provides; ``key`` is the full config key (`ns:name`)."""

    key: str
    env: str | None
    what: str
    how: str
    needed_for: str
    is_secret: bool = True

    @property
    def namespace(self) -> str:
        return self.key.split(":", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(":", 1)[1]

    @property
    def command(self) -> str:
        """The command that sets it in the stack config."""
        flag = " --secret" if self.is_secret else ""
        return f"pulumi config set{flag} '{self.key}' <{self.what}>"

    @property
    def fix(self) -> str:
        """How to provide it, in one line: the command, the variable, where to get the value."""
        alternative = f" (or export {self.env})" if self.env else ""
        return f"{self.command}{alternative}; {self.how}"

    def given(self) -> str | None:
        """The plain value as configured (stack config first, then the variable); None when neither
        gives one, or only an empty one."""
        configured = runtime_config.get_config(self.key)
        if configured:
            return str(configured)
        return (os.environ.get(self.env) if self.env else None) or None

    def is_set(self) -> bool:
        return self.given() is not None

    def flaw(self) -> str | None:
        """What is wrong with the given value, if anything (never showing it)."""
        value = self.given()
        if value is not None and any(char.isspace() for char in value):
            return f"{self.what} holds a space or a line break (copied along with it?)"
        return None

    def value(self) -> pulumi.Output[str] | None:
        """The value for a resource input, kept secret when it is one; None when not given at all."""
        config = pulumi.Config(self.namespace)
        configured = config.get_secret(self.name) if self.is_secret else config.get(self.name)
        if configured is not None:
            return secret(configured) if self.is_secret else pulumi.Output.from_input(configured)
        from_env = os.environ.get(self.env) if self.env else None
        if not from_env:
            return None
        return secret(from_env) if self.is_secret else pulumi.Output.from_input(from_env)

    def required(self) -> pulumi.Output[str]:
        """``value()`` where the pre-flight check has already required it."""
        found = self.value()
        if found is None:
            raise pulumi.RunError(f"{self.what} ({self.key}) is not set: {self.fix}")
        return found


HCLOUD_TOKEN = Credential(
    key="hcloud:token",
    env="HCLOUD_TOKEN",
    what="Hetzner Cloud API token",
    how="Hetzner Cloud console > your project > Security > API tokens (read & write)",
    needed_for="workshop",
)
CLOUDFLARE_TOKEN = Credential(
    key="cloudflare:apiToken",
    env="CLOUDFLARE_API_TOKEN",
    what="Cloudflare API token",
    how=(
        "Cloudflare dashboard > My Profile > API Tokens; vault: Account > Workers R2 Storage: Edit, "
        "User > API Tokens: Edit, Zone > SSL and Certificates: Edit; workshop: Zone > DNS: Edit"
    ),
    needed_for="vault, workshop",
)
TAILSCALE_API_KEY = Credential(
    key="tailscale:apiKey",
    env="TAILSCALE_API_KEY",
    what="Tailscale API key",
    how="Tailscale admin console > Settings > Keys > API access token",
    needed_for="workshop (or the OAuth client)",
)
TAILSCALE_OAUTH_SECRET = Credential(
    key="tailscale:oauthClientSecret",
    env="TAILSCALE_OAUTH_CLIENT_SECRET",
    what="Tailscale OAuth client secret",
    how=(
        "Tailscale admin console > Settings > OAuth clients (scopes auth_keys and policy_file; set "
        "tailscale:oauthClientId too)"
    ),
    needed_for="workshop, instead of the API key",
)
VERDA_CLIENT_ID = Credential(
    key="comfy-workshop:verdaClientId",
    env="VERDA_CLIENT_ID",
    what="Verda API client id",
    how="Verda cloud console > Keys > Cloud API credentials",
    needed_for="verda-* pools",
    is_secret=False,
)
VERDA_CLIENT_SECRET = Credential(
    key="comfy-workshop:verdaClientSecret",
    env="VERDA_CLIENT_SECRET",
    what="Verda API client secret",
    how="Verda cloud console > Keys > Cloud API credentials",
    needed_for="verda-* pools",
)
VERDA_INFERENCE_KEY = Credential(
    key="comfy-workshop:verdaInferenceKey",
    env="VERDA_INFERENCE_KEY",
    what="Verda inference API key",
    how=(
        "Verda cloud console > Keys > Inference API keys (the queue manager calls container endpoints "
        "with it)"
    ),
    needed_for="verda-serverless pools",
)
RUNPOD_API_KEY = Credential(
    key="comfy-workshop:runpodApiKey",
    env="RUNPOD_API_KEY",
    what="RunPod API key",
    how="RunPod console > Settings > API Keys (read/write)",
    needed_for="runpod-serverless pools",
)
REGISTRY_PASSWORD = Credential(
    key="comfy-workshop:registryPassword",
    env="REGISTRY_PASSWORD",
    what="container registry token",
    how=(
        "a token of `registry.username` that may push to `registry.repository` (ghcr: a PAT with "
        "write:packages)"
    ),
    needed_for="pools that pull the worker image (when `registry` is set)",
)

# A credential another one can stand in for (Tailscale takes an API key or an OAuth client).
ALTERNATIVES: dict[Credential, Credential] = {TAILSCALE_API_KEY: TAILSCALE_OAUTH_SECRET}
ALL = (
    HCLOUD_TOKEN,
    CLOUDFLARE_TOKEN,
    TAILSCALE_API_KEY,
    TAILSCALE_OAUTH_SECRET,
    VERDA_CLIENT_ID,
    VERDA_CLIENT_SECRET,
    VERDA_INFERENCE_KEY,
    RUNPOD_API_KEY,
    REGISTRY_PASSWORD,
)
# Keys of our namespace that hold credentials rather than platform settings (not validated as settings).
OWN_KEYS = frozenset(c.name for c in ALL if c.namespace == "comfy-workshop")


def satisfied(credential: Credential) -> bool:
    """Set itself, or through the credential that may stand in for it."""
    alternative = ALTERNATIVES.get(credential)
    return credential.is_set() or (alternative is not None and alternative.is_set())


def from_props(props: Mapping[str, Any], **wanted: Credential) -> dict[str, str]:
    """In a dynamic provider: each ``prop -> credential`` from the resource's own (secret) input, else
    from the credential's environment variable; every missing one is named with its fix at once."""
    found = {prop: props.get(prop) or (c.env and os.environ.get(c.env)) for prop, c in wanted.items()}
    missing = [credential for prop, credential in wanted.items() if not found[prop]]
    if missing:
        raise ValueError("missing " + "; ".join(f"{c.what}: {c.fix}" for c in missing))
    return {prop: str(value) for prop, value in found.items()}


def refused(*credentials: Credential) -> str:
    """What to do when a provider refuses ``credentials``. A refresh and a destroy call the provider
    with what the last `up` stored in the state, not with the stack config, so a key revoked and set
    anew is refused there until an `up` stores the new one."""
    fixes = "; and ".join(c.fix for c in credentials)
    return (
        f"Check the {' and '.join(c.what for c in credentials)}: {fixes}. `pulumi refresh` and "
        "`pulumi destroy` use the one stored by the last `pulumi up`: after setting a new one, run "
        "`pulumi up` first."
    )


def markdown_table(credentials: tuple[Credential, ...] = ALL) -> str:
    """The README's credential table, written from the registry (`python -m infra.credential_registry`)."""
    rows = [
        "| config key | or environment variable | what | needed for | where to get it |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in credentials:
        flag = "--secret " if c.is_secret else ""
        rows.append(f"| `{flag}{c.key}` | `{c.env}` | {c.what} | {c.needed_for} | {c.how} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
