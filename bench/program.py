"""Evaluate every committed stack (and a 100-participant, three-pool workshop) under Pulumi mocks.

    python -m bench.program
    {"stacks": [{"stack": "workshop", "resources": N, "seconds": S}, ...]}

The program's modules are imported before timing: what is measured is one evaluation of the
program, as `pulumi preview` would run it, not Python importing the provider SDKs.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.infra.harness import run_stack, stack_file, stack_names, vault_outputs

THREE_POOLS = [
    {"kind": "verda-instance", "name": "baseline", "count": 2},
    {"kind": "verda-serverless", "name": "burst", "minReplicas": 0, "maxReplicas": 20},
    {"kind": "runpod-serverless", "name": "overflow", "minReplicas": 0, "maxReplicas": 10},
]


def measure(label: str, stack: str, **kwargs: Any) -> dict[str, Any]:
    started = time.perf_counter()
    run = run_stack(stack, **kwargs)
    seconds = time.perf_counter() - started
    return {"stack": label, "resources": len(run.resources), "seconds": round(seconds, 3)}


def main() -> None:
    for stack in stack_names():
        run_stack(stack)  # warm-up: imports every provider SDK once (pulumi_cloudflare alone takes seconds)
    results = [measure(stack, stack) for stack in stack_names()]
    participants = [f"user{index:03d}" for index in range(1, 101)]
    workshop = stack_file("workshop")
    results.append(
        measure(
            "workshop-100",
            "workshop",
            overrides={"pools": THREE_POOLS, "registry": workshop["registry"]},
            vault=vault_outputs(participants),
        )
    )
    print(json.dumps({"stacks": results}))


if __name__ == "__main__":
    main()
