"""The workshop stack: the day's CPU tier and GPU pools, wired to the vault it reads.

Order: tailnet keys and policy -> VPS (cloud-init joins the tailnet) -> DNS -> Docker over SSH
once cloud-init is done -> pools (their tokens feed the queue manager) -> Redis, queue manager,
nginx -> the queue keeper, whose drain and snapshot on destroy run before anything else goes
(the GPU pools included, so running jobs finish).
"""

from __future__ import annotations

import json
from typing import Any

import pulumi

from infra.config import WorkshopConfig, manifest_json
from infra.dns import dns_record, web_sources
from infra.platform import Platform, PlatformArgs, Publish, data_volume, platform_network
from infra.pool_set import PoolSet
from infra.pools import PoolConfig, PoolContext
from infra.pools.base import StorageAccess
from infra.qm_settings import queue_manager_settings, s3_settings
from infra.queue_keeper import AfterRestore, QueueKeeper
from infra.remote_docker import RemoteDocker
from infra.secret import secret
from infra.tailnet import Tailnet
from infra.templates.nginx import NginxSpec, Tls, nginx_site
from infra.urls import logins_output, url_outputs
from infra.vault_ref import VaultOutputs
from infra.vps import Vps, VpsArgs

WORKER_API_PORT = 8081


def worker_api_url(vps: Vps) -> pulumi.Output[str]:
    return pulumi.Output.concat("http://", vps.tailnet_name, f":{WORKER_API_PORT}")


def _storage(vault: VaultOutputs, role: str, credentials: pulumi.Output[dict[str, str]]) -> StorageAccess:
    bucket = vault.r2.apply(lambda r2: r2[role])
    return StorageAccess(
        endpoint=bucket.apply(lambda b: b["endpoint"]),
        bucket=bucket.apply(lambda b: b["bucket"]),
        access_key_id=secret(credentials.apply(lambda c: c["accessKeyId"])),
        secret_access_key=secret(credentials.apply(lambda c: c["secretAccessKey"])),
    )


def _nginx(config: WorkshopConfig, sources: list[str]) -> str:
    # Behind Cloudflare, nginx logs and the queue manager see the participant's own address.
    proxies = tuple(sources) if config.vps.web_from_cloudflare_only else ()
    spec = NginxSpec(
        config.domain,
        tls=Tls(),
        http_port=80,
        https_port=443,
        worker_port=WORKER_API_PORT,
        max_upload_mb=config.queue.max_upload_mb,
        trusted_proxies=proxies,
    )
    return nginx_site(spec)


def _host(
    config: WorkshopConfig, stack: str, vault: VaultOutputs, tailnet: Tailnet, web: pulumi.Output[list[str]]
) -> Vps:
    """The VPS and its public name."""
    vps_args = VpsArgs(
        config=config.vps,
        stack=stack,
        deploy_public_key=vault.deploy_public_key,
        deploy_private_key=vault.deploy_private_key,
        tailscale_auth_key=tailnet.vps_key,
        tailscale_tags=(config.tailscale.vps_tag,),
        web_sources=web,
    )
    vps = Vps("vps", vps_args)
    dns_record("dns", config.zone, config.domain, vps.server.ipv4_address)
    return vps


def _pools(
    config: WorkshopConfig, stack: str, vault: VaultOutputs, tailnet: Tailnet, vps: Vps, restore: AfterRestore
) -> PoolSet:
    models = _storage(vault, "models", vault.models_read)
    files = _storage(vault, "userFiles", vault.user_files)

    def context_for(pool: PoolConfig, token: pulumi.Output[str]) -> PoolContext:
        return PoolContext(
            stack=stack,
            # The full MagicDNS name: containers on Docker's bridge may lack the tailnet's search domain.
            queue_url=worker_api_url(vps),
            public_url=config.public_url,
            worker_token=token,
            tailnet_auth_key=tailnet.gpu_key,
            models=models,
            user_files=files,
            registry=config.registry,
            models_manifest=manifest_json(config.models),
            comfyui=config.comfyui,
            start_after=restore.dependency,
        )

    return PoolSet("pools", config.pools, context_for)


def _settings(config: WorkshopConfig, vault: VaultOutputs, pools: PoolSet) -> dict[str, pulumi.Input[str]]:
    """The queue manager's settings: policy, vault credentials, user files in R2, pool tokens."""
    files = _storage(vault, "userFiles", vault.user_files)
    files_url = pulumi.Output.concat("s3://", files.bucket, "/files")
    return {
        **queue_manager_settings(
            policy=config.queue,
            public_url=config.public_url,
            admin_user=vault.admin_user,
            admin_password=vault.admin_password,
            session_secret=vault.session_secret,
            worker_tokens_json=pools.tokens_json(),
            files_url=files_url,
            models=config.models,
        ),
        **s3_settings(files.endpoint, vault.user_files),
        **pools.queue_manager_env(),
    }


def _platform(
    config: WorkshopConfig,
    stack: str,
    vault: VaultOutputs,
    vps: Vps,
    pools: PoolSet,
    provider: RemoteDocker,
    web: pulumi.Output[list[str]],
) -> Platform:
    # Everything on the VPS's Docker goes when the server goes: `pulumi destroy` skips deleting it
    # one by one, so the evening needs SSH only for the drain step (whose key is in the state).
    on_vps = pulumi.ResourceOptions(provider=provider.provider, deleted_with=vps.server)
    args = PlatformArgs(
        stack=stack,
        network=platform_network("network", stack, on_vps),
        files_volume=data_volume("files", stack, "files", keep=False, opts=on_vps),
        nginx_site=web.apply(lambda sources: _nginx(config, sources)),
        publish=[
            Publish(80, 80, "0.0.0.0"),
            Publish(443, 443, "0.0.0.0"),
            # The worker API only on the tailnet address: the tailnet policy decides who reaches it.
            Publish(WORKER_API_PORT, WORKER_API_PORT, vps.tailnet_ip),
        ],
        nginx_health_url=f"http://127.0.0.1:{WORKER_API_PORT}/health",
        settings=_settings(config, vault, pools),
        participants_json=secret(vault.participant_passwords.apply(json.dumps)),
        tls=(vault.origin_certificate, vault.origin_private_key),
        deleted_with=vps.server,
        docker_provider=provider.provider,
        comfyui=config.comfyui,
    )
    return Platform("platform", args, on_vps)


def build_workshop(config: WorkshopConfig, stack: str) -> dict[str, Any]:
    """Declare the workshop in dependency order and return its stack outputs."""
    vault = VaultOutputs(config.vault_stack)
    tailnet = Tailnet("tailnet", config=config.tailscale, worker_port=WORKER_API_PORT)
    web = web_sources(config.vps.web_from_cloudflare_only)
    vps = _host(config, stack, vault, tailnet, web)
    remote = RemoteDocker(
        "docker",
        stack=stack,
        host=vps.ssh_host,
        host_public_key=vps.host_public_key,
        private_key=vault.deploy_private_key,
        ready=vps.ready,
    )
    with AfterRestore() as restore:
        pools = _pools(config, stack, vault, tailnet, vps, restore)
        platform = _platform(config, stack, vault, vps, pools, remote, web)
        QueueKeeper(
            "queue",
            container=platform.queue_manager_name,
            drain_timeout=config.queue.drain_timeout_seconds,
            queue_manager=platform.queue_manager,
            connection=vps.connection,
            after=[vps.ready],
            workers=[pools],
            gate=restore,
        )
    return _outputs(config, vault, vps, pools)


def _outputs(config: WorkshopConfig, vault: VaultOutputs, vps: Vps, pools: PoolSet) -> dict[str, Any]:
    return {
        **url_outputs(config.public_url, vault.participant_names),
        "credentials": logins_output(vault.admin_user, vault.admin_password, vault.participant_passwords),
        "vpsAddress": vps.server.ipv4_address,
        "tailnetNames": {
            "vps": config.vps.hostname,
            "vpsTag": config.tailscale.vps_tag,
            "gpuTag": config.tailscale.gpu_tag,
        },
        "tailnetAddress": vps.tailnet_ip,
        "workerApiUrl": worker_api_url(vps),
        "pools": pools.summaries(),
    }
