"""The local stack: the same platform on this machine's Docker, a CPU worker, no cloud account.

nginx listens on 127.0.0.1 only; workers reach the queue manager on the private network; files
and Redis's data are Docker volumes kept by `pulumi destroy`, and the queue keeper snapshots the
queue into the files volume, so the next `make local` resumes where the last one stopped.
"""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_docker as docker

from infra.config import LocalConfig, manifest_json
from infra.credentials import Credentials
from infra.platform import FILES_DIR, QM_PORT, Platform, PlatformArgs, Publish, data_volume, platform_network
from infra.pool_set import PoolSet
from infra.pools import PoolConfig, PoolContext
from infra.qm_settings import queue_manager_settings
from infra.queue_keeper import AfterRestore, QueueKeeper
from infra.secret import secret
from infra.templates.nginx import NginxSpec, nginx_site
from infra.urls import logins_output, urls

QUEUE_MANAGER_URL = f"http://queue-manager:{QM_PORT}"
NGINX_PORT = 8080


def build_local(config: LocalConfig, stack: str) -> dict[str, Any]:
    """Declare the local platform and return its stack outputs."""
    network = platform_network("network", stack)
    files = data_volume("files", stack, "files", keep=True)
    credentials = Credentials("credentials", config.participants)
    base_url = f"http://localhost:{config.http_port}"
    with AfterRestore() as restore:
        pools = _pools(config, stack, network, files, restore)
        settings = _settings(config, credentials, pools, base_url)
        platform = _platform(config, stack, network, files, settings, credentials.participants)
        QueueKeeper(
            "queue",
            platform.queue_manager_name,
            config.queue.drain_timeout_seconds,
            platform.queue_manager,
            workers=[pools],
            gate=restore,
        )
    return {
        **urls(base_url, list(config.participants)),
        "credentials": logins_output(config.admin_user, credentials.admin_password, credentials.participants),
        "pools": pools.summaries(),
    }


def _pools(
    config: LocalConfig, stack: str, network: docker.Network, files: docker.Volume, restore: AfterRestore
) -> PoolSet:
    """The worker containers, on the platform's network with the files volume and the models folder."""

    def context_for(pool: PoolConfig, token: pulumi.Output[str]) -> PoolContext:
        return PoolContext(
            stack=stack,
            queue_url=QUEUE_MANAGER_URL,
            worker_token=token,
            docker_network=network.name,
            files_volume=files.name,
            models_dir=config.models_dir,
            models_manifest=manifest_json(config.models),
            comfyui=config.comfyui,
            start_after=restore.dependency,
        )

    return PoolSet("pools", config.pools, context_for)


def _settings(
    config: LocalConfig, credentials: Credentials, pools: PoolSet, base_url: str
) -> dict[str, pulumi.Input[str]]:
    """The queue manager's settings: policy, the generated logins, user files in the files volume."""
    return {
        **queue_manager_settings(
            policy=config.queue,
            public_url=base_url,
            admin_user=config.admin_user,
            admin_password=credentials.admin_password,
            session_secret=credentials.session_secret,
            worker_tokens_json=pools.tokens_json(),
            files_url=f"file://{FILES_DIR}",
            models=config.models,
        ),
        **pools.queue_manager_env(),
    }


def _platform(
    config: LocalConfig,
    stack: str,
    network: docker.Network,
    files: docker.Volume,
    settings: dict[str, pulumi.Input[str]],
    participants: pulumi.Output[dict[str, str]],
) -> Platform:
    """Redis, the queue manager and nginx on this machine's Docker, nginx on 127.0.0.1 only."""
    site = NginxSpec("localhost", http_port=NGINX_PORT, max_upload_mb=config.queue.max_upload_mb)
    args = PlatformArgs(
        stack=stack,
        network=network,
        files_volume=files,
        nginx_site=nginx_site(site),
        publish=[Publish(NGINX_PORT, config.http_port, "127.0.0.1")],
        nginx_health_url=f"http://127.0.0.1:{NGINX_PORT}/health",
        settings=settings,
        participants_json=secret(participants.apply(json.dumps)),
        keep_volumes=True,
        comfyui=config.comfyui,
    )
    return Platform("platform", args)
