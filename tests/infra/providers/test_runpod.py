"""RunPod template, endpoint and network volume providers against a transport-level REST double."""

from __future__ import annotations

from typing import Any

import dill
import httpx
import pytest

from infra.providers.lifecycle import ProviderError, retry_after_seconds
from infra.providers.runpod import (
    EndpointProvider,
    NetworkVolumeProvider,
    RegistryAuthProvider,
    TemplateProvider,
    login_name,
)
from tests.infra.providers.runpod_double import RunPodDouble
from tests.support.provider_timing import FAST


@pytest.fixture
def runpod() -> RunPodDouble:
    return RunPodDouble()


@pytest.fixture
def creds(runpod: RunPodDouble) -> dict[str, Any]:
    return {"api_key": runpod.api_key, "api_url": "https://rest.runpod.io/v1", "timing": FAST}


@pytest.fixture
def endpoint(creds: dict[str, Any]) -> dict[str, Any]:
    return {
        **creds,
        "name": "cw-workshop-runpod",
        "template_id": "te00000001",
        "gpu_type_ids": ["NVIDIA H100 80GB HBM3"],
        "gpu_count": 1,
        "workers_min": 0,
        "workers_max": 40,
        "idle_timeout_s": 60,
        "network_volume_id": "ne00000002",
    }


def test_endpoint_body_uses_rest_field_names(runpod: RunPodDouble, endpoint: dict[str, Any]) -> None:
    made = EndpointProvider(runpod.transport).create(endpoint)

    stored = runpod.store["endpoints"][made.id]
    assert stored["templateId"] == "te00000001" and stored["workersMax"] == 40
    assert stored["gpuTypeIds"] == ["NVIDIA H100 80GB HBM3"] and stored["networkVolumeId"] == "ne00000002"
    assert stored["flashboot"] is True and stored["idleTimeout"] == 60
    assert made.outs["endpoint_url"] == f"https://api.runpod.ai/v2/{made.id}"


def test_a_5xx_then_success_creates_one_endpoint(runpod: RunPodDouble, endpoint: dict[str, Any]) -> None:
    runpod.fail("POST", "/endpoints", status=502)

    EndpointProvider(runpod.transport).create(endpoint)

    assert len(runpod.store["endpoints"]) == 1


def test_a_timeout_after_creating_adopts_the_endpoint(runpod: RunPodDouble, endpoint: dict[str, Any]) -> None:
    runpod.fail("POST", "/endpoints", when="hang")

    made = EndpointProvider(runpod.transport).create(endpoint)

    assert list(runpod.store["endpoints"]) == [made.id]
    assert runpod.log.count(("POST", "/endpoints")) == 1


def test_insufficient_funds_after_creating_leaves_no_endpoint(
    runpod: RunPodDouble, endpoint: dict[str, Any]
) -> None:
    runpod.fail("POST", "/endpoints", status=400, message="Insufficient balance", when="after")

    with pytest.raises(ProviderError, match="Add credit to the RunPod account"):
        EndpointProvider(runpod.transport).create(endpoint)

    assert runpod.store["endpoints"] == {}


def test_quota_is_explained_and_nothing_is_made(runpod: RunPodDouble, endpoint: dict[str, Any]) -> None:
    runpod.fail("POST", "/endpoints", status=403, message="max workers quota exceeded")

    with pytest.raises(ProviderError, match="lower the pool's max workers"):
        EndpointProvider(runpod.transport).create(endpoint)

    assert runpod.store["endpoints"] == {}


def test_timeouts_that_never_end_give_up_and_clean_up(runpod: RunPodDouble, endpoint: dict[str, Any]) -> None:
    runpod.fail("POST", "/endpoints", when="hang", times=3)

    with pytest.raises(ProviderError, match="kept failing"):
        EndpointProvider(runpod.transport).create({**endpoint, "timing": {**FAST, "attempts": 1}})

    assert runpod.store["endpoints"] == {}


def test_scaling_changes_in_place_and_delete_is_confirmed(
    runpod: RunPodDouble, endpoint: dict[str, Any]
) -> None:
    provider = EndpointProvider(runpod.transport)
    made = provider.create(endpoint)
    news = {**endpoint, "workers_max": 10}

    assert provider.diff(made.id, made.outs, news).replaces == []
    provider.update(made.id, made.outs, news)
    assert runpod.store["endpoints"][made.id]["workersMax"] == 10
    provider.delete(made.id, made.outs)
    provider.delete(made.id, made.outs)
    assert runpod.store["endpoints"] == {}
    assert runpod.log[-1] == ("GET", f"/endpoints/{made.id}")


def test_template_of_our_name_is_adopted_not_refused(runpod: RunPodDouble, creds: dict[str, Any]) -> None:
    props = {**creds, "name": "cw-worker", "image": "ghcr.io/org/comfy-worker@sha256:abc", "env": {"A": 1}}
    first = TemplateProvider(runpod.transport).create(props)

    second = TemplateProvider(runpod.transport).create(props)

    assert first.id == second.id
    assert runpod.store["templates"][first.id]["isServerless"] is True
    assert runpod.store["templates"][first.id]["env"] == {"A": "1"}


def test_registry_auth_names_are_unique_and_its_login_is_never_shown(runpod: RunPodDouble) -> None:
    def post(body: dict[str, str]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {runpod.api_key}"}
        with httpx.Client(transport=runpod.transport, base_url="https://rest.runpod.io/v1") as http:
            return http.post("/containerregistryauth", json=body, headers=headers)

    made = post({"name": "cw-registry", "username": "acme", "password": "ghp_1"})
    again = post({"name": "cw-registry", "username": "acme", "password": "ghp_2"})

    assert made.status_code == 200 and set(made.json()) == {"id", "name"}
    assert again.status_code == 400 and "must be unique" in again.json()["error"]
    assert [auth["password"] for auth in runpod.store["containerregistryauth"].values()] == ["ghp_1"]


def test_a_registry_auth_left_under_our_name_is_adopted_and_one_of_another_token_left_alone(
    runpod: RunPodDouble, creds: dict[str, Any]
) -> None:
    """RunPod never shows an auth's login, but its name carries the workshop's tag (the pools name it,
    ``owned_name``) and its login's fingerprint (``login_name``): one found under it is this workshop's
    with this very token (a failed create's, a lost state's) and is adopted. One of an older token is
    not touched: a template may still pull with it, and RunPod refuses to delete it then."""
    props = {
        **creds,
        "name": "cw-workshop-overflow-registry-0a1b2c3d",
        "username": "acme",
        "password": "ghp_new",
    }
    auths = runpod.store["containerregistryauth"]
    auths["co-leftover"] = {
        "id": "co-leftover",
        "name": login_name(props),
        "username": "acme",
        "password": "ghp_new",
    }
    yesterday = {**props, "password": "ghp_old"}
    auths["co-yesterday"] = {
        "id": "co-yesterday", "name": login_name(yesterday), "username": "acme", "password": "ghp_old"
    }  # fmt: skip

    made = RegistryAuthProvider(runpod.transport).create(props)

    assert made.id == "co-leftover" and sorted(auths) == ["co-leftover", "co-yesterday"]
    assert login_name(props) != login_name(yesterday) and login_name(props).startswith(f"{props['name']}-")


def test_a_registry_auth_runpod_made_although_it_answered_5xx_is_adopted(
    runpod: RunPodDouble, creds: dict[str, Any]
) -> None:
    """The create's own request went through: what it finds under our name then is its own."""
    props = {**creds, "name": "cw-workshop-overflow-registry", "username": "acme", "password": "ghp_new"}
    runpod.fail("POST", "/containerregistryauth", status=500, when="after")

    made = RegistryAuthProvider(runpod.transport).create(props)

    assert [(auth["id"], auth["password"]) for auth in runpod.store["containerregistryauth"].values()] == [
        (made.id, "ghp_new")
    ]
    assert runpod.log.count(("POST", "/containerregistryauth")) == 1


def test_network_volume_is_kept_after_a_failure_and_never_shrinks(
    runpod: RunPodDouble, creds: dict[str, Any]
) -> None:
    props = {**creds, "name": "cw-models", "size": 200, "data_center": "EU-RO-1"}
    runpod.fail("POST", "/networkvolumes", status=400, message="bad", when="after")

    with pytest.raises(ProviderError):
        NetworkVolumeProvider(runpod.transport).create(props)
    made = NetworkVolumeProvider(runpod.transport).create(props)

    assert list(runpod.store["networkvolumes"]) == [made.id]
    with pytest.raises(ProviderError, match="cannot shrink"):
        NetworkVolumeProvider(runpod.transport).update(made.id, made.outs, {**props, "size": 100})


def test_a_wrong_key_names_the_config_key(runpod: RunPodDouble, endpoint: dict[str, Any]) -> None:
    with pytest.raises(ProviderError, match="comfy-workshop:runpodApiKey"):
        EndpointProvider(runpod.transport).create({**endpoint, "api_key": "wrong"})


def test_the_provider_pickles_without_a_transport() -> None:
    provider = dill.loads(dill.dumps(EndpointProvider(), recurse=True))

    assert provider.transport is None
    assert isinstance(provider.connect({"api_key": "k"}).http, httpx.Client)


def test_a_models_volume_moved_to_another_data_center_is_made_there_and_the_old_one_kept(
    runpod: RunPodDouble, creds: dict[str, Any]
) -> None:
    """The next morning's pools name the same volume in another data center (a new resource, the old
    one retained): the volume of that name in the old data center is neither adopted (workers placed
    in the new one could not mount it) nor deleted (it holds the models)."""
    volume = {**creds, "name": "comfy-models", "size": 500}
    old = NetworkVolumeProvider(runpod.transport).create({**volume, "data_center": "EU-RO-1"})

    new = NetworkVolumeProvider(runpod.transport).create({**volume, "data_center": "US-KS-2"})

    volumes = runpod.store["networkvolumes"]
    assert new.id != old.id and volumes[new.id]["dataCenterId"] == "US-KS-2"
    assert volumes[old.id]["dataCenterId"] == "EU-RO-1", "the models in the old data center were deleted"


def test_a_rate_limit_is_waited_out_as_its_retry_after_asks(
    runpod: RunPodDouble, endpoint: dict[str, Any]
) -> None:
    """RunPod's limiter answers 429 with Retry-After and refuses every call until then: retries at our
    own quick pace spent every attempt inside that window, and the `up` failed."""
    runpod.fail("POST", "/endpoints", status=429, retry_after_s=1)

    made = EndpointProvider(runpod.transport).create(endpoint)

    assert list(runpod.store["endpoints"]) == [made.id]
    assert runpod.log.count(("POST", "/endpoints")) == 2


def test_a_rate_limit_longer_than_an_up_should_wait_says_when_to_run_it_again(
    runpod: RunPodDouble, endpoint: dict[str, Any]
) -> None:
    runpod.fail("POST", "/endpoints", status=429, retry_after_s=3600)

    with pytest.raises(ProviderError, match=r"HTTP 429.*wait 3600 s.*`pulumi up` again"):
        EndpointProvider(runpod.transport).create(endpoint)

    assert runpod.log.count(("POST", "/endpoints")) == 1, "a call inside the window is refused anyway"
    assert runpod.store["endpoints"] == {}


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("30", 30.0), ("0", 0.0), (None, None), ("soon", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header) == seconds


def test_a_template_of_our_name_serving_another_workshop_is_not_taken_over(
    runpod: RunPodDouble, creds: dict[str, Any]
) -> None:
    """Template names are unique at RunPod: the second workshop of one account with the same stack and
    pool names adopted the first's template and changed it to its own image and queue, so the first's
    endpoint served the second's queue."""
    template = {**creds, "name": "cw-workshop-overflow", "image": "ghcr.io/a/worker:1"}
    theirs = TemplateProvider(runpod.transport).create(
        {**template, "env": {"WORKER_QUEUE_URL": "https://a.example.org"}}
    )

    with pytest.raises(ProviderError, match=r"did not make.*pulumi stack rename"):
        TemplateProvider(runpod.transport).create(
            {**template, "image": "ghcr.io/b/worker:1", "env": {"WORKER_QUEUE_URL": "https://b.example.org"}}
        )

    kept = runpod.store["templates"][theirs.id]
    assert kept["imageName"] == "ghcr.io/a/worker:1" and kept["env"] == {
        "WORKER_QUEUE_URL": "https://a.example.org"
    }
