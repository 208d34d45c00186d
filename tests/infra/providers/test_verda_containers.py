"""Serverless deployments, secrets and registry credentials against the Verda double."""

from __future__ import annotations

from typing import Any

import pytest

from infra.providers.lifecycle import ProviderError
from infra.providers.verda_containers import DeploymentProvider
from infra.providers.verda_secrets import RegistryCredentialsProvider, SecretProvider
from tests.infra.providers.verda_double import VerdaDouble


@pytest.fixture
def props(creds: dict[str, Any]) -> dict[str, Any]:
    return {
        **creds,
        "name": "cw-workshop-serverless",
        "image": "ghcr.io/org/comfy-worker@sha256:abc",
        "port": 8000,
        "env": {"WORKER_POOL": "serverless"},
        "secret_env": {"WORKER_TOKEN": "cw-worker-token"},
        "mounts": [{"mount_path": "/models", "volume_id": "vol-models"}],
        "compute": {"name": "H100", "size": 1},
        "scaling": {"min_replica_count": 0, "max_replica_count": 40, "scale_down_delay_s": 600},
        "registry_credentials": "cw-ghcr",
    }


def test_deployment_carries_the_whole_spec_in_sdk_field_names(
    verda: VerdaDouble, props: dict[str, Any]
) -> None:
    result = DeploymentProvider().create(props)

    dep = verda.deployments["cw-workshop-serverless"]
    assert result.outs["endpoint_base_url"] == "https://containers.verda.test/cw-workshop-serverless"
    [container] = dep["containers"]
    assert {"name": "WORKER_TOKEN", "value_or_reference_to_secret": "cw-worker-token", "type": "secret"} in (
        container["env"]
    )
    assert (
        container["volume_mounts"][0] | {"type": "shared", "volume_id": "vol-models"}
        == (container["volume_mounts"][0])
    )
    assert dep["scaling"]["max_replica_count"] == 40
    assert dep["scaling"]["scale_down_policy"] == {"delay_seconds": 600}
    assert dep["scaling"]["scaling_triggers"]["queue_load"] == {"threshold": 1.0}
    assert dep["container_registry_settings"] == {"is_private": True, "credentials": {"name": "cw-ghcr"}}


def test_a_timeout_after_creating_adopts_and_converges(verda: VerdaDouble, props: dict[str, Any]) -> None:
    verda.fail("POST", "/container-deployments", when="hang")

    DeploymentProvider().create(props)

    assert list(verda.deployments) == ["cw-workshop-serverless"]


def test_an_adopted_stale_deployment_is_brought_to_the_new_image(
    verda: VerdaDouble, props: dict[str, Any]
) -> None:
    DeploymentProvider().create({**props, "image": "ghcr.io/org/comfy-worker@sha256:old"})

    DeploymentProvider().create(props)

    assert verda.deployments["cw-workshop-serverless"]["containers"][0]["image"].endswith("abc")


def test_quota_after_creating_leaves_no_deployment(verda: VerdaDouble, props: dict[str, Any]) -> None:
    verda.fail(
        "POST", "/container-deployments", status=403, code="forbidden_action", message="GPU quota reached",
        when="after",
    )  # fmt: skip

    with pytest.raises(ProviderError, match=r"GPU quota reached.*raise it"):
        DeploymentProvider().create(props)

    assert verda.deployments == {}


def test_a_new_deployment_is_created_once_and_not_patched_after(
    verda: VerdaDouble, props: dict[str, Any]
) -> None:
    DeploymentProvider().create(props)

    assert [call for call in verda.log if call[1].startswith("/container-deployments")] == [
        ("GET", "/container-deployments/cw-workshop-serverless"),
        ("POST", "/container-deployments"),
    ]


def test_insufficient_funds_leaves_no_deployment(verda: VerdaDouble, props: dict[str, Any]) -> None:
    verda.fail("POST", "/container-deployments", status=402, code="insufficient_funds", message="Low balance")

    with pytest.raises(ProviderError, match="Top up"):
        DeploymentProvider().create(props)

    assert verda.deployments == {}


def test_scaling_change_updates_in_place(verda: VerdaDouble, props: dict[str, Any]) -> None:
    provider = DeploymentProvider()
    made = provider.create(props)
    news = {**props, "scaling": {**props["scaling"], "max_replica_count": 10}}

    assert provider.diff(made.id, made.outs, news).replaces == []
    provider.update(made.id, made.outs, news)
    assert verda.deployments["cw-workshop-serverless"]["scaling"]["max_replica_count"] == 10


def test_delete_is_confirmed_and_repeatable(verda: VerdaDouble, props: dict[str, Any]) -> None:
    made = DeploymentProvider().create(props)
    verda.fail("DELETE", "/container-deployments/.*", status=503, code="service_unavailable")

    DeploymentProvider().delete(made.id, made.outs)
    DeploymentProvider().delete(made.id, made.outs)

    assert verda.deployments == {}


def test_a_secret_verda_stored_although_it_answered_5xx_is_written_again_with_our_value(
    verda: VerdaDouble, creds: dict[str, Any]
) -> None:
    verda.fail("POST", "/secrets", status=500, when="after")

    SecretProvider().create({**creds, "name": "cw-worker-token", "value": "ours"})

    assert verda.secrets["cw-worker-token"]["_body"]["value"] == "ours"


def test_registry_credentials_for_ghcr(verda: VerdaDouble, creds: dict[str, Any]) -> None:
    props = {**creds, "name": "cw-ghcr", "registry": "ghcr", "username": "org", "access_token": "ghp_x"}

    RegistryCredentialsProvider().create(props)

    assert verda.registry_credentials["cw-ghcr"]["_body"] == {
        "name": "cw-ghcr", "type": "ghcr", "username": "org", "access_token": "ghp_x",
    }  # fmt: skip


def test_unknown_registry_is_explained(verda: VerdaDouble, creds: dict[str, Any]) -> None:
    with pytest.raises(ProviderError, match="not one of dockerhub, ghcr, custom"):
        RegistryCredentialsProvider().create({**creds, "name": "cw-x", "registry": "quay"})


def test_a_deployment_of_our_name_serving_another_workshop_is_not_taken_over(
    verda: VerdaDouble, props: dict[str, Any]
) -> None:
    """Deployment names are unique at Verda, and two workshops in one account whose stacks and pools
    have the same names name theirs alike: the second's create adopted the first's and updated it to its
    own image and queue, so the first's GPUs served the second's queue (and either destroy deleted it).
    One whose workers call another queue manager is not this stack's."""
    theirs = {**props, "env": {"WORKER_POOL": "serverless", "WORKER_QUEUE_URL": "https://a.example.org"}}
    DeploymentProvider().create({**theirs, "image": "ghcr.io/org/comfy-worker@sha256:theirs"})
    ours = {**props, "env": {"WORKER_POOL": "serverless", "WORKER_QUEUE_URL": "https://b.example.org"}}

    with pytest.raises(ProviderError, match=r"did not make.*pulumi stack rename"):
        DeploymentProvider().create(ours)

    [container] = verda.deployments["cw-workshop-serverless"]["containers"]
    assert container["image"].endswith("theirs")
    assert {
        "name": "WORKER_QUEUE_URL",
        "value_or_reference_to_secret": "https://a.example.org",
        "type": "plain",
    } in (container["env"])
