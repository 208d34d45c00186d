"""The typed resources under Pulumi mocks: dynamic registrations with secret connection inputs."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest

from infra.providers import resources
from infra.providers.resources import VerdaInstance, VerdaSecret


class Mocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.seen: dict[str, dict[str, Any]] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.seen[args.name] = dict(args.inputs)
        return f"{args.name}-id", {**args.inputs, "ip": "203.0.113.9"}

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        return {}, []


@pytest.fixture
def mocks() -> Mocks:
    mocks = Mocks()
    pulumi.runtime.set_mocks(mocks, project="comfy-workshop", stack="test", preview=False)
    return mocks


@pulumi.runtime.test
def test_an_instance_registers_as_a_dynamic_resource_with_its_outputs(mocks: Mocks) -> Any:
    instance = VerdaInstance(
        "h100-0",
        {"name": "cw-h100-0", "instance_type": "1H100.80S.30V", "location": "FIN-03", "client_secret": "s"},
    )

    def check(ip: str) -> None:
        assert ip == "203.0.113.9"
        assert mocks.seen["h100-0"]["instance_type"] == "1H100.80S.30V"
        assert "__provider" in mocks.seen["h100-0"]

    return instance.ip.apply(check)


@pulumi.runtime.test
def test_secret_values_and_credentials_stay_secret(mocks: Mocks) -> Any:
    secret = VerdaSecret("token", {"name": "cw-token", "value": "hunter2", "client_secret": "s"})

    async def check() -> None:
        assert await secret.value.is_secret()  # type: ignore[attr-defined]
        assert await secret.client_secret.is_secret()  # type: ignore[attr-defined]
        assert not await secret.name.is_secret()  # type: ignore[attr-defined]

    return pulumi.Output.from_input(check())


@pytest.mark.parametrize("resource", resources.ALL, ids=lambda cls: cls.__name__)
def test_every_output_a_resource_declares_is_one_its_provider_reports(resource: type) -> None:
    """A pool reading an output the provider never reports would get None at deploy time."""
    declared = {
        name
        for cls in resource.__mro__
        if cls.__module__ == resources.__name__
        for name, hint in vars(cls).get("__annotations__", {}).items()
        if "Output" in str(hint)
    }
    assert declared <= set(resource.provider_class.outputs)
