"""The command line: the image's health check, and settings errors that name the variable."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devkit.doubles.comfyui import ComfyUIDouble
from devkit.servers import free_port
from services.worker.cli import app


def test_health_is_0_while_comfyui_answers_and_1_when_it_does_not(
    comfy: ComfyUIDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    monkeypatch.setenv("WORKER_COMFYUI_URL", comfy.url)
    assert runner.invoke(app, ["health"]).exit_code == 0
    monkeypatch.setenv("WORKER_COMFYUI_URL", f"http://127.0.0.1:{free_port()}")
    result = runner.invoke(app, ["health"])
    assert result.exit_code == 1 and "not healthy" in result.output


def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WORKER_MODELS_MANIFEST", str(tmp_path / "models.yaml"))
    result = CliRunner().invoke(app, ["sync-models"])
    assert result.exit_code == 2 and "WORKER_MODELS_URL" in result.output


def test_sync_models_reports_what_it_holds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "shared/vae").mkdir(parents=True)
    (tmp_path / "shared/vae/v.safetensors").write_bytes(b"v" * 10)
    sha = hashlib.sha256(b"v" * 10).hexdigest()  # a file put on the volume by hand is hashed once
    (tmp_path / "m.yaml").write_text(f"models:\n  - {{path: vae/v.safetensors, size: 10, sha256: {sha}}}\n")
    monkeypatch.setenv("WORKER_MODELS_MANIFEST", str(tmp_path / "m.yaml"))
    monkeypatch.setenv("WORKER_SHARED_MODELS_DIR", str(tmp_path / "shared"))
    result = CliRunner().invoke(app, ["sync-models"])
    assert result.exit_code == 0 and "1 model files ready" in result.output
