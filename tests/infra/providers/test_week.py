"""A workshop week for every dynamic provider, as the Pulumi engine drives it (see ``engine.py``):
create; a second `up` with unchanged inputs; each input changed in turn; a refresh after the object
was deleted outside Pulumi; a destroy. Against the project's Verda and RunPod doubles on loopback."""

from __future__ import annotations

import json
import sys
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pulumi.dynamic.dynamic import serialize_provider

from infra.providers import resources
from tests.infra.providers.engine import HOST, PROVIDER_KEY, Engine, HostError, new_provider_process
from tests.infra.providers.runpod_double import RunPodDouble
from tests.infra.providers.verda_double import VerdaDouble
from tests.support.provider_timing import FAST

Doubles = tuple[VerdaDouble, RunPodDouble]


@dataclass(frozen=True)
class Case:
    """One resource kind: its inputs as a pool declares them, how each input changes and what the
    change must do (``update`` or ``replace``), and where its double keeps the remote objects (Verda
    marks a deleted volume or instance ``deleted`` for a while instead of forgetting it)."""

    resource: type
    props: dict[str, Any]
    changes: dict[str, tuple[Any, str]]
    store: Callable[[Doubles], dict[str, dict[str, Any]]]
    cloud: str = "verda"
    marks_deleted: bool = False

    def remote(self, doubles: Doubles, id_: str) -> dict[str, Any] | None:
        """The remote object ``id_``, None when it is gone."""
        found = self.store(doubles).get(id_)
        gone = found is None or (self.marks_deleted and found.get("status") in ("deleted", "deleting"))
        return None if gone else found

    def named(self, doubles: Doubles, name: str) -> list[dict[str, Any]]:
        """The remote objects of ``name`` not gone (an instance's name is its host name)."""
        return [
            obj
            for key, obj in self.store(doubles).items()
            if name in (key, obj.get("name"), obj.get("hostname")) and self.remote(doubles, key) is not None
        ]

    def forget(self, doubles: Doubles, id_: str) -> None:
        """Delete the remote object behind Pulumi's back."""
        if self.marks_deleted:
            self.store(doubles)[id_]["status"] = "deleted"
        else:
            del self.store(doubles)[id_]


DEPLOYMENT = {
    "name": "cw-workshop-burst", "image": "ghcr.io/acme/worker@sha256:aaa", "port": 8080,
    "health_path": "/health", "cmd": ["serve-push"], "env": {"WORKER_POOL": "burst"},
    "secret_env": {"WORKER_TOKEN": "cw-workshop-burst-worker-token"},
    "mounts": [{"mount_path": "/mnt/models", "volume_id": "vol-1"}], "compute": {"name": "H100", "size": 1},
    "scaling": {"min_replica_count": 0, "max_replica_count": 4}, "registry_credentials": "cw-registry",
    "is_spot": False,
}  # fmt: skip
INSTANCE = {
    "name": "cw-workshop-baseline-0", "instance_type": "1H100.80S.30V", "location": "FIN-03",
    "is_spot": False, "ssh_key_ids": ["sshkey-1"], "startup_script_id": "script-1", "setup_digest": "d1",
    "existing_volumes": ["vol-1"], "os_volume_size": 100, "description": "comfy-workshop workshop/baseline",
    "workshop_tag": "1a2b3c4d",
}  # fmt: skip
ENDPOINT = {
    "name": "cw-workshop-overflow", "template_id": "te1", "gpu_type_ids": ["NVIDIA H100 80GB HBM3"],
    "gpu_count": 1, "workers_min": 0, "workers_max": 10, "idle_timeout_s": 60, "flashboot": True,
    "network_volume_id": "nv1",
}  # fmt: skip

CASES = {
    "ssh-key": Case(
        resources.VerdaSshKey,
        {"name": "cw-workshop-baseline", "public_key": "ssh-ed25519 AAAA1"},
        {"public_key": ("ssh-ed25519 AAAA2", "replace"), "name": ("cw-workshop-other", "replace")},
        lambda d: d[0].ssh_keys,
    ),
    "startup-script": Case(
        resources.VerdaStartupScript,
        {"name": "cw-workshop-baseline", "script": "#!/bin/sh\necho one\n"},
        {"script": ("#!/bin/sh\necho two\n", "replace")},
        lambda d: d[0].scripts,
    ),
    "shared-volume": Case(
        resources.VerdaSharedVolume,
        # Not kept: this engine deletes the old volume of a replace, as it does one not retained.
        {"name": "comfy-models", "size": 500, "location": "FIN-03", "keep": False, "also_at": []},
        {"size": (600, "update"), "location": ("FIN-01", "replace"), "name": ("other-models", "replace")},
        lambda d: d[0].volumes,
        marks_deleted=True,
    ),
    "instance": Case(
        resources.VerdaInstance,
        INSTANCE,
        {
            "startup_script_id": ("script-2", "update"),  # a renewed tailnet key: a new script, same setup
            # The pool's SSH key deleted in Verda's console, made again (same public key) by the next up.
            "ssh_key_ids": (["sshkey-2"], "update"),
            "setup_digest": ("d2", "replace"),
            "instance_type": ("2H100.80S.60V", "replace"),
            "is_spot": (True, "replace"),
            "existing_volumes": ([], "replace"),
            "os_volume_size": (200, "replace"),
        },
        lambda d: d[0].instances,
        marks_deleted=True,
    ),
    "deployment": Case(
        resources.VerdaDeployment,
        DEPLOYMENT,
        {
            "image": ("ghcr.io/acme/worker@sha256:bbb", "update"),
            "env": ({"WORKER_POOL": "burst", "WORKER_SECRETS_VERSION": "2"}, "update"),
            "scaling": ({"min_replica_count": 1, "max_replica_count": 8}, "update"),
            "compute": ({"name": "H100", "size": 2}, "update"),
            "is_spot": (True, "update"),
            "name": ("cw-workshop-other", "replace"),
        },
        lambda d: d[0].deployments,
    ),
    "secret": Case(
        resources.VerdaSecret,
        {"name": "cw-workshop-burst-worker-token", "value": "token-1"},
        {"value": ("token-2", "replace")},
        lambda d: d[0].secrets,
    ),
    "registry-credentials": Case(
        resources.VerdaRegistryCredentials,
        {"name": "cw-registry", "registry": "ghcr", "username": "acme", "access_token": "ghp_1"},
        {"access_token": ("ghp_2", "replace"), "username": ("other", "replace")},
        lambda d: d[0].registry_credentials,
    ),
    "network-volume": Case(
        resources.RunPodNetworkVolume,
        {"name": "comfy-models", "size": 500, "data_center": "EU-RO-1", "keep": False, "also_at": []},
        {"size": (600, "update"), "data_center": ("US-KS-2", "replace")},
        lambda d: d[1].store["networkvolumes"],
        cloud="runpod",
    ),
    "registry-auth": Case(
        resources.RunPodRegistryAuth,
        {"name": "cw-workshop-overflow-registry", "username": "acme", "password": "ghp_1"},
        {"password": ("ghp_2", "replace"), "username": ("other", "replace")},
        lambda d: d[1].store["containerregistryauth"],
        cloud="runpod",
    ),
    "template": Case(
        resources.RunPodTemplate,
        {
            "name": "cw-workshop-overflow",
            "image": "ghcr.io/acme/worker:1",
            "env": {"A": "1"},
            "start_cmd": ["runpod"],
        },
        {
            "image": ("ghcr.io/acme/worker:2", "update"),
            "env": ({"A": "2"}, "update"),
            "container_disk_gb": (40, "update"),
            "registry_auth_id": ("auth-1", "update"),
        },
        lambda d: d[1].store["templates"],
        cloud="runpod",
    ),
    "endpoint": Case(
        resources.RunPodEndpoint,
        ENDPOINT,
        {
            "workers_max": (20, "update"),
            "workers_min": (1, "update"),
            "gpu_type_ids": (["NVIDIA A100 80GB PCIe"], "update"),
            "template_id": ("te2", "update"),
            "network_volume_id": ("nv2", "update"),
            "name": ("cw-workshop-other", "replace"),
        },
        lambda d: d[1].store["endpoints"],
        cloud="runpod",
    ),
}


@pytest.fixture
def doubles() -> Iterator[Doubles]:
    with VerdaDouble().running() as verda, RunPodDouble().running() as runpod:
        yield verda, runpod


def connection(case: Case, d: Doubles) -> dict[str, Any]:
    if case.cloud == "runpod":
        return {"api_key": d[1].api_key, "api_url": d[1].url, "timing": FAST}
    return {"client_id": "cid", "client_secret": d[0].client_secret, "api_url": d[0].url, "timing": FAST}


def created(kind: str, d: Doubles) -> tuple[Case, Engine, dict[str, Any]]:
    """A first `up` of ``kind``: its case, its engine and the inputs the `up` was given."""
    case = CASES[kind]
    engine = Engine(case.resource, kind)
    props = {**case.props, **connection(case, d)}
    engine.up(props)
    return case, engine, props


def test_every_resource_the_pools_declare_has_a_week_here() -> None:
    assert {case.resource for case in CASES.values()} == set(resources.ALL)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_second_up_with_the_same_inputs_changes_nothing(kind: str, doubles: Doubles) -> None:
    _, engine, props = created(kind, doubles)
    calls = (len(doubles[0].log), len(doubles[1].log))

    for _ in range(2):  # the next morning, and the one after
        step = engine.up(props)
        assert (step.action, step.replaces) == ("same", []), f"{kind}: {step.diff}"
    writes = [c for c in [*doubles[0].log[calls[0] :], *doubles[1].log[calls[1] :]] if c[0] != "GET"]
    assert [w for w in writes if w[1] != "/oauth2/token"] == [], "an unchanged up must not write"


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_input_changed_in_turn_updates_or_replaces_as_intended(kind: str, doubles: Doubles) -> None:
    case, engine, props = created(kind, doubles)

    for key, (value, intended) in case.changes.items():
        before = engine.state
        assert before is not None
        props = {**props, key: value}
        step = engine.up(props)

        assert step.action == intended, f"{kind}.{key}: {step.diff}"
        assert step.replaces == ([key] if intended == "replace" else [])
        assert engine.state is not None and case.remote(doubles, engine.state.id) is not None
        if intended == "replace" and engine.state.id != before.id:
            assert case.remote(doubles, before.id) is None, f"{kind}.{key}: the old object was left behind"
        assert engine.up(props).action == "same", f"{kind}.{key}: the change did not settle"


@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_refresh_drops_what_was_deleted_outside_pulumi_and_up_makes_it_again(
    kind: str, doubles: Doubles
) -> None:
    case, engine, props = created(kind, doubles)
    assert engine.state is not None
    engine.refresh()
    assert engine.state is not None, "a refresh of a living object keeps it"

    case.forget(doubles, engine.state.id)
    engine.refresh()

    assert engine.state is None
    assert engine.up(props).action == "create"
    assert engine.state is not None and case.remote(doubles, engine.state.id) is not None


@pytest.mark.parametrize("kind", sorted(CASES))
def test_destroy_deletes_the_remote_object(kind: str, doubles: Doubles) -> None:
    case, engine, _ = created(kind, doubles)
    assert engine.state is not None
    id_ = engine.state.id

    engine.destroy()

    assert case.remote(doubles, id_) is None


def test_two_resources_naming_one_volume_created_at_once_make_one_volume(doubles: Doubles) -> None:
    case = CASES["shared-volume"]
    props = {**case.props, **connection(case, doubles)}
    engines = [Engine(case.resource, f"pool-{index}-models") for index in range(2)]
    start = threading.Barrier(len(engines))
    doubles[0].rendezvous("GET", "/volumes", parties=2, timeout_s=1.0)
    errors: list[BaseException] = []

    def up(engine: Engine) -> None:
        start.wait(timeout=5)
        try:
            engine.up(props)
        except BaseException as exc:  # reported below, with the thread's own error
            errors.append(exc)

    threads = [threading.Thread(target=up, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert [v["name"] for v in doubles[0].live_volumes() if not v["is_os_volume"]] == ["comfy-models"]
    assert {engine.state.id for engine in engines if engine.state} == {doubles[0].live_volumes()[0]["id"]}


@dataclass(frozen=True)
class Drift:
    """Someone changes the object in the provider's console: ``change`` does it to the double's copy,
    ``back`` says whether the copy is as the stack config says again, ``refused`` is what the next `up`
    says instead when it cannot put it back (a volume cannot shrink)."""

    change: Callable[[dict[str, Any]], None]
    back: Callable[[dict[str, Any]], bool] = lambda remote: True
    refused: str = ""


DRIFTS = {
    "endpoint": Drift(  # paused in RunPod's console: no worker would ever start
        lambda r: r.update(workersMax=0), lambda r: r["workersMax"] == ENDPOINT["workers_max"]
    ),
    "template": Drift(
        lambda r: r.update(imageName="ghcr.io/acme/worker:old"),
        lambda r: r["imageName"] == "ghcr.io/acme/worker:1",
    ),
    "deployment": Drift(
        lambda r: r["scaling"].update(max_replica_count=1), lambda r: r["scaling"]["max_replica_count"] == 4
    ),
    "instance": Drift(  # shut down in Verda's console: the pool had no GPU and nothing said so
        lambda r: r.update(status="offline"), lambda r: r["status"] == "running"
    ),
    "network-volume": Drift(lambda r: r.update(size=700), refused="set modelsVolume.sizeGb to 700"),
    "shared-volume": Drift(lambda r: r.update(size=700), refused="set modelsVolume.sizeGb to 700"),
}


@pytest.mark.parametrize("kind", sorted(DRIFTS))
def test_a_refresh_sees_a_change_made_in_the_console_and_the_next_up_puts_it_back(
    kind: str, doubles: Doubles
) -> None:
    case, engine, props = created(kind, doubles)
    drift = DRIFTS[kind]
    assert engine.state is not None
    remote = case.remote(doubles, engine.state.id)
    assert remote is not None
    drift.change(remote)

    engine.refresh()

    if drift.refused:
        with pytest.raises(HostError, match=drift.refused):
            engine.up(props)
        return
    step = engine.up(props)
    assert (step.action, step.replaces) == ("update", []), f"{kind}: the drift went unseen: {step.diff}"
    assert drift.back(case.remote(doubles, engine.state.id) or {})
    assert engine.up(props).action == "same"
    engine.refresh()
    assert engine.up(props).action == "same", "a refresh of an object as configured finds no drift"


@pytest.mark.parametrize(
    ("key", "value", "refused"),
    [
        ("instance_type", "2H100.80S.60V", r"no on-demand 2H100\.80S\.60V free in FIN-03"),
        ("is_spot", True, r"no spot 1H100\.80S\.30V free in FIN-03"),
    ],
)
def test_an_instance_is_not_deleted_for_a_machine_verda_has_none_of(
    key: str, value: Any, refused: str, doubles: Doubles
) -> None:
    """The engine deletes the old instance before it creates its replacement (one hostname): a new
    machine Verda cannot give must stop the `up` (and the preview) while the old one still runs."""
    _, engine, props = created("instance", doubles)
    assert engine.state is not None
    running = engine.state.id
    doubles[0].unavailable.add(str(value) if key == "instance_type" else INSTANCE["instance_type"])

    with pytest.raises(HostError, match=refused):
        engine.up({**props, key: value})

    assert [i["id"] for i in doubles[0].billable_instances()] == [running]
    assert engine.state.id == running


@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_rotated_api_key_reaches_the_state_so_the_evening_destroy_still_deletes(
    kind: str, doubles: Doubles
) -> None:
    """The organizer revokes the old key and sets the new one; `destroy` calls Delete with the STORED
    outputs, so an `up` that kept the old key there left a destroy that fails while the GPUs bill on."""
    case, engine, props = created(kind, doubles)
    assert engine.state is not None
    id_ = engine.state.id
    if case.cloud == "runpod":
        doubles[1].api_key = "rp-key-2"
        props = {**props, "api_key": "rp-key-2"}
    else:
        doubles[0].client_secret = "s3cret-2"
        props = {**props, "client_secret": "s3cret-2"}
    calls = (len(doubles[0].log), len(doubles[1].log))

    step = engine.up(props)

    assert (step.action, step.replaces) == ("update", [])
    writes = [c for c in [*doubles[0].log[calls[0] :], *doubles[1].log[calls[1] :]] if c[0] != "GET"]
    assert [w for w in writes if w[1] != "/oauth2/token"] == [], "a new key alone changes nothing remote"
    assert engine.up(props).action == "same"
    engine.destroy()
    assert case.remote(doubles, id_) is None


def test_a_verda_gpu_the_serverless_platform_does_not_offer_fails_the_check_at_preview(
    doubles: Doubles,
) -> None:
    """The engine checks every resource at preview: a compute name Verda does not have (a pool's
    `gpu`) was refused only at create, after the rest of the stack was made."""
    case = CASES["deployment"]
    engine = Engine(case.resource, "deployment")
    props = {**case.props, **connection(case, doubles), "compute": {"name": "H200x", "size": 1}}

    with pytest.raises(HostError, match=r"compute.*'H200x'.*fix: .*gpu.*H100, RTX 4500 Ada"):
        engine.up(props)

    assert ("POST", "/container-deployments") not in doubles[0].log


@pytest.mark.parametrize("kind", ["shared-volume", "network-volume"])
def test_a_kept_models_volume_grows_to_the_size_the_next_morning_asks_for(
    kind: str, doubles: Doubles
) -> None:
    """The evening destroy keeps the volume (retained: it leaves the state, not the provider); the
    organizer raises its size overnight; the morning's create adopts it and must grow it, or it stays
    small with the state saying otherwise and no later up ever growing it."""
    case, evening, props = created(kind, doubles)
    assert evening.state is not None
    kept = evening.state.id

    morning = Engine(case.resource, kind)
    assert morning.up({**props, "size": 800}).action == "create"

    assert morning.state is not None and morning.state.id == kept
    remote = case.remote(doubles, kept)
    assert remote is not None and remote["size"] == 800


SHRINK_REFUSED = r"check failed.*is 800 GB.*cannot shrink.*set modelsVolume\.sizeGb to 800 \(or more\)"


@pytest.mark.parametrize("kind", ["shared-volume", "network-volume"])
def test_a_kept_models_volume_larger_than_the_config_stops_the_preview_naming_the_size(
    kind: str, doubles: Doubles
) -> None:
    """Yesterday's volume (kept by the destroy) is 800 GB and the config says 500: the morning's create
    adopted it as 500 GB in the state, a refresh then showed the size as drift, and the `up` after it
    refused to shrink it. The preview says it at once, with the size to put in the config."""
    case, evening, props = created(kind, doubles)
    assert evening.up({**props, "size": 800}).action == "update"
    assert evening.state is not None
    kept = evening.state.id
    writes = len([c for c in [*doubles[0].log, *doubles[1].log] if c[0] != "GET"])

    morning = Engine(case.resource, kind)
    with pytest.raises(HostError, match=SHRINK_REFUSED):
        morning.up({**props, "size": 500})

    assert (case.remote(doubles, kept) or {}).get("size") == 800
    after = [c for c in [*doubles[0].log, *doubles[1].log] if c[0] != "GET"][writes:]
    assert [c for c in after if c[1] != "/oauth2/token"] == []


@pytest.mark.parametrize("kind", ["shared-volume", "network-volume"])
def test_a_smaller_size_in_the_config_of_a_running_stack_stops_the_preview(
    kind: str, doubles: Doubles
) -> None:
    """The preview's diff said `update` and only the `up` refused, after everything before it changed."""
    _, engine, props = created(kind, doubles)
    engine.up({**props, "size": 800})

    with pytest.raises(HostError, match=SHRINK_REFUSED):
        engine.check(engine.state.inputs if engine.state else {}, engine.inputs({**props, "size": 500}))


@pytest.mark.parametrize(
    ("kind", "key", "value"), [("endpoint", "workersMax", 0), ("template", "imageName", "old:1")]
)
def test_a_runpod_object_left_under_our_name_is_brought_to_the_config_when_adopted(
    kind: str, key: str, value: Any, doubles: Doubles
) -> None:
    """Yesterday's endpoint or template left behind (a destroy that failed half-way, a state lost) is
    found by name and adopted: with yesterday's values, which the state then claimed were today's."""
    case, yesterday, props = created(kind, doubles)
    assert yesterday.state is not None
    left = case.remote(doubles, yesterday.state.id)
    assert left is not None
    wanted = left[key]
    left[key] = value

    today = Engine(case.resource, kind)
    assert today.up(props).action == "create"

    assert today.state is not None and today.state.id == yesterday.state.id
    assert case.remote(doubles, today.state.id)[key] == wanted  # type: ignore[index]


def test_a_verda_instance_type_verda_does_not_have_fails_the_check_at_preview(doubles: Doubles) -> None:
    case = CASES["instance"]
    engine = Engine(case.resource, "instance")
    props = {**case.props, **connection(case, doubles), "instance_type": "1H200.141S.44V"}

    with pytest.raises(
        HostError, match=r"instance_type.*'1H200\.141S\.44V'.*fix: .*instanceType.*1A100\.22V"
    ):
        engine.up(props)

    assert ("POST", "/instances") not in doubles[0].log


@pytest.mark.parametrize("kind", ["instance", "endpoint"])
def test_a_destroy_with_a_revoked_key_in_the_state_says_to_run_up_with_the_new_one_first(
    kind: str, doubles: Doubles
) -> None:
    """`destroy` and `refresh` call the provider with the key the last `up` stored, not the stack
    config: after the organizer revoked it and set a new one, the refusal told her to set the key she
    had just set, and the GPUs billed on."""
    case, engine, _ = created(kind, doubles)
    assert engine.state is not None
    if case.cloud == "runpod":
        doubles[1].api_key = "rp-key-2"
    else:
        doubles[0].client_secret = "s3cret-2"

    for verb in (engine.refresh, engine.destroy):
        with pytest.raises(HostError, match=r"stored by the last `pulumi up`.*run `pulumi up`.*first"):
            verb()

    assert case.remote(doubles, engine.state.id) is not None


REFUSALS = {
    "an hour's rate limit": {
        "status": 429,
        "code": None,
        "message": "Too Many Requests",
        "retry_after_s": 3600,
    },
    "a 5xx that lasts": {"status": 503, "message": "Service Unavailable", "times": 1000},
}


@pytest.mark.parametrize("refusal", sorted(REFUSALS))
@pytest.mark.parametrize("kind", ["instance", "endpoint"])
def test_a_destroy_the_provider_refuses_for_now_says_to_run_destroy_again(
    kind: str, refusal: str, doubles: Doubles
) -> None:
    """In the evening the provider refuses for a while (its rate limiter, an outage): the message told
    her to run `pulumi up` again, which keeps (or makes) the GPUs that bill; it names the command she
    ran. The object and the state are kept, so the second `destroy` deletes it."""
    case, engine, _ = created(kind, doubles)
    assert engine.state is not None
    cloud = doubles[1] if case.cloud == "runpod" else doubles[0]
    for verb, command in ((engine.refresh, "pulumi refresh"), (engine.destroy, "pulumi destroy")):
        cloud.faults.clear()
        cloud.window.until = 0.0
        cloud.fail("GET", ".*", **REFUSALS[refusal])
        with pytest.raises(HostError) as refused:
            verb()
        message = str(refused.value).splitlines()[-1]
        assert f"`{command}`" in message and "pulumi up` again" not in message, message

    assert engine.state is not None and case.remote(doubles, engine.state.id) is not None
    cloud.faults.clear()
    cloud.window.until = 0.0
    engine.destroy()
    assert case.remote(doubles, engine.state.id if engine.state else "") is None


# The delete call the provider answers as done without doing it (the object stays, billing).
UNDONE_DELETE = {"instance": ("PUT", "/instances", 202), "endpoint": ("DELETE", "/endpoints/.*", 200)}


@pytest.mark.parametrize("kind", sorted(UNDONE_DELETE))
def test_a_destroy_whose_object_stays_says_it_may_still_bill_and_what_to_do(
    kind: str, doubles: Doubles
) -> None:
    """The provider took the delete but the object is still there when the wait ends: the message only
    said the deletion 'did not happen within 2 s', not that the GPU may still bill nor what to do."""
    case, engine, _ = created(kind, doubles)
    assert engine.state is not None
    method, path, status = UNDONE_DELETE[kind]
    cloud = doubles[1] if case.cloud == "runpod" else doubles[0]
    cloud.fail(method, path, status=status, code=None, message="", times=1000)

    with pytest.raises(HostError) as refused:
        engine.destroy()

    message = str(refused.value).splitlines()[-1]
    assert "may still bill" in message and "`pulumi destroy`" in message, message
    assert "console" in message, message
    cloud.faults.clear()
    engine.destroy()
    assert case.remote(doubles, engine.state.id if engine.state else "") is None


@pytest.mark.parametrize("kind", sorted(UNDONE_DELETE))
def test_an_up_replacing_an_object_that_stays_names_pulumi_up_only(kind: str, doubles: Doubles) -> None:
    """The same delete, the old object of a replacement: only an `up` replaces (its Diff, in the same
    provider process, asked for it), so the message names `pulumi up` alone, not `pulumi destroy`,
    which would delete the whole workshop mid-day."""
    case, engine, props = created(kind, doubles)
    key, (value, _) = next((k, change) for k, change in case.changes.items() if change[1] == "replace")
    method, path, status = UNDONE_DELETE[kind]
    cloud = doubles[1] if case.cloud == "runpod" else doubles[0]
    cloud.fail(method, path, status=status, code=None, message="", times=1000)

    with pytest.raises(HostError) as refused:
        engine.up({**props, key: value})

    message = str(refused.value).splitlines()[-1]
    assert "may still bill" in message and "run `pulumi up` again" in message, message
    assert "destroy" not in message, message


@pytest.mark.parametrize("kind", ["instance", "endpoint"])
def test_the_state_follows_the_provider_code_so_a_destroy_after_it_moved_still_deletes(
    kind: str, doubles: Doubles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine pickles the provider into the state by reference (module and class), and `destroy`
    and `refresh` unpickle the STORED one. An `up` whose diff saw nothing else kept the old reference
    there, so once the code moved the class (a refactor, a rename), the evening's destroy failed to
    import it while the GPUs billed on. An `up` after the move stores the new one."""
    case = CASES[kind]
    provider_class = case.resource.provider_class
    old_home = types.ModuleType("infra_providers_before_the_move")
    moved = type(provider_class.__name__, (provider_class,), {"__module__": old_home.__name__})
    old_home.__dict__[provider_class.__name__] = moved
    monkeypatch.setitem(sys.modules, old_home.__name__, old_home)
    engine = Engine(case.resource, kind)
    engine.serialized = serialize_provider(moved())
    props = {**case.props, **connection(case, doubles)}
    engine.up(props)
    assert engine.state is not None
    id_ = engine.state.id

    monkeypatch.delitem(sys.modules, old_home.__name__)  # the code moved; a new provider process
    HOST["_PROVIDER_CACHE"].clear()
    engine.serialized = serialize_provider(provider_class())
    step = engine.up(props)

    assert (step.action, step.replaces) == ("update", [])
    assert engine.state.outputs[PROVIDER_KEY] == engine.serialized
    assert engine.up(props).action == "same"
    engine.destroy()
    assert case.remote(doubles, id_) is None


def test_an_instance_verda_reports_in_error_is_replaced_by_the_up_after_a_refresh(doubles: Doubles) -> None:
    """A running instance Verda then reports in `error` (a failed host) is no GPU for the pool: the
    refresh kept it as it was and every later `up` found nothing to do, so the pool stayed without its
    GPU (and the broken instance in the bill) until someone deleted it by hand."""
    case, engine, props = created("instance", doubles)
    assert engine.state is not None
    broken = engine.state.id
    remote = case.remote(doubles, broken)
    assert remote is not None
    remote["status"] = "error"

    engine.refresh()
    step = engine.up(props)

    assert step.action == "replace", step.diff
    assert case.remote(doubles, broken) is None
    assert [i["status"] for i in doubles[0].billable_instances()] == ["running"]
    assert engine.up(props).action == "same"


# What another workshop's object of our name (theirs) and ours differ in, for every kind the pools
# declare but the models volumes, which outlive stacks and are shared by name on purpose.
OTHER_WORKSHOP = {
    "instance": ({"ssh_key_ids": ["their-key"], "workshop_tag": "9f8e7d6c"}, {}),
    "deployment": (
        {"env": {"WORKER_QUEUE_URL": "https://a.example.org"}},
        {"env": {"WORKER_QUEUE_URL": "https://b.example.org"}},
    ),
    "template": (
        {"env": {"WORKER_QUEUE_URL": "https://a.example.org"}},
        {"env": {"WORKER_QUEUE_URL": "https://b.example.org"}},
    ),
    "endpoint": ({"template_id": "their-template"}, {}),
}
SHARED_BY_NAME = {"shared-volume", "network-volume"}
# What a lost state's `up` generates anew for the kinds whose objects show nothing of who made them
# (a secret's or a login's value is never shown back; a key pair and the tailnet key in a startup script
# are made again): their names carry the workshop's tag (``infra.pools.base.owned_name``), which no
# other workshop writes, so what is found under one is this workshop's.
LOST_STATE = {
    # Made with yesterday's key pair (made anew today): its workers hold yesterday's worker token and
    # tailnet key, so it is deleted and made anew, never reused.
    "instance": {"ssh_key_ids": ["sshkey-today"]},
    "ssh-key": {"public_key": "ssh-ed25519 TODAY"},
    "startup-script": {"script": "#!/bin/sh\necho today\n"},
    "secret": {"value": "token-today"},
    "registry-credentials": {"access_token": "ghp_today"},
}
# A RunPod registry auth's name carries its login's fingerprint besides the tag: one found under it
# holds the same login, adopted; one of yesterday's token has another name and is left alone (a
# template may still pull with it, and RunPod refuses to delete it then).
FINGERPRINTED = {"registry-auth"}


def test_every_kind_either_tells_another_workshops_object_or_is_shared_on_purpose() -> None:
    assert set(OTHER_WORKSHOP) | SHARED_BY_NAME | set(LOST_STATE) | FINGERPRINTED == set(CASES)


@pytest.mark.parametrize("kind", sorted(FINGERPRINTED))
def test_an_object_of_the_same_login_left_by_a_lost_state_is_adopted(kind: str, doubles: Doubles) -> None:
    case = CASES[kind]
    yesterday = Engine(case.resource, f"{kind}-yesterday")
    yesterday.up({**case.props, **connection(case, doubles)})
    today = Engine(case.resource, f"{kind}-today")

    today.up({**case.props, **connection(case, doubles)})

    assert today.state is not None and yesterday.state is not None and today.state.id == yesterday.state.id
    assert len(case.store(doubles)) == 1
    today.destroy()
    assert not case.store(doubles)


@pytest.mark.parametrize("kind", sorted(LOST_STATE))
def test_an_object_left_by_a_lost_state_is_taken_over_by_the_next_up(kind: str, doubles: Doubles) -> None:
    """The stack's state is lost (the stack removed and made again, another backend) while yesterday's
    objects stay: the next `up`, whose generated values are new, takes each over instead of stopping
    until someone deletes it by hand: one object of the name is left, holding today's value."""
    case = CASES[kind]
    Engine(case.resource, f"{kind}-yesterday").up({**case.props, **connection(case, doubles)})
    today = Engine(case.resource, f"{kind}-today")

    today.up({**case.props, **connection(case, doubles), **LOST_STATE[kind]})

    name = case.props["name"]
    held = [json.dumps(obj) for obj in case.named(doubles, name)]
    assert len(held) == 1 and all(json.dumps(v)[1:-1] in held[0] for v in LOST_STATE[kind].values()), held
    today.destroy()
    assert not case.named(doubles, name)


@pytest.mark.parametrize("kind", sorted(OTHER_WORKSHOP))
def test_another_workshops_object_of_our_name_stops_the_preview_before_anything_is_touched(
    kind: str, doubles: Doubles
) -> None:
    """Two workshops in one cloud account whose stacks and pools have the same names: the engine checks
    every resource at preview, so the second's `up` stops there, before its secrets and logins of the
    same names are written over the first's, and the first's object is left as it was."""
    case = CASES[kind]
    theirs, ours = OTHER_WORKSHOP[kind]
    first = Engine(case.resource, f"{kind}-first")
    first.up({**case.props, **connection(case, doubles), **theirs})
    assert first.state is not None
    before = dict(case.remote(doubles, first.state.id) or {})
    writes = len([c for c in [*doubles[0].log, *doubles[1].log] if c[0] != "GET"])

    with pytest.raises(HostError, match=r"check failed.*did not make.*pulumi stack rename"):
        Engine(case.resource, f"{kind}-second").up({**case.props, **connection(case, doubles), **ours})

    assert case.remote(doubles, first.state.id) == before
    after = [c for c in [*doubles[0].log, *doubles[1].log] if c[0] != "GET"]
    assert [c for c in after[writes:] if c[1] != "/oauth2/token"] == []


@pytest.mark.parametrize("kind", ["deployment", "template"])
def test_a_workshop_that_moves_to_another_domain_updates_its_own_objects(kind: str, doubles: Doubles) -> None:
    """The queue URL in a deployment's or template's env tells another workshop's object from ours
    only for one this stack is about to create: its own, already in its state, follows a new domain."""
    case = CASES[kind]
    engine = Engine(case.resource, kind)
    props = {**case.props, **connection(case, doubles), "env": {"WORKER_QUEUE_URL": "https://a.example.org"}}
    engine.up(props)

    step = engine.up({**props, "env": {"WORKER_QUEUE_URL": "https://b.example.org"}})

    assert (step.action, step.replaces) == ("update", [])


def test_a_run_asks_verda_for_one_token_however_many_resources_it_checks_and_creates(
    doubles: Doubles,
) -> None:
    """One `pulumi up` is one provider process for every dynamic resource: the instance's and the
    deployment's checks (is the type offered, is an object of our name another workshop's) and their
    creates asked Verda for a token each time they built a client, two per check alone. Once per run
    is enough: the SDK renews the token it holds when it expires."""
    new_provider_process()
    for kind in ("instance", "deployment", "ssh-key", "secret"):
        case = CASES[kind]
        Engine(case.resource, kind, shared_run=True).up({**case.props, **connection(case, doubles)})

    assert doubles[0].log.count(("POST", "/oauth2/token")) == 1
    assert len(doubles[0].billable_instances()) == 1 and len(doubles[0].deployments) == 1


@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_destroy_after_the_object_was_deleted_by_hand_finishes(kind: str, doubles: Doubles) -> None:
    """Half the stack deleted in the console before the evening's `pulumi destroy` (no refresh): the
    delete of what is already gone succeeds, so the destroy goes on to what still bills."""
    case, engine, _ = created(kind, doubles)
    assert engine.state is not None
    case.forget(doubles, engine.state.id)

    engine.destroy()

    assert engine.state is None


def test_the_pools_ssh_key_deleted_in_the_console_is_made_again_without_replacing_its_gpus(
    doubles: Doubles,
) -> None:
    """Someone tidies Verda's console and deletes the pool's SSH key (a running instance does not need
    it): the refresh drops it, the next `up` makes it again under a new id, and the instances, which
    read their keys at first boot only, were all replaced for it, mid-workshop."""
    key_case, key, key_props = created("ssh-key", doubles)
    assert key.state is not None
    case = CASES["instance"]
    instance = Engine(case.resource, "instance")
    props = {**case.props, **connection(case, doubles), "ssh_key_ids": [key.state.id]}
    instance.up(props)
    assert instance.state is not None
    running = instance.state.id
    key_case.forget(doubles, key.state.id)

    key.refresh()
    instance.refresh()
    assert key.state is None
    key.up(key_props)
    assert key.state is not None
    step = instance.up({**props, "ssh_key_ids": [key.state.id]})

    assert (step.action, step.replaces) == ("update", [])
    assert [i["id"] for i in doubles[0].billable_instances()] == [running]


ENV_DRIFTS = {
    "deployment": lambda remote: next(
        var for var in remote["containers"][0]["env"] if var["name"] == "WORKER_POOL"
    ).update(value_or_reference_to_secret="elsewhere"),
    "template": lambda remote: remote["env"].update(A="elsewhere"),
}


@pytest.mark.parametrize("kind", sorted(ENV_DRIFTS))
def test_an_env_changed_in_the_console_is_seen_by_a_refresh_and_put_back(kind: str, doubles: Doubles) -> None:
    """A worker setting edited in the provider's console (the queue URL, the pool, a secret's name):
    the refresh kept the stored env, every later `up` found nothing to do, and the workers called
    what the console said until someone noticed."""
    case, engine, props = created(kind, doubles)
    assert engine.state is not None
    remote = case.remote(doubles, engine.state.id)
    assert remote is not None
    ENV_DRIFTS[kind](remote)

    engine.refresh()
    step = engine.up(props)

    assert (step.action, step.replaces) == ("update", []), step.diff
    assert "elsewhere" not in str(case.remote(doubles, engine.state.id))
    engine.refresh()
    assert engine.up(props).action == "same"
