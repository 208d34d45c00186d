"""What the program itself generates for each mix of pools, checked by the real tools: the VPS's
cloud-init (`cloud-init schema`, Hetzner's 32 KiB limit), every shell script it hands a host
(shellcheck) and the nginx site it uploads (`nginx -t`)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from devkit.harness import StackRun, run_stack
from devkit.nginx import nginx_test, self_signed

WARMUP = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": 'it\'s "$HOME" `x`.safetensors'}}
}
MIXES: dict[str, list[dict[str, Any]]] = {
    "verda-instance": [
        {"kind": "verda-instance", "name": "baseline", "workersPerGpu": 2, "warmupWorkflow": WARMUP,
         "modelsVolume": {"name": "comfy-models"}},
    ],
    "serverless": [
        {"kind": "verda-serverless", "name": "burst", "modelsVolume": {"name": "comfy-models"}},
        {"kind": "runpod-serverless", "name": "overflow", "modelsVolume": {"name": "comfy-models"}},
    ],
    "local-gpu": [{"kind": "local-gpu", "name": "box", "dockerHost": "ssh://root@gpu-box"}],
    "every-kind": [
        {"kind": "verda-instance", "name": "baseline", "count": 2},
        {"kind": "verda-serverless", "name": "burst"},
        {"kind": "runpod-serverless", "name": "overflow"},
        {"kind": "local-gpu", "name": "box", "dockerHost": "ssh://root@gpu-box"},
    ],
}  # fmt: skip
REGISTRIES = {
    "ghcr": None,  # the committed stack file's
    "other": {
        "server": "registry.example.com",
        "repository": "registry.example.com/acme/w",
        "username": "a'b",
    },
}


@pytest.fixture(scope="module", params=[(mix, registry) for mix in MIXES for registry in REGISTRIES])
def run(request: pytest.FixtureRequest) -> StackRun:
    mix, registry = request.param
    overrides: dict[str, Any] = {"pools": MIXES[mix]}
    if REGISTRIES[registry] is not None:
        overrides["registry"] = REGISTRIES[registry]
    return run_stack("workshop", overrides=overrides)


def test_every_shell_script_passes_shellcheck(run: StackRun, tmp_path: Path) -> None:
    scripts = {
        f"{resource.name}.{key}": value
        for resource in run.resources
        for key, value in resource.inputs.items()
        if isinstance(value, str) and value.startswith("#!")
    }
    assert len(scripts) >= 1
    for name, script in scripts.items():
        path = tmp_path / f"{name}.sh"
        path.write_text(script)
        shell = "bash" if "bash" in script.splitlines()[0] else "sh"
        result = subprocess.run(["shellcheck", f"--shell={shell}", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, f"{name}: {result.stdout}"


def test_the_vps_cloud_init_passes_its_schema_within_hetzners_limit(run: StackRun, tmp_path: Path) -> None:
    path = tmp_path / "user-data.yaml"
    path.write_text(run.one("hcloud:index/server:Server").inputs["userData"])
    result = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(path.read_bytes()) < 32 * 1024


def test_the_uploaded_nginx_site_passes_nginx_t(run: StackRun, tmp_path: Path) -> None:
    nginx = run.one("docker:index/container:Container", "platform-nginx")
    [site] = [u["content"] for u in nginx.inputs["uploads"] if u["file"].endswith(".conf")]
    cert, key = self_signed(tmp_path)
    # The container's names and paths, as this machine has them (nginx -t resolves upstream names).
    local = (
        site.replace("/etc/nginx/tls/origin.pem", str(cert))
        .replace("/etc/nginx/tls/origin.key", str(key))
        .replace("queue-manager:8000", "127.0.0.1:9")
    )
    result = nginx_test(tmp_path / "prefix", local)
    assert result.returncode == 0, result.stderr
