"""Where the recorded corpus lives: ``tests/fixtures/comfyui/<ComfyUI version>/<case>.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devkit.doubles.comfyui import COMFYUI_VERSION

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "comfyui"


def fixture_paths(version: str = COMFYUI_VERSION) -> list[Path]:
    """The cases recorded against ``version`` (the one the double stands in for)."""
    folder = FIXTURES / version
    paths = sorted(folder.glob("*.json"))
    if not paths:
        raise FileNotFoundError(
            f"no recordings of ComfyUI {version} in {folder}: record them with "
            "`python -m tests.conformance.record --url <a running ComfyUI {version}>` (README)"
        )
    return paths


def load(path: Path) -> dict[str, Any]:
    recorded: dict[str, Any] = json.loads(path.read_text())
    return recorded
