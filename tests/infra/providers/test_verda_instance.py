"""The Verda instance provider: idempotent, and never leaves a billable instance Pulumi does not know."""

from __future__ import annotations

from typing import Any

import dill
import pytest

from infra.providers.lifecycle import ProviderError
from infra.providers.verda_instance import InstanceProvider
from tests.infra.providers.verda_double import VerdaDouble


@pytest.fixture
def props(creds: dict[str, Any]) -> dict[str, Any]:
    return {
        **creds,
        "name": "cw-workshop-h100-0",
        "instance_type": "1H100.80S.30V",
        "location": "FIN-03",
        "is_spot": False,
        "ssh_key_ids": ["key-1"],
        "startup_script_id": "script-1",
        "existing_volumes": ["sfs-1"],
        "os_volume_size": 100,
    }


def test_create_waits_until_running_and_reports_ip(verda: VerdaDouble, props: dict[str, Any]) -> None:
    result = InstanceProvider().create(props)

    assert result.outs["status"] == "running"
    assert result.outs["ip"] == "203.0.113.7"
    [instance] = verda.billable_instances()
    assert instance["id"] == result.id and instance["hostname"] == "cw-workshop-h100-0"
    assert instance["_volumes"] == ["sfs-1"]


def test_create_twice_adopts_instead_of_buying_a_second(verda: VerdaDouble, props: dict[str, Any]) -> None:
    first = InstanceProvider().create(props)
    second = InstanceProvider().create(props)

    assert second.id == first.id
    assert len(verda.billable_instances()) == 1


def test_5xx_after_the_cloud_acted_then_success_yields_one_instance(
    verda: VerdaDouble, props: dict[str, Any]
) -> None:
    verda.fail("POST", "/instances", status=503, code="service_unavailable", when="after")

    result = InstanceProvider().create(props)

    assert [i["id"] for i in verda.billable_instances()] == [result.id]
    assert verda.log.count(("POST", "/instances")) == 1


def test_a_rate_limit_is_waited_out_as_its_retry_after_asks(
    verda: VerdaDouble, props: dict[str, Any]
) -> None:
    """The SDK turns any answer >= 400 into an APIException of the body's code, dropping the status:
    Verda's codes name no rate limit, so a 429 (and a gateway's 5xx without a code) failed the `up` at
    once, or was retried inside the limiter's window."""
    verda.fail("POST", "/instances", status=429, code=None, message="Too Many Requests", retry_after_s=1)

    result = InstanceProvider().create(props)

    assert [i["id"] for i in verda.billable_instances()] == [result.id]
    assert verda.log.count(("POST", "/instances")) == 2


def test_a_gateway_5xx_without_a_code_is_retried(verda: VerdaDouble, props: dict[str, Any]) -> None:
    verda.fail("POST", "/instances", status=502, code=None, message="Bad Gateway")

    result = InstanceProvider().create(props)

    assert [i["id"] for i in verda.billable_instances()] == [result.id]


def test_a_rate_limit_longer_than_an_up_should_wait_says_when_to_run_it_again(
    verda: VerdaDouble, props: dict[str, Any]
) -> None:
    verda.fail("POST", "/instances", status=429, code=None, message="Too Many Requests", retry_after_s=3600)

    with pytest.raises(ProviderError, match=r"HTTP 429.*wait 3600 s.*`pulumi up` again"):
        InstanceProvider().create(props)

    assert verda.log.count(("POST", "/instances")) == 1
    assert verda.billable_instances() == []


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"when": "hang"}, id="a token request that hangs"),
        pytest.param({"status": 429, "code": None, "retry_after_s": 1}, id="a rate-limited token request"),
        pytest.param({"status": 503, "code": None}, id="a gateway 5xx on the token request"),
    ],
)
def test_the_token_request_is_bounded_and_retried_like_every_other_call(
    verda: VerdaDouble, props: dict[str, Any], fault: dict[str, Any]
) -> None:
    """The SDK asks for its token when the client is built (and again when it expires) with a request
    of its own: no time limit, so a token endpoint that hung hung `pulumi up`; and a refusal without
    one of the SDK's codes (429, a gateway's 5xx) failed the `up` at once."""
    verda.fail("POST", "/oauth2/token", **fault)

    result = InstanceProvider().create(props)

    assert [i["id"] for i in verda.billable_instances()] == [result.id]
    assert verda.log.count(("POST", "/oauth2/token")) >= 2


def test_5xx_before_acting_is_retried(verda: VerdaDouble, props: dict[str, Any]) -> None:
    verda.fail("POST", "/instances", status=500, code="server_error", when="before")

    result = InstanceProvider().create(props)

    assert [i["id"] for i in verda.billable_instances()] == [result.id]


def test_a_timeout_after_the_cloud_acted_leaves_one_instance(
    verda: VerdaDouble, props: dict[str, Any]
) -> None:
    verda.fail("POST", "/instances", when="hang")

    result = InstanceProvider().create(props)

    assert [i["id"] for i in verda.billable_instances()] == [result.id]


def test_insufficient_funds_says_what_to_do_and_leaves_nothing(
    verda: VerdaDouble, props: dict[str, Any]
) -> None:
    verda.fail("POST", "/instances", status=400, code="insufficient_funds", message="Not enough balance")

    with pytest.raises(ProviderError, match=r"insufficient_funds.*Top up the Verda account") as err:
        InstanceProvider().create(props)

    assert "Nothing was left behind" in str(err.value)
    assert verda.billable_instances() == []


def test_quota_refusal_after_the_instance_was_made_deletes_it(
    verda: VerdaDouble, props: dict[str, Any]
) -> None:
    verda.fail("POST", "/instances", status=403, code="forbidden_action", message="Quota", when="after")

    with pytest.raises(ProviderError, match="quota"):
        InstanceProvider().create(props)

    assert verda.billable_instances() == []
    assert [v for v in verda.live_volumes() if v["is_os_volume"]] == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("POST", "/instances", id="on the create"),
        pytest.param("GET", "/instances/inst-.*", id="while booting, deleting what was made"),
    ],
)
def test_persistent_5xx_gives_up_cleanly(
    verda: VerdaDouble, props: dict[str, Any], method: str, path: str
) -> None:
    verda.fail(method, path, status=502, code="server_error", times=3)

    with pytest.raises(ProviderError, match="kept failing"):
        InstanceProvider().create(props)

    assert verda.billable_instances() == []


def test_a_boot_that_never_finishes_is_deleted_with_its_os_volume(
    verda: VerdaDouble, props: dict[str, Any]
) -> None:
    verda.boot = ["ordered", "provisioning"]

    with pytest.raises(ProviderError, match="reaching 'running' did not happen"):
        InstanceProvider().create({**props, "timing": {**props["timing"], "ready_timeout_s": 0.05}})

    assert verda.billable_instances() == []
    assert verda.live_volumes() == []


def test_an_instance_in_error_is_deleted(verda: VerdaDouble, props: dict[str, Any]) -> None:
    verda.boot = ["ordered", "error"]

    with pytest.raises(ProviderError, match="status 'error'"):
        InstanceProvider().create(props)

    assert verda.billable_instances() == []


def test_no_capacity_fails_before_buying_anything(verda: VerdaDouble, props: dict[str, Any]) -> None:
    verda.unavailable.add("1H100.80S.30V")

    with pytest.raises(ProviderError, match=r"no on-demand 1H100\.80S\.30V free in FIN-03"):
        InstanceProvider().create(props)

    assert ("POST", "/instances") not in verda.log


def test_a_leftover_of_another_spec_is_replaced_not_adopted(
    verda: VerdaDouble, props: dict[str, Any]
) -> None:
    InstanceProvider().create({**props, "instance_type": "1A100.22V"})

    result = InstanceProvider().create(props)

    [instance] = verda.billable_instances()
    assert instance["id"] == result.id and instance["instance_type"] == "1H100.80S.30V"


@pytest.mark.parametrize("instance_type", ["1H100.80S.30V", "1A100.22V"], ids=["same type", "other type"])
def test_an_instance_of_our_name_that_another_stack_made_is_neither_adopted_nor_deleted(
    verda: VerdaDouble, props: dict[str, Any], instance_type: str
) -> None:
    """Two workshops sharing one Verda account, whose stacks and pools have the same names (both ran the
    README's `pulumi stack init workshop`), name their instances alike. The second's create adopted the
    first's running instance (so either's destroy deleted the other's GPU), or, of another type, deleted
    it to make its own. An instance made with other SSH keys than this pool's is not this stack's."""
    other_stack = {**props, "instance_type": instance_type, "ssh_key_ids": ["their-key"]}
    theirs = InstanceProvider().create(other_stack)

    with pytest.raises(ProviderError, match=r"did not make.*pulumi stack rename"):
        InstanceProvider().create(props)

    assert [(i["id"], i["status"]) for i in verda.billable_instances()] == [(theirs.id, "running")]


def test_delete_removes_instance_and_os_volume_but_keeps_the_shared_filesystem(
    verda: VerdaDouble, props: dict[str, Any]
) -> None:
    result = InstanceProvider().create(props)

    InstanceProvider().delete(result.id, result.outs)

    assert verda.billable_instances() == []
    assert verda.live_volumes() == []
    deleted_at = verda.log.index(("PUT", "/instances"))
    assert ("GET", f"/instances/{result.id}") in verda.log[deleted_at:]  # deletion confirmed by a read


def test_delete_is_idempotent_and_survives_a_5xx(verda: VerdaDouble, props: dict[str, Any]) -> None:
    result = InstanceProvider().create(props)
    verda.fail("PUT", "/instances", status=500, code="server_error")

    InstanceProvider().delete(result.id, result.outs)
    InstanceProvider().delete(result.id, result.outs)

    assert verda.billable_instances() == []


def test_read_of_a_vanished_instance_tells_pulumi_it_is_gone(
    verda: VerdaDouble, props: dict[str, Any]
) -> None:
    result = InstanceProvider().create(props)
    verda.instances[result.id]["status"] = "discontinued"

    assert InstanceProvider().read(result.id, result.outs).id is None


def test_changing_the_type_replaces_but_credentials_and_timing_never_do(props: dict[str, Any]) -> None:
    provider = InstanceProvider()
    rotated = provider.diff("i", props, {**props, "client_secret": "new"})

    assert provider.diff("i", props, {**props, "timing": {}}).changes is False
    # A new key is stored (destroy calls with the stored outputs) by an update that calls nothing.
    assert rotated.changes is True and rotated.replaces == []
    bigger = provider.diff("i", props, {**props, "instance_type": "2H100.80S.60V"})
    assert bigger.replaces == ["instance_type"] and bigger.delete_before_replace


def test_missing_credentials_name_the_config_keys(
    props: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VERDA_CLIENT_ID", raising=False)
    monkeypatch.delenv("VERDA_CLIENT_SECRET", raising=False)

    with pytest.raises(ProviderError, match="comfy-workshop:verdaClientSecret"):
        InstanceProvider().create({**props, "client_id": "", "client_secret": ""})


def test_the_provider_survives_pickling_as_pulumi_does(verda: VerdaDouble, props: dict[str, Any]) -> None:
    provider = dill.loads(dill.dumps(InstanceProvider(), recurse=True))

    assert provider.create(props).outs["status"] == "running"


def test_a_spot_instance_takes_its_os_volume_along_when_reclaimed(
    verda: VerdaDouble, props: dict[str, Any]
) -> None:
    result = InstanceProvider().create({**props, "is_spot": True})

    assert verda.instances[result.id]["_os_volume"]["on_spot_discontinue"] == "delete_permanently"
    assert verda.instances[result.id]["is_spot"] is True


def test_a_status_that_never_becomes_running_fails_at_once_and_leaves_nothing(
    verda: VerdaDouble, props: dict[str, Any]
) -> None:
    verda.boot = ["ordered", "offline"]
    slow = {**props, "timing": {**props["timing"], "ready_timeout_s": 600.0}}

    with pytest.raises(ProviderError, match=r"status 'offline' instead of 'running'.*Nothing was left"):
        InstanceProvider().create(slow)

    assert verda.billable_instances() == []
    gets = [call for call in verda.log if call[0] == "GET" and call[1].startswith("/instances/")]
    assert len(gets) < 10, "it gave up at the first status that cannot lead to running"


def test_a_create_retried_after_a_timeout_keeps_the_instance_it_made(
    verda: VerdaDouble, props: dict[str, Any]
) -> None:
    """A leftover of a lost state carrying the workshop's tag is deleted and made anew; the instance
    this very create asked for before its request timed out carries the same tag and is no leftover:
    the retry adopts it, it is never deleted (a GPU bought twice, or the fresh one thrown away)."""
    verda.fail("POST", "/instances", when="hang")

    result = InstanceProvider().create({**props, "workshop_tag": "1a2b3c4d"})

    assert [i["id"] for i in verda.billable_instances()] == [result.id]
    assert ("PUT", "/instances") not in verda.log


def test_a_lost_states_instance_is_deleted_and_made_anew_with_todays_keys(
    verda: VerdaDouble, props: dict[str, Any]
) -> None:
    """The state was lost (yesterday's key pair made anew today): yesterday's instance of our name and
    workshop tag runs workers with yesterday's worker token and tailnet key. It stopped the `up` ('it
    has other SSH keys') until deleted by hand; it is now deleted, confirmed gone, and made anew."""
    yesterday = InstanceProvider().create({**props, "workshop_tag": "1a2b3c4d", "ssh_key_ids": ["key-0"]})

    today = InstanceProvider().create({**props, "workshop_tag": "1a2b3c4d"})

    [instance] = verda.billable_instances()
    assert instance["id"] == today.id != yesterday.id and instance["ssh_key_ids"] == ["key-1"]
    assert "1a2b3c4d" in instance["description"]
    assert verda.instances[yesterday.id]["status"] == "deleted"


# What the pools write into an instance's startup script (the worker env file) and give the instance
# as ``worker_files``: where its workers store participants' files.
FILES = {"WORKER_STORAGE_URL": "s3://acme-files/files", "S3_ENDPOINT_URL": "https://acct1.r2.example.net"}


def _last_releases_instance(verda: VerdaDouble, props: dict[str, Any], files: dict[str, str]) -> str:
    """An instance of our name the last release made (no workshop tag in its description) with a key pair
    and startup script a lost state made anew since; its script writes to ``files``."""
    env = "\n".join(f"{key}={value}" for key, value in sorted(files.items()))
    verda.scripts["script-0"] = {
        "id": "script-0",
        "name": "cw-workshop-h100-startup",
        "script": f"#!/bin/sh\n{env}\n",
    }
    return InstanceProvider().create({**props, "ssh_key_ids": ["key-0"], "startup_script_id": "script-0"}).id


def test_an_untagged_leftover_whose_workers_store_this_workshops_files_is_deleted_and_made_anew(
    verda: VerdaDouble, props: dict[str, Any]
) -> None:
    """A lost state's instance made before the workshop's tag: its startup script (still at Verda)
    stores participants' files in this workshop's bucket, at its R2 account, which no other workshop
    writes: it is this workshop's, deleted and made anew as a tagged one is, not a stop of the `up`."""
    yesterday = _last_releases_instance(verda, props, FILES)

    today = InstanceProvider().create({**props, "workshop_tag": "1a2b3c4d", "worker_files": FILES})

    [instance] = verda.billable_instances()
    assert instance["id"] == today.id != yesterday and instance["ssh_key_ids"] == ["key-1"]
    assert verda.instances[yesterday]["status"] == "deleted"


def test_an_untagged_instance_of_our_name_storing_elsewhere_stops_the_up_saying_how_to_check_it(
    verda: VerdaDouble, props: dict[str, Any]
) -> None:
    """Nothing proves it ours: the `up` stops, neither taking it over nor deleting it, and tells the
    organizer what to look at in Verda's console to tell whether it is this workshop's."""
    other = {**FILES, "WORKER_STORAGE_URL": "s3://their-files/files"}
    yesterday = _last_releases_instance(verda, props, other)

    with pytest.raises(ProviderError) as stopped:
        InstanceProvider().create({**props, "workshop_tag": "1a2b3c4d", "worker_files": FILES})

    message = str(stopped.value)
    assert "WORKER_STORAGE_URL=s3://acme-files/files" in message and "startup script" in message, message
    assert "delete it" in message and "OS volume" in message, message
    assert [i["id"] for i in verda.billable_instances()] == [yesterday]
