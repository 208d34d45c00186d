"""Read the stack's `comfy-workshop:*` config, validate it, and turn every failure into a `Problem`."""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from infra.config import MODELS, Role, StackConfig, WorkshopConfig
from infra.errors import PROJECT, ConfigError, Problem, config_key, set_command
from infra.pools import KINDS, kind_of
from infra.pools.base import RequiredSecret

CLOUDFLARE_TOKEN = RequiredSecret("cloudflare:apiToken", "Cloudflare API token", "CLOUDFLARE_API_TOKEN")
ROLE_SECRETS: dict[Role, tuple[RequiredSecret, ...]] = {
    Role.VAULT: (CLOUDFLARE_TOKEN,),
    Role.WORKSHOP: (
        RequiredSecret("hcloud:token", "Hetzner Cloud API token", "HCLOUD_TOKEN"),
        CLOUDFLARE_TOKEN,
        RequiredSecret("tailscale:apiKey", "Tailscale API key", "TAILSCALE_API_KEY"),
    ),
    Role.LOCAL: (),
}
# Keys of our namespace that hold provider credentials rather than platform settings: they are not
# validated as settings (any key set with --secret is skipped too).
CREDENTIAL_KEYS = frozenset({"verdaClientId", "verdaClientSecret", "runpodApiKey", "registryPassword"})
# A secret that another set key can stand in for (Tailscale takes an API key or an OAuth client).
ALTERNATIVES = {"tailscale:apiKey": ("tailscale:oauthClientSecret", "TAILSCALE_OAUTH_CLIENT_SECRET")}
REGISTRY_PASSWORD = RequiredSecret("comfy-workshop:registryPassword", "registry token", "REGISTRY_PASSWORD")


def raw_config() -> dict[str, Any]:
    """Every `comfy-workshop:` key of the stack, structured values decoded from their JSON text."""
    merged = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    prefix = f"{PROJECT}:"
    return {
        key[len(prefix) :]: _decode(value)
        for key, value in merged.items()
        if key.startswith(prefix)
        and key[len(prefix) :] not in CREDENTIAL_KEYS
        and not runtime_config.is_config_secret(key)
    }


def _decode(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def load_config(stack: str | None = None, raw: Mapping[str, Any] | None = None) -> StackConfig:
    """The validated config of ``stack`` (default: the current stack); raises `ConfigError`."""
    stack = stack or pulumi.get_stack()
    values = dict(raw_config() if raw is None else raw)
    role = _role(stack, values.get("role"))
    values.setdefault("role", role.value)
    problems = list(_unknown_pool_kinds(values.get("pools")))
    config: StackConfig | None = None
    if not problems:
        try:
            config = MODELS[role].model_validate(values)
        except ValidationError as exc:
            problems += [_problem(error, MODELS[role]) for error in exc.errors()]
    if config is not None:
        problems += [_missing(secret) for secret in required_secrets(config) if not _is_set(secret)]
    if problems or config is None:
        raise ConfigError(stack, problems)
    return config


def _role(stack: str, value: Any) -> Role:
    candidate = value if value is not None else stack.rsplit("/", 1)[-1]
    try:
        return Role(candidate)
    except ValueError:
        known = ", ".join(role.value for role in Role)
        raise ConfigError(
            stack,
            [
                Problem(
                    config_key(["role"]),
                    value,
                    f"the stack's role is not one of {known}",
                    f"{set_command(config_key(['role']), '<' + known.replace(', ', '|') + '>')} "
                    "(or name the stack after its role)",
                )
            ],
        ) from None


def _unknown_pool_kinds(pools: Any) -> Iterator[Problem]:
    if not isinstance(pools, list):
        return
    known = ", ".join(sorted(KINDS))
    for index, pool in enumerate(pools):
        kind = pool.get("kind") if isinstance(pool, dict) else None
        if kind not in KINDS:
            yield Problem(
                config_key(["pools", index, "kind"]), kind, "unknown GPU pool kind", f"use one of {known}"
            )


def _problem(error: ErrorDetails, model: type[Any]) -> Problem:
    path = [part for part in error["loc"] if not (isinstance(part, str) and part in KINDS)]
    key = config_key(path)
    value = None if error["type"] == "missing" else error.get("input")
    if error["type"] == "extra_forbidden":
        return Problem(key, value, "unknown key", _unknown_key_fix(path, model))
    if error["type"] == "missing":
        return Problem(key, None, "required key is not set", set_command(key))
    message = error["msg"].removeprefix("Value error, ")
    text, _, fix = message.partition("; fix: ")
    return Problem(key, value, text, fix or set_command(key))


def _unknown_key_fix(path: list[str | int], model: type[Any]) -> str:
    if len(path) == 1:
        known = sorted(field.alias or name for name, field in model.model_fields.items())
        close = difflib.get_close_matches(str(path[0]), known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"{hint}remove it or use one of: {', '.join(known)}"
    return "remove it; the commented stack files list every key this section takes"


def required_secrets(config: StackConfig) -> list[RequiredSecret]:
    """Secrets this stack needs before `pulumi up`: the role's providers, its pools, the registry."""
    secrets = list(ROLE_SECRETS[Role(config.role)])
    if isinstance(config, WorkshopConfig):
        for pool in config.pools:
            secrets += [s for s in kind_of(pool).required_secrets(pool) if s not in secrets]
        if config.registry is not None:
            secrets.append(REGISTRY_PASSWORD)
    return secrets


def _is_set(secret: RequiredSecret) -> bool:
    if runtime_config.get_config(secret.key) is not None or (secret.env and os.environ.get(secret.env)):
        return True
    key, env = ALTERNATIVES.get(secret.key, (None, None))
    return bool(key and runtime_config.get_config(key) is not None) or bool(env and os.environ.get(env))


def _missing(secret: RequiredSecret) -> Problem:
    alternative = f" (or export {secret.env})" if secret.env else ""
    return Problem(
        secret.key, None, f"required secret ({secret.what}) is not set", secret.command + alternative
    )
