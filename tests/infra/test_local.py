"""The local stack under mocks: localhost only, no cloud account, a CPU worker, data kept."""

from __future__ import annotations

import json

import pytest

from devkit.harness import StackRun, run_stack

CONTAINER = "docker:index/container:Container"


@pytest.fixture(scope="module")
def local() -> StackRun:
    return run_stack("local")


def test_nothing_needs_a_cloud_account_or_tailscale(local: StackRun) -> None:
    providers = {t.split(":")[0] for t in local.types()}
    assert providers <= {"docker", "docker-build", "random", "command", "comfy-workshop"}, providers


def test_nginx_is_reachable_on_localhost_only(local: StackRun) -> None:
    ports = local.one(CONTAINER, "platform-nginx").inputs["ports"]
    assert [(p["internal"], p["external"], p["ip"]) for p in ports] == [(8080, 8080, "127.0.0.1")]
    published = [r.name for r in local.resources_of(CONTAINER) if r.inputs.get("ports")]
    assert published == ["platform-nginx"]


def test_a_cpu_worker_claims_jobs_on_the_private_network(local: StackRun) -> None:
    worker = local.one(CONTAINER, "cpu-worker-0")
    env = dict(item.split("=", 1) for item in worker.inputs["envs"])
    assert env["WORKER_QUEUE_URL"] == "http://queue-manager:8000"
    assert env["WORKER_DEVICE"] == "cpu" and env["WORKER_POOL"] == "cpu"
    assert env["WORKER_TOKEN"] == "generated-password" and "envs" in worker.secret_inputs
    assert env["WORKER_STORAGE_URL"] == "file:///var/lib/comfy-workshop/files"
    # Built by BuildKit here and loaded into the local daemon (works with either image store).
    image = local.one("docker-build:index:Image", "cpu-image").inputs
    assert image["dockerfile"]["location"].endswith("/images/worker/Dockerfile")
    args = {"VARIANT": "cpu", "COMFYUI_VERSION": "v0.3.64"}
    assert (image["buildArgs"], image["load"], image["push"]) == (args, True, False)
    assert worker.inputs["image"] == image["tags"][0]


def test_the_queue_manager_image_is_built_from_images_and_tagged_by_its_sources(local: StackRun) -> None:
    image = local.one("docker-build:index:Image", "platform-queue-manager-image").inputs
    assert image["dockerfile"]["location"].endswith("/images/queue-manager/Dockerfile")
    assert image["tags"][0].startswith("comfy-workshop/queue-manager:")
    assert local.one(CONTAINER, "platform-queue-manager").inputs["image"] == image["tags"][0]


def test_user_files_and_redis_data_survive_a_destroy(local: StackRun) -> None:
    volumes = {r.inputs["name"]: r for r in local.resources_of("docker:index/volume:Volume")}
    assert set(volumes) == {"comfy-local-files", "comfy-local-redis"}
    assert all(volume.retain_on_delete for volume in volumes.values())
    worker, qm = local.one(CONTAINER, "cpu-worker-0"), local.one(CONTAINER, "platform-queue-manager")
    assert (
        worker.inputs["volumes"][0]["volumeName"]
        == qm.inputs["volumes"][0]["volumeName"]
        == "comfy-local-files"
    )


def test_the_local_queue_is_snapshotted_on_destroy_before_its_workers_go(local: StackRun) -> None:
    drain = local.one("command:local:Command", "queue-drain")
    assert "cli drain" in drain.inputs["delete"] and "comfy-local-queue-manager" in drain.inputs["delete"]
    assert local.depends_transitively(drain, local.one(CONTAINER, "platform-queue-manager"))
    assert local.depends_transitively(drain, local.one(CONTAINER, "cpu-worker-0"))
    restore = local.one("command:local:Command", "queue-step")
    assert "cli load" in restore.inputs["create"] and "cli load" not in restore.inputs["update"]
    # The morning: the workers start once last night's queue is back, never before it.
    assert local.depends_transitively(local.one(CONTAINER, "cpu-worker-0"), restore)


def test_a_local_gpu_pool_is_just_config() -> None:
    pools = [{"kind": "local-cpu", "name": "cpu"}, {"kind": "local-gpu", "name": "gpu", "count": 2}]
    run = run_stack("local", overrides={"pools": pools})
    gpu_workers = [r for r in run.resources_of(CONTAINER) if r.name.startswith("gpu-worker")]
    assert [r.inputs["gpus"] for r in gpu_workers] == ["all", "all"]


def test_a_models_folder_is_mounted_read_only_with_the_manifest() -> None:
    model = {"path": "checkpoints/tiny.safetensors", "size": 12, "sha256": "a" * 64}
    run = run_stack("local", overrides={"modelsDir": "/srv/models", "models": [model]})
    worker = run.one(CONTAINER, "cpu-worker-0")
    mounts = {v["containerPath"]: v for v in worker.inputs["volumes"]}
    assert mounts["/models"]["hostPath"] == "/srv/models" and mounts["/models"]["readOnly"] is True
    env = dict(item.split("=", 1) for item in worker.inputs["envs"])
    assert env["WORKER_SHARED_MODELS_DIR"] == "/models"
    manifest = json.loads(worker.inputs["uploads"][0]["content"])
    assert manifest == {"models": [model]}
    assert worker.inputs["uploads"][0]["file"] == env["WORKER_MODELS_MANIFEST"]
