"""The ComfyUI double answers the recorded corpus as the real ComfyUI did, field by field.

A difference here is a bug in the double (``devkit/doubles/``): the recording is the real thing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit.doubles.comfyui import ComfyUIDouble
from tests.conformance.driver import differences, replay
from tests.conformance.fixtures import fixture_paths, load
from tests.conformance.record import target_for


@pytest.mark.parametrize("fixture", fixture_paths(), ids=lambda path: path.stem)
async def test_the_double_answers_as_the_real_comfyui_did(fixture: Path, tmp_path: Path) -> None:
    recorded = load(fixture)
    with ComfyUIDouble(tmp_path) as comfy:
        replayed = await replay(target_for(comfy.url), recorded)
    found = differences(recorded, replayed)
    assert not found, f"{len(found)} differences from the recording:\n" + "\n".join(found)
