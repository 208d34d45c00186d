"""One setting picks the ComfyUI: the workers' image clones that ref and the queue manager serves the
frontend it pins; a ref or frontend that does not agree is a config error naming the fix."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

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


def queue_manager_args(run: StackRun) -> dict[str, str]:
    return dict(run.one(REMOTE_IMAGE, "platform-queue-manager-image").inputs["build"]["buildArgs"])


def test_the_queue_manager_is_built_for_the_chosen_comfyui_not_only_its_frontend() -> None:
    """v0.3.61 and v0.3.62 pin the same frontend: the queue manager image was the same for both, so the
    workspaces kept serving the workflow templates of the one pinned in pyproject.toml whatever
    ComfyUI the workers ran. It is built from the ref, which the build reads the templates' pin at."""
    older, newer = workshop(ref="v0.3.61"), workshop(ref="v0.3.62")
    assert queue_manager_args(older) == {"COMFYUI_VERSION": "v0.3.61", "COMFYUI_FRONTEND_VERSION": "1.26.13"}
    assert queue_manager_args(newer)["COMFYUI_VERSION"] == "v0.3.62"
    qm = lambda run: run.one(REMOTE_IMAGE, "platform-queue-manager-image").inputs["name"]  # noqa: E731
    assert qm(older) != qm(newer)


PINS = REPO / "images/queue-manager/comfyui_pins.sh"
# The head of ComfyUI v0.3.64's requirements.txt, as the image build downloads it.
V0_3_64 = (
    "comfyui-frontend-package==1.27.10\ncomfyui-workflow-templates==0.1.95\ncomfyui-embedded-docs==0.2.6\n"
    "torch\n"
)


def pins(tmp_path: Path, requirements: str, frontend: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "requirements.txt").write_text(requirements)
    command = ["sh", str(PINS), str(tmp_path / "requirements.txt"), frontend]
    return subprocess.run(command, capture_output=True, text=True, timeout=10)


def test_the_queue_manager_image_installs_what_comfyuis_requirements_pin_at_the_ref(tmp_path: Path) -> None:
    dockerfile = (REPO / "images/queue-manager/Dockerfile").read_text()
    assert (
        "raw.githubusercontent.com/comfyanonymous/ComfyUI/${COMFYUI_VERSION}/requirements.txt" in dockerfile
    )
    assert re.search(
        r"comfyui_pins\.sh \S+requirements\.txt \"\$\{COMFYUI_FRONTEND_VERSION\}\" > (\S+)", dockerfile
    )
    assert "uv pip install --python /opt/venv/bin/python --no-cache -r /tmp/comfyui/pins.txt" in dockerfile

    done = pins(tmp_path, V0_3_64, "1.27.10")

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "comfyui-frontend-package==1.27.10",
        "comfyui-workflow-templates==0.1.95",
    ]
    newer = V0_3_64.replace("0.1.95", "0.1.99  # templates")
    assert "comfyui-workflow-templates==0.1.99" in pins(tmp_path, newer, "1.27.10").stdout


@pytest.mark.parametrize(
    ("requirements", "refused"),
    [
        (
            V0_3_64.replace("1.27.10", "1.27.11"),
            r"pins comfyui-frontend-package==1\.27\.11, not 1\.27\.10: fix its line in FRONTENDS in "
            r"infra/comfyui\.py",
        ),
        (V0_3_64.replace("comfyui-workflow-templates==0.1.95\n", ""), r"pins no comfyui-workflow-templates"),
    ],
    ids=["another frontend than the table", "no templates"],
)
def test_the_build_stops_naming_the_fix_when_comfyui_pins_otherwise(
    requirements: str, refused: str, tmp_path: Path
) -> None:
    done = pins(tmp_path, requirements, "1.27.10")
    assert done.returncode != 0 and done.stdout == ""
    assert re.search(refused, done.stderr)


def test_the_pin_script_passes_shellcheck() -> None:
    done = subprocess.run(["shellcheck", "-s", "sh", str(PINS)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


def comfyui_requirements() -> str:
    """ComfyUI's own requirements.txt at the release the workers run, as its repository holds it."""
    return (FIXTURES / COMFYUI_VERSION / "requirements.txt").read_text()


def pin_step() -> str:
    """The Dockerfile's RUN instruction that reads the pins and installs them, its lines joined."""
    dockerfile = (REPO / "images/queue-manager/Dockerfile").read_text().replace("\\\n", " ")
    steps = [
        line[len("RUN ") :] for line in dockerfile.splitlines() if line.startswith("RUN sh /tmp/comfyui/")
    ]
    assert len(steps) == 1 and "comfyui_pins.sh" in steps[0], steps
    return steps[0]


def run_pin_step(tmp_path: Path, requirements: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The image build's pin step as Docker runs it (``/bin/sh -c``, the build arguments in the
    environment), in ``tmp_path`` for /tmp/comfyui, with a ``uv`` that records what it was asked."""
    folder = tmp_path / "comfyui"
    folder.mkdir()
    (folder / "requirements.txt").write_text(requirements)
    shutil.copy(PINS, folder / "comfyui_pins.sh")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    calls = tmp_path / "uv-calls"
    uv = bin_ / "uv"
    uv.write_text(f'#!/bin/sh\necho "$*" >> {calls}\ncat "$7" >> {calls}\n')
    uv.chmod(0o755)
    env = {
        "PATH": f"{bin_}:/usr/bin:/bin",
        "COMFYUI_VERSION": DEFAULT_REF,
        "COMFYUI_FRONTEND_VERSION": FRONTENDS[DEFAULT_REF],
    }
    step = pin_step().replace("/tmp/comfyui", str(folder))
    done = subprocess.run(["/bin/sh", "-c", step], capture_output=True, text=True, timeout=30, env=env)
    return done, calls


def test_the_image_builds_pin_step_installs_what_the_comfyui_checkout_pins(tmp_path: Path) -> None:
    done, calls = run_pin_step(tmp_path, comfyui_requirements())
    assert done.returncode == 0, done.stderr
    assert calls.read_text().splitlines() == [
        f"pip install --python /opt/venv/bin/python --no-cache -r {tmp_path}/comfyui/pins.txt",
        "comfyui-frontend-package==1.27.10",
        "comfyui-workflow-templates==0.1.95",
    ]


@pytest.mark.parametrize(
    "requirements",
    ["", "<html><body>404: Not Found</body></html>\n", "torch\ncomfyui-frontend-package>=1.27\n"],
    ids=["empty", "an error page", "no == pin"],
)
def test_the_build_stops_before_installing_when_comfyuis_file_pins_no_frontend(
    tmp_path: Path, requirements: str
) -> None:
    """Not the release's requirements.txt: the fix is the ref (or the download), not the table."""
    done, calls = run_pin_step(tmp_path, requirements)
    assert done.returncode != 0 and not calls.exists()
    assert "pins no comfyui-frontend-package==<version>" in done.stderr, done.stderr
    assert "FRONTENDS" not in done.stderr and "comfyui.ref" in done.stderr


@pytest.mark.parametrize(
    ("frontend", "templates"),
    [
        ("comfyui_frontend_package", "comfyui_workflow_templates"),
        ("ComfyUI-Frontend-Package", "ComfyUI-Workflow-Templates"),
        ("comfyui.frontend--package", "comfyui-workflow.templates"),
    ],
)
def test_a_pin_written_as_pip_reads_names_is_the_frontend_pin(
    tmp_path: Path, frontend: str, templates: str
) -> None:
    """pip takes a name in any case, with '-', '_' and '.' alike (PEP 503): so does the build."""
    requirements = comfyui_requirements().replace("comfyui-frontend-package", frontend)
    requirements = requirements.replace("comfyui-workflow-templates", templates)
    done, calls = run_pin_step(tmp_path, requirements)
    assert done.returncode == 0, done.stderr
    assert calls.read_text().splitlines()[1:] == [
        "comfyui-frontend-package==1.27.10",
        "comfyui-workflow-templates==0.1.95",
    ]


def test_the_pin_step_passes_shellcheck(tmp_path: Path) -> None:
    script = tmp_path / "step.sh"
    script.write_text(f"#!/bin/sh\n{pin_step()}\n")
    done = subprocess.run(["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


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
    assert re.search(rf"^ARG COMFYUI_VERSION={re.escape(DEFAULT_REF)}$", queue_manager, re.M)
    assert f"v{COMFYUI_VERSION}" == DEFAULT_REF
    assert list((FIXTURES / COMFYUI_VERSION).glob("*.json")), "the double's ComfyUI has recordings"
