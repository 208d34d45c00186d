"""The workshop stack: the day's CPU tier and GPU pools, wired to the vault it reads."""

from __future__ import annotations

from typing import Any

import pulumi

from infra.config import WorkshopConfig
from infra.pool_set import PoolSet
from infra.pools import PoolConfig, PoolContext
from infra.urls import url_outputs
from infra.vault_ref import VaultOutputs

WORKER_API_PORT = 8081


def build_workshop(config: WorkshopConfig, stack: str) -> dict[str, Any]:
    """Declare the workshop in dependency order and return its stack outputs."""
    vault = VaultOutputs(config.vault_stack)
    base_url = f"https://{config.domain}"
    queue_url = f"http://{config.vps.hostname}:{WORKER_API_PORT}"

    def context_for(pool: PoolConfig, token: pulumi.Output[str]) -> PoolContext:
        return PoolContext(stack=stack, queue_url=queue_url, callback_url=base_url, worker_token=token)

    pools = PoolSet("pools", config.pools, context_for)
    return {
        **url_outputs(base_url, vault.participant_names),
        "credentials": pulumi.Output.secret(
            pulumi.Output.all(
                admin={"user": vault.admin_user, "password": vault.admin_password},
                participants=vault.participant_passwords,
            )
        ),
        "tailnetNames": {"vps": config.vps.hostname},
        "pools": pools.summaries(),
    }
