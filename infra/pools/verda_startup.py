"""The first-boot script of a Verda GPU instance, as a pure function of what the pool knows.

It installs what the image may lack (Docker, the NVIDIA container toolkit) only when missing, mounts
the shared filesystem with the models (or uses the host's disk), joins the tailnet with the pool's
ephemeral key, logs in to the registry, fills the models folder once (``sync-models`` with it
writable: on a shared filesystem one host syncs under the volume's lock while the others wait),
and runs ``workers_per_gpu`` worker containers on every GPU the host has, the models read-only. Secrets
(tailnet key, registry token, the containers' env files) are written to root-only files through
quoted here-documents, never onto a command line; the whole script is a Pulumi secret. Each kind of
container reads its own env file, with only the keys its work needs (``host_sync_split``): the
models sync has the models bucket's read key but not the files'; the workers, which only read the
models folder, have the files' key but not the models bucket's.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, replace

from infra.pools.access import SHARED_MODELS_DIR, host_sync_split

SECRETS_DIR = "/etc/comfy-workshop"
TOOLKIT_REPO = "https://nvidia.github.io/libnvidia-container"


@dataclass(frozen=True)
class StartupSpec:
    pool: str
    image: str
    workers_per_gpu: int
    tailnet_key: str
    registry_server: str
    registry_username: str
    registry_password: str
    worker_env: Mapping[str, str]
    mount_command: str | None = None
    sync_models: bool = False


def _heredoc(path: str, content: str) -> str:
    marker = "COMFY_WORKSHOP_EOF"
    if marker in content:
        raise ValueError(f"{path}: content must not contain {marker}")
    return f"cat > {path} <<'{marker}'\n{content}\n{marker}\nchmod 600 {path}\n"


def env_file(env: Mapping[str, str]) -> str:
    """Docker's --env-file format: one KEY=value per line, taken literally."""
    bad = [key for key, value in env.items() if "\n" in value or "=" in key]
    if bad:
        raise ValueError(f"environment values of {bad} cannot go into an env file (newline or '=' in key)")
    return "\n".join(f"{key}={value}" for key, value in sorted(env.items()))


PRELUDE = """#!/usr/bin/env bash
# comfy-workshop GPU host (pool {pool}): written by the Pulumi program, runs once at first boot.
set -euo pipefail
exec >>/var/log/comfy-workshop-setup.log 2>&1
umask 077
mkdir -p {secrets}
"""

TOOLS = """
if ! command -v docker >/dev/null 2>&1; then
  curl -fsSL https://get.docker.com | sh
fi
if ! command -v nvidia-ctk >/dev/null 2>&1; then
  curl -fsSL {repo}/gpgkey | gpg --dearmor --yes -o /usr/share/keyrings/nvidia-container-toolkit.gpg
  curl -fsSL {repo}/stable/deb/nvidia-container-toolkit.list \\
    | sed 's#deb https://#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit.gpg] https://#' \\
    > /etc/apt/sources.list.d/nvidia-container-toolkit.list
  apt-get update
  apt-get install -y nvidia-container-toolkit
  nvidia-ctk runtime configure --runtime=docker
  systemctl restart docker
fi
if ! command -v tailscale >/dev/null 2>&1; then
  curl -fsSL https://tailscale.com/install.sh | sh
fi
"""

MOUNT = """
mkdir -p {target}
if ! mountpoint -q {target}; then
  {mount}
fi
ln -sfn {target} {models}
"""

SYNC = """
# Every file of the manifest, sha256-verified, before any worker starts (progress in this log and on
# the admin page); a file missing from the models bucket stops here with the list of what is wrong.
docker run --rm --env-file {secrets}/models-sync.env --env "WORKER_ID=$(hostname)-models" \\
  --volume {models}:{models} {image} sync-models
"""

JOIN = """
# The key is ephemeral and tagged: the node leaves the tailnet when the instance is deleted.
tailscale up --auth-key=file:{secrets}/tailnet.key --hostname="comfy-{pool}-$(hostname)" --accept-dns=true
docker login {server} --username {user} --password-stdin < {secrets}/registry.password
docker pull {image}
"""

WORKERS = """
gpus=$(nvidia-smi --list-gpus | wc -l)
for gpu in $(seq 0 $((gpus - 1))); do
  for slot in $(seq 0 $(({per_gpu} - 1))); do
    name="comfy-worker-$gpu-$slot"
    docker rm -f "$name" >/dev/null 2>&1 || true
    docker run -d --name "$name" --restart unless-stopped --gpus "device=$gpu" \\
      --env-file {secrets}/worker.env --env "WORKER_ID=$(hostname)-$gpu-$slot" \\
      {volume}{image} pull
  done
done
"""


def startup_script(spec: StartupSpec) -> str:
    q = shlex.quote
    sync_env, workers_env = host_sync_split(spec.worker_env)
    parts = [
        PRELUDE.format(pool=spec.pool, secrets=SECRETS_DIR),
        _heredoc(f"{SECRETS_DIR}/tailnet.key", spec.tailnet_key),
        _heredoc(f"{SECRETS_DIR}/registry.password", spec.registry_password),
        _heredoc(f"{SECRETS_DIR}/worker.env", env_file(workers_env)),
    ]
    if spec.sync_models:
        parts.append(_heredoc(f"{SECRETS_DIR}/models-sync.env", env_file(sync_env)))
    parts.append(TOOLS.format(repo=TOOLKIT_REPO))
    if spec.mount_command:
        target = shlex.split(spec.mount_command)[-1]
        parts.append(MOUNT.format(target=q(target), mount=spec.mount_command, models=SHARED_MODELS_DIR))
    else:
        parts.append(f"mkdir -p {SHARED_MODELS_DIR}\n")
    volume = f"--volume {SHARED_MODELS_DIR}:{SHARED_MODELS_DIR}:ro "
    parts.append(
        JOIN.format(
            secrets=SECRETS_DIR,
            pool=spec.pool,
            server=q(spec.registry_server),
            user=q(spec.registry_username),
            image=q(spec.image),
        )
    )
    if spec.sync_models:
        parts.append(SYNC.format(secrets=SECRETS_DIR, models=SHARED_MODELS_DIR, image=q(spec.image)))
    parts.append(
        WORKERS.format(per_gpu=spec.workers_per_gpu, secrets=SECRETS_DIR, volume=volume, image=q(spec.image))
    )
    return "".join(parts)


def setup_digest(spec: StartupSpec) -> str:
    """What the script does, less the credentials that rotate on their own (the tailnet key, renewed
    when it expires, and the registry token): an instance is replaced only when this changes."""
    return hashlib.sha256(
        startup_script(replace(spec, tailnet_key="", registry_password="")).encode()
    ).hexdigest()
