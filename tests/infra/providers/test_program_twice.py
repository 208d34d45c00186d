"""The whole program run twice in a row (two `pulumi up`s, the second the next morning), with the
state the first run's dynamic resources got from the providers fed to the second run's diff: every
Verda and RunPod resource the pools declare must come out unchanged."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import dill
import pytest

from devkit.harness import Resource, run_stack
from infra.providers import resources
from tests.infra.providers.engine import PROVIDER_KEY, Engine
from tests.infra.providers.runpod_double import RunPodDouble
from tests.infra.providers.verda_double import VerdaDouble
from tests.support.provider_timing import FAST

DYNAMIC = "pulumi-python:dynamic:Resource"
POOLS = [
    {"kind": "verda-instance", "name": "baseline", "count": 2, "modelsVolume": {"name": "comfy-models"}},
    {"kind": "verda-serverless", "name": "burst", "modelsVolume": {"name": "comfy-models"}},
    {"kind": "runpod-serverless", "name": "overflow", "modelsVolume": {"name": "comfy-models"}},
]
BY_PROVIDER = {cls.provider_class: cls for cls in resources.ALL}


@pytest.fixture
def doubles() -> Iterator[tuple[VerdaDouble, RunPodDouble]]:
    with VerdaDouble().running() as verda, RunPodDouble().running() as runpod:
        yield verda, runpod


def _engine_and_props(
    resource: Resource, doubles: tuple[VerdaDouble, RunPodDouble]
) -> tuple[Engine, dict[str, Any]]:
    provider = dill.loads(base64.b64decode(resource.inputs[PROVIDER_KEY]))
    props = {key: value for key, value in resource.inputs.items() if key != PROVIDER_KEY}
    verda, runpod = doubles
    if "api_key" in props:  # RunPod: the double on loopback instead of rest.runpod.io
        props.update(api_key=runpod.api_key, api_url=runpod.url, timing=FAST)
    else:
        props.update(client_id="cid", client_secret=verda.client_secret, api_url=verda.url, timing=FAST)
    return Engine(BY_PROVIDER[type(provider)], resource.name), props


def test_the_next_mornings_up_changes_no_dynamic_resource(doubles: tuple[VerdaDouble, RunPodDouble]) -> None:
    today, tomorrow = (run_stack("workshop", overrides={"pools": POOLS}) for _ in range(2))
    engines = {}
    for resource in today.resources_of(DYNAMIC):
        engine, props = _engine_and_props(resource, doubles)
        assert engine.up(props).action == "create"
        engines[resource.name] = engine

    steps = {}
    for resource in tomorrow.resources_of(DYNAMIC):
        _, props = _engine_and_props(resource, doubles)
        steps[resource.name] = engines[resource.name].up(props)

    assert set(steps) == set(engines)
    changed = {name: (step.action, step.replaces) for name, step in steps.items() if step.action != "same"}
    assert changed == {}
    assert len(doubles[0].billable_instances()) == 2
