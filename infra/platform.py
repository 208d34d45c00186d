"""The CPU tier's containers on one Docker daemon: Redis, the queue manager and nginx.

Redis is on the private network only (no published port, an ACL user without dangerous commands,
AOF on a volume); the queue manager is reached only through nginx; nginx publishes exactly the
ports ``PlatformArgs`` lists. Settings are environment variables, and the whole list is secret
because some entries are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_docker as docker
import pulumi_random as random

from infra.comfyui import ComfyUIConfig
from infra.images import build_image, queue_manager_source
from infra.secret import secret
from services.queue_manager.durability import redis_conf_lines

REDIS_IMAGE = "redis:7.4-alpine"
NGINX_IMAGE = "nginx:1.27-alpine"
QM_PORT = 8000
FILES_DIR = "/var/lib/comfy-workshop/files"
PARTICIPANTS_FILE = "/run/secrets/participants.json"
REDIS_CONF = "/usr/local/etc/redis/redis.conf"


@dataclass(frozen=True)
class Publish:
    """A host port nginx listens on: ``ip`` "0.0.0.0" is public, "127.0.0.1" local, else a tailnet IP."""

    internal: int
    external: int
    ip: pulumi.Input[str]


@dataclass(frozen=True)
class PlatformArgs:
    stack: str
    network: docker.Network
    files_volume: docker.Volume
    nginx_site: pulumi.Input[str]
    publish: list[Publish]
    nginx_health_url: str
    settings: dict[str, pulumi.Input[str]]
    participants_json: pulumi.Input[str]
    tls: tuple[pulumi.Input[str], pulumi.Input[str]] | None = None
    keep_volumes: bool = False
    # On the VPS: the containers go with the server, so destroying needs no SSH to Docker.
    deleted_with: pulumi.Resource | None = None
    # The daemon the containers run on (None: this machine's); images are built for it.
    docker_provider: pulumi.ProviderResource | None = None
    # The ComfyUI the GPUs run: the queue manager serves the frontend it pins.
    comfyui: ComfyUIConfig = field(default_factory=ComfyUIConfig)


def data_volume(
    name: str, stack: str, role: str, keep: bool, opts: pulumi.ResourceOptions | None = None
) -> docker.Volume:
    """A named Docker volume; ``keep`` leaves it (and its data) behind when the stack is destroyed."""
    # The local stack keeps files and queue across `make local-down`; the workshop's are in the vault.
    return docker.Volume(
        name,
        name=f"comfy-{stack}-{role}",
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(retain_on_delete=keep)),
    )


def platform_network(name: str, stack: str, opts: pulumi.ResourceOptions | None = None) -> docker.Network:
    """The private network Redis, the queue manager, nginx and local workers share."""
    return docker.Network(name, name=f"comfy-{stack}", opts=opts)


REDIS_USER = "queue-manager"
REDIS_COMMANDS = "+@all -@dangerous +config|get +info"
"""What the queue manager's Redis user may run: every command but Redis's dangerous ones (CONFIG SET
and REWRITE, DEBUG, KEYS, FLUSHALL, FLUSHDB, SHUTDOWN, MONITOR, REPLICAOF, MIGRATE, ...), plus the
two read-only ones its start-up durability check uses (CONFIG GET, INFO)."""


def redis_conf(password: str) -> str:
    """The queue's durability policy (AOF, fsync on every write: services/queue_manager/durability.py),
    no persistence besides AOF, and one ACL user, the queue manager's, with a password and without the
    dangerous commands; the passwordless default user is off."""
    return (
        f"user default off\nuser {REDIS_USER} on >{password} ~* &* {REDIS_COMMANDS}\n"
        f'{redis_conf_lines()}save ""\ndir /data\nprotected-mode yes\n'
    )


def env_list(settings: dict[str, pulumi.Input[str]]) -> pulumi.Output[list[str]]:
    """`["K=V", ...]` for a container, secret as a whole (passwords and tokens are among them)."""
    pairs = [pulumi.Output.concat(key, "=", value) for key, value in sorted(settings.items())]
    return pulumi.Output.secret(pulumi.Output.all(*pairs))


class Platform(pulumi.ComponentResource):
    network: docker.Network
    redis: docker.Container
    queue_manager: docker.Container
    nginx: docker.Container
    queue_manager_name: str

    def __init__(self, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("comfy-workshop:platform:Platform", name, None, opts)
        self.args = args
        self.prefix = f"comfy-{args.stack}"
        self.child = pulumi.ResourceOptions(parent=self, deleted_with=args.deleted_with)
        self.network = args.network
        password = random.RandomPassword(f"{name}-redis-password", length=40, special=False, opts=self.child)
        self.redis = self._redis(name, password.result)
        self.queue_manager_name = f"{self.prefix}-queue-manager"
        self.queue_manager = self._queue_manager(name, password.result)
        self.nginx = self._nginx(name)
        self.register_outputs({"network": self.network.name})

    def _volume(self, name: str, role: str) -> docker.Volume:
        return data_volume(f"{name}-{role}", self.args.stack, role, self.args.keep_volumes, self.child)

    def _pulled(self, name: str, image: str) -> docker.RemoteImage:
        return docker.RemoteImage(f"{name}-image", name=image, keep_locally=True, opts=self.child)

    def _network(self, alias: str) -> list[docker.ContainerNetworksAdvancedArgs]:
        return [docker.ContainerNetworksAdvancedArgs(name=self.network.name, aliases=[alias])]

    def _redis(self, name: str, password: pulumi.Output[str]) -> docker.Container:
        from_conf = f"$(awk '/^user {REDIS_USER} /{{print substr($4, 2)}}' {REDIS_CONF})"
        probe = f'redis-cli --user {REDIS_USER} --pass "{from_conf}" --no-auth-warning ping'
        return docker.Container(
            f"{name}-redis",
            name=f"{self.prefix}-redis",
            image=self._pulled(f"{name}-redis", REDIS_IMAGE).image_id,
            command=["redis-server", REDIS_CONF],
            uploads=[
                docker.ContainerUploadArgs(
                    file=REDIS_CONF, content=pulumi.Output.secret(password.apply(redis_conf))
                )
            ],
            volumes=[
                docker.ContainerVolumeArgs(
                    volume_name=self._volume(name, "redis").name, container_path="/data"
                )
            ],
            networks_advanced=self._network("redis"),
            healthcheck=_health(["CMD-SHELL", f"{probe} | grep -q PONG"]),
            restart="unless-stopped",
            wait=True,
            opts=self.child,
        )

    def _queue_manager(self, name: str, password: pulumi.Output[str]) -> docker.Container:
        redis_url = secret(pulumi.Output.concat(f"redis://{REDIS_USER}:", password, "@redis:6379/0"))
        settings = {
            **self.args.settings,
            "QM_REDIS_URL": redis_url,
            "QM_PARTICIPANTS_FILE": PARTICIPANTS_FILE,
            # uvicorn's --proxy-headers: only nginx can reach the queue manager on the private network.
            "FORWARDED_ALLOW_IPS": "*",
        }
        probe = (
            f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{QM_PORT}/ready', timeout=4)"
        )
        return docker.Container(
            f"{name}-queue-manager",
            name=self.queue_manager_name,
            image=build_image(
                f"{name}-queue-manager-image",
                queue_manager_source(self.args.comfyui),
                self.args.docker_provider,
                self.child,
            ),
            envs=env_list(settings),
            uploads=[
                docker.ContainerUploadArgs(
                    file=PARTICIPANTS_FILE, content=pulumi.Output.secret(self.args.participants_json)
                )
            ],
            volumes=[
                docker.ContainerVolumeArgs(volume_name=self.args.files_volume.name, container_path=FILES_DIR)
            ],
            networks_advanced=self._network("queue-manager"),
            healthcheck=_health(["CMD", "python", "-c", probe]),
            restart="unless-stopped",
            wait=True,
            opts=pulumi.ResourceOptions.merge(self.child, pulumi.ResourceOptions(depends_on=[self.redis])),
        )

    def _nginx(self, name: str) -> docker.Container:
        uploads = [
            docker.ContainerUploadArgs(file="/etc/nginx/conf.d/default.conf", content=self.args.nginx_site)
        ]
        if self.args.tls is not None:
            cert, key = self.args.tls
            uploads += [
                docker.ContainerUploadArgs(file="/etc/nginx/tls/origin.pem", content=cert),
                docker.ContainerUploadArgs(
                    file="/etc/nginx/tls/origin.key", content=pulumi.Output.secret(key)
                ),
            ]
        return docker.Container(
            f"{name}-nginx",
            name=f"{self.prefix}-nginx",
            image=self._pulled(f"{name}-nginx", NGINX_IMAGE).image_id,
            uploads=uploads,
            ports=[
                docker.ContainerPortArgs(internal=p.internal, external=p.external, ip=p.ip)
                for p in self.args.publish
            ],
            networks_advanced=self._network("nginx"),
            healthcheck=_health(
                ["CMD-SHELL", f"wget -q -O /dev/null {self.args.nginx_health_url} || exit 1"]
            ),
            restart="unless-stopped",
            wait=True,
            opts=pulumi.ResourceOptions.merge(
                self.child, pulumi.ResourceOptions(depends_on=[self.queue_manager])
            ),
        )


def _health(test: list[str]) -> docker.ContainerHealthcheckArgs:
    return docker.ContainerHealthcheckArgs(
        tests=test, interval="10s", timeout="5s", retries=6, start_period="20s"
    )
