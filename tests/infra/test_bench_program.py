"""`python -m bench.program` runs and prints the one JSON object the README describes."""

from __future__ import annotations

import json

import pytest

from bench import program


def test_the_benchmark_prints_one_entry_per_stack_and_the_100_participant_workshop(
    capsys: pytest.CaptureFixture[str],
) -> None:
    program.main(runs=1)
    result = json.loads(capsys.readouterr().out)
    entries = {entry["stack"]: entry for entry in result["stacks"]}
    assert set(entries) == {"local", "vault", "workshop", "workshop-100"}
    assert all(entry["resources"] > 0 and entry["seconds"] > 0 for entry in entries.values())
    assert entries["workshop-100"]["resources"] > entries["workshop"]["resources"], "three pools, not two"
