"""ComfyUI as a child process: the flags it gets, shared model storage, and a start that fails."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from devkit.servers import free_port
from services.worker.comfy_client import ComfyClient
from services.worker.settings import WorkerSettings
from services.worker.supervisor import ComfyNotReadyError, ComfyProcess, extra_model_paths


def test_shared_model_storage_is_wired_in_through_extra_model_paths(tmp_path: Path) -> None:
    config = yaml.safe_load(extra_model_paths([Path("/mnt/shared/models"), tmp_path / "models"]))
    first, second = config["workshop_0"], config["workshop_1"]
    assert first["base_path"] == "/mnt/shared/models" and first["is_default"] is True
    assert first["checkpoints"] == "checkpoints" and first["loras"] == "loras"
    assert second["base_path"] == str(tmp_path / "models") and "is_default" not in second


def test_the_child_gets_the_workers_folders_and_never_a_public_address(tmp_path: Path) -> None:
    settings = WorkerSettings(
        data_dir=tmp_path,
        comfyui_dir=Path("/opt/ComfyUI"),
        device="cpu",
        shared_models_dir=Path("/mnt/models"),
        comfyui_port=8190,
    )
    command = ComfyProcess(settings).command()
    assert command[:2] == ["python", "/opt/ComfyUI/main.py"]
    flags = dict(zip(command[2::2], command[3::2], strict=False))
    assert flags["--listen"] == "127.0.0.1" and flags["--port"] == "8190"
    assert flags["--output-directory"] == str(tmp_path / "output")
    assert flags["--input-directory"] == str(tmp_path / "input")
    assert "--cpu" in command and (tmp_path / "extra_model_paths.yaml").is_file()


async def test_a_comfyui_that_dies_while_starting_is_reported_at_once(tmp_path: Path) -> None:
    port = free_port()
    settings = WorkerSettings(
        data_dir=tmp_path, comfyui_port=port, comfyui_command=[sys.executable, "-c", "raise SystemExit(3)"]
    )
    process, client = ComfyProcess(settings), ComfyClient(f"http://127.0.0.1:{port}")
    with pytest.raises(ComfyNotReadyError, match="exited while starting"):
        await process.start(client, limit=30)
    await process.stop()
    await client.aclose()
