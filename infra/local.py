"""The local stack: the same platform on this machine's Docker, a CPU worker, no cloud account."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_docker as docker

from infra.config import LocalConfig
from infra.credentials import Credentials
from infra.pool_set import PoolSet
from infra.pools import PoolConfig, PoolContext
from infra.urls import urls

QUEUE_MANAGER_URL = "http://queue-manager:8000"


def build_local(config: LocalConfig, stack: str) -> dict[str, Any]:
    """Declare the local platform and return its stack outputs."""
    network = docker.Network("network", name=f"comfy-{stack}", internal=False)
    credentials = Credentials("credentials", config.participants)
    base_url = f"http://localhost:{config.http_port}"

    def context_for(pool: PoolConfig, token: pulumi.Output[str]) -> PoolContext:
        return PoolContext(
            stack=stack,
            queue_url=QUEUE_MANAGER_URL,
            callback_url=QUEUE_MANAGER_URL,
            worker_token=token,
            docker_network=network.name,
        )

    pools = PoolSet("pools", config.pools, context_for)
    return {
        **urls(base_url, list(config.participants)),
        "credentials": pulumi.Output.secret(
            pulumi.Output.all(
                admin={"user": config.admin_user, "password": credentials.admin_password},
                participants=credentials.participants,
            )
        ),
        "pools": pools.summaries(),
    }
