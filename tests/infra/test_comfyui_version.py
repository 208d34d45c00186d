"""One setting picks the ComfyUI: the workers' image clones that ref and the queue manager serves the
frontend it pins; a ref or frontend that does not agree is a config error naming the fix."""

from __future__ import annotations

import re
import tomllib
from typing import Any

from devkit.doubles.comfyui import COMFYUI_VERSION
from devkit.harness import REPO, StackRun, run_stack
from infra.comfyui import DEFAULT_REF, FRONTENDS
from tests.conformance.fixtures import FIXTURES
from tests.support.stack_config import problems

IMAGE = "docker-build:index:Image"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"


def worker_pools() -> list[dict[str, Any]]:
    return [
        {"kind": "verda-instance", "name": "baseline", "count": 1},
        {"kind": "runpod-serverless", "name": "burst", "maxReplicas": 2},
    ]


def workshop(**comfyui: str) -> StackRun:
    return run_stack(
        "workshop", overrides={"pools": worker_pools(), **({"comfyui": comfyui} if comfyui else {})}
    )


def versions(run: StackRun) -> tuple[set[str], str]:
    """The ComfyUI refs the worker images are built at, and the frontend the queue manager serves."""
    refs = {image.inputs["buildArgs"]["COMFYUI_VERSION"] for image in run.resources_of(IMAGE)}
    queue_manager = run.one(REMOTE_IMAGE, "platform-queue-manager-image").inputs["build"]["buildArgs"]
    return refs, queue_manager["COMFYUI_FRONTEND_VERSION"]


def test_by_default_workers_run_comfyui_v0_3_64_and_participants_get_its_frontend() -> None:
    assert versions(workshop()) == ({"v0.3.64"}, "1.27.10")


def test_moving_the_one_setting_moves_the_workers_and_the_frontend_together() -> None:
    before, after = workshop(), workshop(ref="v0.3.63")
    assert versions(after) == ({"v0.3.63"}, "1.27.7")
    tags = lambda run: sorted(image.inputs["tags"][0] for image in run.resources_of(IMAGE))  # noqa: E731
    assert tags(before) != tags(after), "another ComfyUI is another image: it must be rebuilt and pulled"
    qm = lambda run: run.one(REMOTE_IMAGE, "platform-queue-manager-image").inputs["name"]  # noqa: E731
    assert qm(before) != qm(after)


def test_the_local_stack_builds_its_cpu_worker_and_queue_manager_from_the_same_setting() -> None:
    local = run_stack("local", overrides={"comfyui": {"ref": "v0.3.60"}})
    assert local.one(IMAGE, "cpu-image").inputs["buildArgs"]["COMFYUI_VERSION"] == "v0.3.60"
    frontend = local.one(IMAGE, "platform-queue-manager-image").inputs["buildArgs"][
        "COMFYUI_FRONTEND_VERSION"
    ]
    assert frontend == "1.26.13"


def test_an_unknown_comfyui_release_names_the_table_to_extend() -> None:
    text = problems("workshop", {"comfyui": {"ref": "v0.9.1"}})
    assert "comfy-workshop:comfyui" in text and "v0.9.1" in text
    assert "FRONTENDS in infra/comfyui.py" in text and "requirements.txt" in text


def test_a_frontend_that_disagrees_with_the_comfyui_names_the_right_one() -> None:
    text = problems("local", {"comfyui": {"ref": "v0.3.64", "frontend": "1.28.0"}})
    assert "1.28.0" in text and "comfyui-frontend-package==1.27.10" in text
    assert "fix: set comfyui.frontend to 1.27.10" in text


def test_a_frontend_that_agrees_is_accepted() -> None:
    local = run_stack("local", overrides={"comfyui": {"ref": "v0.3.64", "frontend": "1.27.10"}})
    assert local.one(IMAGE, "cpu-image").inputs["buildArgs"]["COMFYUI_VERSION"] == "v0.3.64"


def test_the_defaults_agree_with_the_lock_the_dockerfiles_and_the_recordings() -> None:
    """What development and tests use (uv.lock's frontend, the double, the recordings) is the default."""
    groups = tomllib.loads((REPO / "pyproject.toml").read_text())["dependency-groups"]
    assert f"comfyui-frontend-package=={FRONTENDS[DEFAULT_REF]}" in groups["queue-manager"]
    worker = (REPO / "images/worker/Dockerfile").read_text()
    assert re.search(rf"^ARG COMFYUI_VERSION={re.escape(DEFAULT_REF)}$", worker, re.M)
    queue_manager = (REPO / "images/queue-manager/Dockerfile").read_text()
    assert re.search(rf"^ARG COMFYUI_FRONTEND_VERSION={FRONTENDS[DEFAULT_REF]}$", queue_manager, re.M)
    assert f"v{COMFYUI_VERSION}" == DEFAULT_REF
    assert list((FIXTURES / COMFYUI_VERSION).glob("*.json")), "the double's ComfyUI has recordings"
