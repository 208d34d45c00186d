"""Evaluate every committed stack (and a 100-participant, three-pool workshop) under Pulumi mocks.

    python -m bench.program
    {"stacks": [{"stack": "workshop", "resources": N, "seconds": S}, ...]}

The program's modules are imported before timing: what is measured is one evaluation of the
program, as `pulumi preview` would run it, not Python importing the provider SDKs. Each entry is
the median of ``RUNS`` evaluations, so a neighbour's burst on a shared machine does not decide it.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from devkit.harness import run_stack, stack_file, stack_names, vault_outputs

THREE_POOLS = [
    {"kind": "verda-instance", "name": "baseline", "count": 2},
    {"kind": "verda-serverless", "name": "burst", "minReplicas": 0, "maxReplicas": 20},
    {"kind": "runpod-serverless", "name": "overflow", "minReplicas": 0, "maxReplicas": 10},
]


RUNS = 3


def measure(label: str, stack: str, runs: int, **kwargs: Any) -> dict[str, Any]:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        run = run_stack(stack, **kwargs)
        timings.append(time.perf_counter() - started)
    return {"stack": label, "resources": len(run.resources), "seconds": round(statistics.median(timings), 3)}


def main(runs: int = RUNS) -> None:
    for stack in stack_names():
        run_stack(stack)  # warm-up: imports every provider SDK once (pulumi_cloudflare alone takes seconds)
    results = [measure(stack, stack, runs) for stack in stack_names()]
    participants = [f"user{index:03d}" for index in range(1, 101)]
    workshop = stack_file("workshop")
    results.append(
        measure(
            "workshop-100",
            "workshop",
            runs,
            overrides={"pools": THREE_POOLS, "registry": workshop["registry"]},
            vault=vault_outputs(participants),
        )
    )
    print(json.dumps({"stacks": results}))


if __name__ == "__main__":
    main()
