"""bench.models end to end on a small manifest: two workers on one volume after a killed sync."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.models import run

pytestmark = pytest.mark.slow


def test_two_workers_fill_one_volume_once_and_the_cut_file_resumes(tmp_path: Path) -> None:
    result = run(files=3, total_mb=96, directory=tmp_path)

    assert result["bytes"] == 96 * 1024 * 1024 and result["files_downloaded"] == 3
    assert result["downloads_per_file"] == 1  # once, by one of the two workers
    assert result["resume_ok"] is True and result["resumed_from_byte"] > 0
    assert not list(tmp_path.iterdir()), "the bench cleans up after itself"
