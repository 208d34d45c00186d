"""No credential of the stack config is ever in plain text where Pulumi shows it: in a resource's
inputs that are not marked secret (`pulumi preview --diff`, the state, the console) or in an output
that is not secret (`pulumi stack output`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from devkit.harness import TEST_SECRETS, StackRun, run_stack

POOLS = [
    {"kind": "verda-instance", "name": "baseline", "modelsVolume": {"name": "comfy-models"}},
    {"kind": "verda-serverless", "name": "burst", "modelsVolume": {"name": "comfy-models"}},
    {"kind": "runpod-serverless", "name": "overflow", "modelsVolume": {"name": "comfy-models"}},
]


def _text(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def _plain_leaks(run: StackRun) -> tuple[list[str], int]:
    """Where a credential is in plain text, and how many secret inputs carry one (the search sees them)."""
    secrets = {key: value for key, value in TEST_SECRETS.items() if len(value) >= 8}
    leaks, hidden = [], 0
    for resource in run.resources:
        for key, value in resource.inputs.items():
            found = [name for name, secret in secrets.items() if secret in _text(value)]
            if key in resource.secret_inputs:
                hidden += bool(found)
                continue
            leaks += [f"{resource.name}.{key}: {name}" for name in found]
    for key, value in run.outputs.items():
        if key not in run.secret_outputs:
            leaks += [f"output {key}: {name}" for name, secret in secrets.items() if secret in _text(value)]
    return leaks, hidden


@pytest.mark.parametrize(
    ("stack", "overrides"),
    [("workshop", {"pools": POOLS}), ("workshop", {}), ("vault", {}), ("local", {})],
    ids=["workshop-every-cloud-pool", "workshop", "vault", "local"],
)
def test_no_credential_is_in_plain_text_in_inputs_or_outputs(stack: str, overrides: dict[str, Any]) -> None:
    leaks, hidden = _plain_leaks(run_stack(stack, overrides=overrides))
    assert leaks == []
    if "pools" in overrides:  # the cloud pools' resources carry the credentials (as secrets)
        assert hidden > 0, "the search sees the credentials where they are: it would see a leak"
