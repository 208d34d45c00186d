"""Record the corpus against a running ComfyUI into committed fixtures.

    python -m tests.conformance.record --url http://127.0.0.1:8188

Start that ComfyUI fresh (empty input, output and temp directories) with ComfyUI's own test nodes
loaded (``tests/execution/testing_nodes``, for the slow node the interrupt cases need); the README's
"Conformance with the real ComfyUI" section says how. The fixtures go to
``tests/fixtures/comfyui/<comfyui_version>/<case>.json``, the version read from ``/system_stats``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from tests.conformance import corpus
from tests.conformance.driver import Target, play
from tests.conformance.fixtures import FIXTURES


def target_for(url: str) -> Target:
    url = url.rstrip("/")
    return Target(http=url, ws=url.replace("http", "ws", 1) + "/ws")


async def record_case(target: Target, name: str, steps: list[dict[str, Any]], version: str) -> dict[str, Any]:
    return {"comfyui_version": version, "case": name, **await play(target, steps)}


async def record(url: str, out: Path | None, only: list[str]) -> list[Path]:
    target = target_for(url)
    stats = httpx.get(f"{target.http}/system_stats", timeout=10).raise_for_status().json()
    version = stats["system"]["comfyui_version"]
    folder = out or FIXTURES / version
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, steps in corpus.cases().items():
        if only and name not in only:
            continue
        fixture = await record_case(target, name, steps, version)
        path = folder / f"{name}.json"
        path.write_text(json.dumps(fixture, indent=1, sort_keys=False) + "\n")
        written.append(path)
        print(f"recorded {name}: {path}")
    return written


def main(
    url: Annotated[str, typer.Option(help="The running ComfyUI, e.g. http://127.0.0.1:8188")],
    out: Annotated[
        Path | None, typer.Option(help="Folder (default tests/fixtures/comfyui/<version>)")
    ] = None,
    case: Annotated[list[str] | None, typer.Option(help="Record only these cases")] = None,
) -> None:
    asyncio.run(record(url, out, case or []))


if __name__ == "__main__":
    typer.run(main)
