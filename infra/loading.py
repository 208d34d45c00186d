"""Read the stack's `comfy-workshop:*` config, validate it, and turn every failure into a `Problem`."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from infra.config import MODELS, Role, StackConfig, WorkshopConfig
from infra.credential_registry import (
    CLOUDFLARE_TOKEN,
    HCLOUD_TOKEN,
    OWN_KEYS,
    REGISTRY_PASSWORD,
    TAILSCALE_API_KEY,
    Credential,
    satisfied,
)
from infra.errors import HIDDEN, PROJECT, ConfigError, Problem, config_key, set_command
from infra.pools import KINDS, kind_of
from infra.pools.base import NAME_LIMIT

HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
ROLE_CREDENTIALS: dict[Role, tuple[Credential, ...]] = {
    Role.VAULT: (CLOUDFLARE_TOKEN,),
    Role.WORKSHOP: (HCLOUD_TOKEN, CLOUDFLARE_TOKEN, TAILSCALE_API_KEY),
    Role.LOCAL: (),
}


def raw_config() -> dict[str, Any]:
    """Every `comfy-workshop:` key of the stack, structured values decoded from their JSON text."""
    merged = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    prefix = f"{PROJECT}:"
    return {
        key[len(prefix) :]: _decode(value)
        for key, value in merged.items()
        if key.startswith(prefix)
        and key[len(prefix) :] not in OWN_KEYS
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
        problems += list(_credential_problems(required_credentials(config)))
        problems += list(_name_problems(config, stack))
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


def required_credentials(config: StackConfig) -> list[Credential]:
    """Credentials this stack needs before `pulumi up`: the role's providers, its pools, the registry."""
    needed = list(ROLE_CREDENTIALS[Role(config.role)])
    if isinstance(config, WorkshopConfig):
        for pool in config.pools:
            needed += [c for c in kind_of(pool).credentials(pool) if c not in needed]
        if config.registry is not None:
            needed.append(REGISTRY_PASSWORD)
    return needed


def _name_problems(config: StackConfig, stack: str) -> Iterator[Problem]:
    """Each pool whose objects a provider would refuse for their name, made of the stack's and the
    pool's: one Verda takes only as a host name, or one (the longest) past ``NAME_LIMIT``. The
    provider's refusal would come mid-up, after the VPS was made."""
    workshop = config.public_url if isinstance(config, WorkshopConfig) else stack
    for index, pool in enumerate(getattr(config, "pools", ())):
        kind = kind_of(pool)
        bad = [name for name in kind.host_names(pool, stack) if not HOST_NAME.fullmatch(name)]
        longest = max(kind.names(pool, stack, workshop), key=len, default="")
        where = config_key(["pools", index, "name"])
        if bad:
            yield Problem(
                where,
                pool.name,
                f"the pool's objects are named after the stack {stack!r}, as {bad[-1]!r}, which is no host "
                f"name (at most {NAME_LIMIT} lower-case letters, digits and '-')",
                "pulumi stack rename <a name of lower-case letters, digits and '-'> (before the stack's "
                "first up), or a shorter pool name",
            )
        elif len(longest) > NAME_LIMIT:
            excess = len(longest) - NAME_LIMIT
            yield Problem(
                where,
                pool.name,
                f"the pool's objects at {kind.kind} are named after the stack {stack!r} and the pool: "
                f"{longest!r} is {len(longest)} characters, over the {NAME_LIMIT} a name there may have",
                f"a pool name {excess} characters shorter, or pulumi stack rename <a name {excess} "
                "characters shorter> (before the stack's first up)",
            )


def _credential_problems(needed: list[Credential]) -> Iterator[Problem]:
    """Each required credential missing (or empty), or given with a space or line break in it."""
    for credential in needed:
        if not satisfied(credential):
            what = "required secret" if credential.is_secret else "required setting"
            yield Problem(credential.key, None, f"{what} ({credential.what}) is not set", credential.fix)
        elif (flaw := credential.flaw()) is not None:
            shown = HIDDEN if credential.is_secret else credential.given()
            yield Problem(credential.key, shown, flaw, f"set it again without it: {credential.fix}")
