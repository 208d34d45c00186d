"""The Verda first-boot script: what it does to a GPU host, and that shellcheck finds nothing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from infra.pools.verda_startup import StartupSpec, env_file, startup_script

MOUNT = "mount -t nfs -o nconnect=16 nfs.fin-03.verda.internal:/sfs-0a1b /mnt/sfs-0a1b"


def spec(**changes: object) -> StartupSpec:
    values: dict[str, object] = {
        "pool": "baseline", "image": "ghcr.io/acme/comfy-worker@sha256:ab12", "workers_per_gpu": 2,
        "tailnet_key": "tskey-auth-k1", "registry_server": "ghcr.io", "registry_username": "acme",
        "registry_password": "ghp_secret", "worker_env": {"WORKER_TOKEN": "tok", "WORKER_POOL": "baseline"},
        "mount_command": MOUNT,
    }  # fmt: skip
    return StartupSpec(**(values | changes))  # type: ignore[arg-type]


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="needs shellcheck (apt-get install shellcheck)"
)
@pytest.mark.parametrize(("mount", "sync"), [(MOUNT, True), (None, True), (None, False)])
def test_shellcheck_is_clean(tmp_path: Path, mount: str | None, sync: bool) -> None:
    script = tmp_path / "startup.sh"
    script.write_text(startup_script(spec(mount_command=mount, sync_models=sync)))

    result = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True)

    assert result.returncode == 0, result.stdout


def test_toolkit_and_docker_are_installed_only_when_missing() -> None:
    script = startup_script(spec())

    assert (
        "if ! command -v nvidia-ctk" in script and "nvidia-ctk runtime configure --runtime=docker" in script
    )
    assert "if ! command -v docker" in script


def test_models_are_mounted_once_and_given_read_only_to_workers() -> None:
    script = startup_script(spec())

    assert "if ! mountpoint -q /mnt/sfs-0a1b; then\n  " + MOUNT in script
    assert "ln -sfn /mnt/sfs-0a1b /mnt/models" in script
    assert "--volume /mnt/models:/mnt/models:ro" in script
    assert "sync-models" not in script  # no manifest: nothing to fill


def test_the_models_folder_is_filled_once_before_the_workers_start_reading_it() -> None:
    for mount in (MOUNT, None):  # the shared filesystem, or the host's own disk
        script = startup_script(spec(mount_command=mount, sync_models=True))
        sync = script.index(
            "--volume /mnt/models:/mnt/models ghcr.io/acme/comfy-worker@sha256:ab12 sync-models"
        )
        assert script.index("docker pull") < sync < script.index("gpus=$(nvidia-smi")
        assert "--volume /mnt/models:/mnt/models:ro" in script[sync:]


def test_secrets_go_to_root_only_files_never_onto_a_command_line() -> None:
    lines = startup_script(spec()).splitlines()

    commands = [line for line in lines if line.startswith(("tailscale", "docker"))]
    assert not any("tskey-auth-k1" in c or "ghp_secret" in c or "tok" in c.split() for c in commands)
    assert "chmod 600 /etc/comfy-workshop/worker.env" in lines
    assert "--password-stdin < /etc/comfy-workshop/registry.password" in "\n".join(lines)


def test_workers_run_per_gpu_found_on_the_host() -> None:
    script = startup_script(spec(workers_per_gpu=3))

    assert "gpus=$(nvidia-smi --list-gpus | wc -l)" in script
    assert "$(seq 0 $((3 - 1)))" in script and '--gpus "device=$gpu"' in script


def test_an_env_value_with_a_newline_is_refused() -> None:
    with pytest.raises(ValueError, match="WORKER_TOKEN"):
        env_file({"WORKER_TOKEN": "a\nb"})
