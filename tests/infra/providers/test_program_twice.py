"""The whole program run twice in a row (two `pulumi up`s, the second the next morning), with the
state the first run's dynamic resources got from the providers fed to the second run's diff: every
Verda and RunPod resource the pools declare must come out unchanged; and when the organizer sets a
new registry token in between, only the registry auth is replaced and the template updated to it."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any

import dill
import pytest

from devkit.harness import TEST_SECRETS, Resource, StackRun, run_stack
from infra.providers import resources
from tests.infra.providers.engine import PROVIDER_KEY, Engine, HostError, Step
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


def _up_every_resource(
    run: StackRun, engines: dict[str, Engine], doubles: tuple[VerdaDouble, RunPodDouble]
) -> dict[str, Step]:
    """One `up` of each dynamic resource ``run`` declared, in the order it declared them, an input
    that is another resource's output (the mocks answer ``<resource>-<output>``) given that resource's
    real output, as the engine resolves it once the resource is created, updated or replaced; what a
    create-before-delete replacement replaced is deleted at the end, dependents' first."""
    steps = {}
    for resource in run.resources_of(DYNAMIC):
        engine, props = _engine_and_props(resource, doubles)
        engine = engines.setdefault(resource.urn, engine)  # two pools' children may share a name
        real = {
            f"{other.name}-{key}": other.state.outputs[key]
            for other in engines.values()
            if other.state is not None
            for key in other.provider.outputs
        }
        steps[resource.name] = engine.up(
            {
                key: real.get(value, value) if isinstance(value, str) else value
                for key, value in props.items()
            },
            in_a_run=True,
        )
    for engine in reversed(list(engines.values())):  # the run's last steps: what was replaced goes
        engine.delete_replaced()
    return steps


def _named(engines: dict[str, Engine], name: str) -> Engine:
    [engine] = [engine for engine in engines.values() if engine.name == name]
    return engine


def test_a_new_registry_token_replaces_the_auth_and_the_template_pulls_with_the_new_one(
    doubles: tuple[VerdaDouble, RunPodDouble], monkeypatch: pytest.MonkeyPatch
) -> None:
    runpod = doubles[1]
    engines: dict[str, Engine] = {}
    today = _up_every_resource(run_stack("workshop", overrides={"pools": POOLS}), engines, doubles)
    assert {step.action for step in today.values()} == {"create"}
    auth, template = (_named(engines, name) for name in ("overflow-registry", "overflow-template"))
    assert auth.state is not None and template.state is not None
    first_auth = auth.state.id

    monkeypatch.setitem(TEST_SECRETS, "comfy-workshop:registryPassword", "the-rotated-token")
    tomorrow = run_stack("workshop", overrides={"pools": POOLS})
    # RunPod refuses to delete the auth while the template pulls with it: the new one is made first
    # (under a name of its own), the template moved to it, and the old one deleted at the end.
    steps = _up_every_resource(tomorrow, engines, doubles)

    changed = {name: (step.action, step.replaces) for name, step in steps.items() if step.action != "same"}
    assert changed == {
        "overflow-registry": ("replace", ["password"]),
        "overflow-template": ("update", []),
        # The Verda pools hold the token too: their login is replaced, and the instances' startup
        # script (it pulls the image), which the instances take in place, without being rebuilt.
        "burst-registry": ("replace", ["access_token"]),
        "baseline-startup": ("replace", ["script"]),
        "baseline-0": ("update", []),
        "baseline-1": ("update", []),
    }
    auths = runpod.store["containerregistryauth"]
    assert list(auths) == [auth.state.id] and auth.state.id != first_auth
    assert auths[auth.state.id]["password"] == "the-rotated-token"
    assert runpod.store["templates"][template.state.id]["containerRegistryAuthId"] == auth.state.id

    again = _up_every_resource(tomorrow, engines, doubles)  # the morning after: the change settled
    assert {step.action for step in again.values()} == {"same"}
    for engine in engines.values():
        engine.refresh()
    assert all(engine.state is not None for engine in engines.values()), "a refresh keeps what exists"
    after_refresh = _up_every_resource(tomorrow, engines, doubles)
    assert {name: step.action for name, step in after_refresh.items() if step.action != "same"} == {}
    for engine in reversed(list(engines.values())):
        engine.destroy()
    assert runpod.store["containerregistryauth"] == {} and runpod.store["templates"] == {}


VOLUME = {"name": "comfy-models"}
EDITS = {
    "switch-kind": (
        [{"kind": "verda-instance", "name": "gpu", "modelsVolume": VOLUME}],
        [{"kind": "verda-serverless", "name": "gpu", "modelsVolume": VOLUME}],
    ),
    "resize": (
        [{"kind": "verda-instance", "name": "gpu", "count": 2, "modelsVolume": VOLUME}],
        [{"kind": "verda-instance", "name": "gpu", "count": 1, "modelsVolume": VOLUME}],
    ),
    "rename": (
        [{"kind": "verda-instance", "name": "gpu", "modelsVolume": VOLUME}],
        [{"kind": "verda-instance", "name": "baseline", "modelsVolume": VOLUME}],
    ),
    "remove": (
        [{"kind": "verda-instance", "name": "gpu"}, {"kind": "runpod-serverless", "name": "overflow"}],
        [{"kind": "verda-instance", "name": "gpu"}],
    ),
    "switch-cloud": (
        [{"kind": "verda-serverless", "name": "burst"}],
        [{"kind": "runpod-serverless", "name": "burst"}],
    ),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_a_pool_edit_mid_day_leaves_exactly_what_the_new_config_declares(
    edit: str, doubles: tuple[VerdaDouble, RunPodDouble]
) -> None:
    """The engine creates what the edited config declares, then deletes what it no longer declares
    (dependents first; a retained models volume leaves the state but stays at the provider)."""
    verda, runpod = doubles
    before, after = EDITS[edit]
    engines: dict[str, Engine] = {}
    today = run_stack("workshop", overrides={"pools": before})
    _up_every_resource(today, engines, doubles)

    edited = run_stack("workshop", overrides={"pools": after})
    _edit(today, edited, engines, doubles)

    def count(kind: str) -> int:
        return sum(
            int(p.get("count", 1)) if kind == "verda-instance" else 1 for p in after if p["kind"] == kind
        )

    assert len(verda.billable_instances()) == count("verda-instance")
    assert len(verda.deployments) == count("verda-serverless")
    assert len(runpod.store["endpoints"]) == len(runpod.store["templates"]) == count("runpod-serverless")
    if any("modelsVolume" in p for p in before):
        assert [v["name"] for v in verda.live_volumes() if not v["is_os_volume"]] == ["comfy-models"]
    again = _up_every_resource(edited, engines, doubles)
    assert {name: step.action for name, step in again.items() if step.action != "same"} == {}


MOVED = r"check failed.*'comfy-models' is also kept in {place} \(500 GB\).*billed.*delete the one in {place}"


@pytest.mark.parametrize(
    ("before", "after", "place"),
    [
        (
            {"kind": "verda-instance", "name": "gpu", "modelsVolume": VOLUME},
            {"kind": "verda-instance", "name": "gpu", "location": "FIN-01", "modelsVolume": VOLUME},
            "FIN-03",
        ),
        (
            {"kind": "runpod-serverless", "name": "overflow", "modelsVolume": VOLUME},
            {
                "kind": "runpod-serverless",
                "name": "overflow",
                "modelsVolume": {**VOLUME, "dataCenterId": "US-KS-2"},
            },
            "EU-RO-1",
        ),
    ],
    ids=["verda", "runpod"],
)
def test_moving_the_models_volume_stops_the_up_naming_the_one_that_would_stay_billed(
    before: dict[str, Any], after: dict[str, Any], place: str, doubles: tuple[VerdaDouble, RunPodDouble]
) -> None:
    """The pools' location (or data center) moved: the stack makes a models volume there and drops the
    old one from its state without deleting it (`pulumi destroy` keeps models volumes), so both were
    billed and nothing said so. The new volume's check stops the `up` (and the preview) first."""
    engines: dict[str, Engine] = {}
    _up_every_resource(run_stack("workshop", overrides={"pools": [before]}), engines, doubles)
    volumes = lambda: [*doubles[0].live_volumes(), *doubles[1].store["networkvolumes"].values()]  # noqa: E731
    kept = [v for v in volumes() if not v.get("is_os_volume")]

    with pytest.raises(HostError, match=MOVED.format(place=place)):
        _up_every_resource(run_stack("workshop", overrides={"pools": [after]}), engines, doubles)

    assert [v for v in volumes() if not v.get("is_os_volume")] == kept


def test_a_second_pool_in_another_place_with_the_same_volume_name_is_no_move(
    doubles: tuple[VerdaDouble, RunPodDouble],
) -> None:
    """Two pools, each in its own location, each with a models volume of one name: two volumes on
    purpose, both in the config."""
    pools = [
        {"kind": "verda-instance", "name": "gpu", "modelsVolume": VOLUME},
        {"kind": "verda-instance", "name": "north", "location": "FIN-01", "modelsVolume": VOLUME},
    ]
    engines: dict[str, Engine] = {}
    _up_every_resource(run_stack("workshop", overrides={"pools": pools[:1]}), engines, doubles)

    _up_every_resource(run_stack("workshop", overrides={"pools": pools}), engines, doubles)

    places = sorted(v["location"] for v in doubles[0].live_volumes() if not v["is_os_volume"])
    assert places == ["FIN-01", "FIN-03"]


def test_a_models_volume_not_kept_is_deleted_by_the_move_and_by_destroy(
    doubles: tuple[VerdaDouble, RunPodDouble],
) -> None:
    """`modelsVolume.keep: false` (the last workshop day): `pulumi destroy` deletes the volume, so nothing
    bills on; a move deletes the old one too, so the `up` goes through."""
    volume = {**VOLUME, "keep": False}
    before = {"kind": "verda-instance", "name": "gpu", "modelsVolume": volume}
    after = {**before, "location": "FIN-01"}
    today = run_stack("workshop", overrides={"pools": [before]})
    assert not any(r.retain_on_delete for r in today.resources_of(DYNAMIC))
    engines: dict[str, Engine] = {}
    _up_every_resource(today, engines, doubles)

    moved = run_stack("workshop", overrides={"pools": [after]})
    _up_every_resource(moved, engines, doubles)
    declared = {r.urn for r in moved.resources_of(DYNAMIC)}
    for urn in [urn for urn in reversed(list(engines)) if urn not in declared]:
        engines.pop(urn).destroy()  # what the edit no longer declares, deleted: none of it is retained

    assert [v["location"] for v in doubles[0].live_volumes() if not v["is_os_volume"]] == ["FIN-01"]
    for engine in reversed(list(engines.values())):
        engine.destroy()
    assert [v for v in doubles[0].live_volumes() if not v["is_os_volume"]] == []


def _edit(
    before: StackRun, after: StackRun, engines: dict[str, Engine], doubles: tuple[VerdaDouble, RunPodDouble]
) -> dict[str, Step]:
    """One `up` from ``before``'s config to ``after``'s, as the engine runs it: what ``after`` declares
    is created or changed, then what it no longer declares is deleted, dependents first (a retained
    models volume leaves the state but stays at the provider)."""
    steps = _up_every_resource(after, engines, doubles)
    declared = {r.urn for r in after.resources_of(DYNAMIC)}
    retained = {r.urn for r in before.resources_of(DYNAMIC) if r.retain_on_delete}
    for urn in reversed(list(engines)):
        if urn not in declared:
            if urn not in retained:
                engines[urn].destroy()
            del engines[urn]
    return steps


def _billed(doubles: tuple[VerdaDouble, RunPodDouble]) -> dict[str, int]:
    verda, runpod = doubles
    return {
        "instances": len(verda.billable_instances()),
        "deployments": len(verda.deployments),
        "endpoints": len(runpod.store["endpoints"]),
    }


# A pool no provider of ours serves: a stack with only it has no dynamic resource (as after a destroy).
NO_CLOUD = [{"kind": "local-gpu", "name": "box", "dockerHost": "ssh://root@gpu-box"}]
WEEK = [  # (the pools, what bills once the `up` is done)
    ([{"kind": "verda-instance", "name": "gpu", "count": 2, "modelsVolume": VOLUME}], (2, 0, 0)),
    ([{"kind": "verda-instance", "name": "gpu", "count": 0, "modelsVolume": VOLUME}], (0, 0, 0)),
    ([{"kind": "verda-instance", "name": "gpu", "count": 1, "modelsVolume": VOLUME}], (1, 0, 0)),
    ([{"kind": "verda-serverless", "name": "gpu", "modelsVolume": VOLUME}], (0, 1, 0)),
    ([{"kind": "verda-instance", "name": "gpu", "count": 1, "modelsVolume": VOLUME}], (1, 0, 0)),
    ([{"kind": "verda-instance", "name": "gpu", "count": 1, "location": "FIN-01"}], (1, 0, 0)),
    ([{"kind": "runpod-serverless", "name": "gpu", "modelsVolume": VOLUME}], (0, 0, 1)),
    ([{"kind": "runpod-serverless", "name": "gpu", "maxReplicas": 1, "gpuCount": 2}], (0, 0, 1)),
    ([{"kind": "verda-instance", "name": "gpu", "count": 2, "modelsVolume": VOLUME}], (2, 0, 0)),
]


@pytest.mark.parametrize("evenings", ["kept running", "destroyed each evening"])
def test_a_week_of_config_edits_leaves_each_day_exactly_what_its_config_declares(
    evenings: str, doubles: tuple[VerdaDouble, RunPodDouble]
) -> None:
    """A pool sized to 0 and back, switched to serverless and back, moved to another location, to
    RunPod and back, each `up` from the state the one before left (or from an empty one after the
    evening's destroy): each ends with what its config declares billing, a second `up` changes nothing,
    and the last destroy leaves only the kept models volumes."""
    engines: dict[str, Engine] = {}
    before = run_stack("workshop", overrides={"pools": NO_CLOUD})
    for day, (pools, billed) in enumerate(WEEK):
        today = run_stack("workshop", overrides={"pools": pools})
        _edit(before, today, engines, doubles)
        assert tuple(_billed(doubles).values()) == billed, (day, pools)
        again = _up_every_resource(today, engines, doubles)
        assert {name: step.action for name, step in again.items() if step.action != "same"} == {}, day
        if evenings == "destroyed each evening":
            _edit(today, run_stack("workshop", overrides={"pools": NO_CLOUD}), engines, doubles)
            assert engines == {} and tuple(_billed(doubles).values()) == (0, 0, 0), day
        before = today

    _edit(before, run_stack("workshop", overrides={"pools": NO_CLOUD}), engines, doubles)
    verda, runpod = doubles
    assert tuple(_billed(doubles).values()) == (0, 0, 0)
    assert sorted(v["name"] for v in verda.live_volumes() if not v["is_os_volume"]) == ["comfy-models"]
    assert [v["name"] for v in runpod.store["networkvolumes"].values()] == ["comfy-models"]


def test_a_stack_up_under_the_last_release_takes_the_tagged_names_without_rebuilding_its_gpus(
    doubles: tuple[VerdaDouble, RunPodDouble],
) -> None:
    """The last release named secrets, logins, the SSH key and the startup script without the
    workshop's tag. A running stack's first `up` under this one replaces those small objects once; its
    instances take the new key and script in place (no GPU is rebuilt), its deployment and template
    follow the new names, and nothing under an old name is left at the providers."""
    run = run_stack("workshop", overrides={"pools": POOLS})
    tagged = {
        r.name: r.inputs["name"]
        for r in run.resources_of(DYNAMIC)
        if re.search(r"-[0-9a-f]{8}$", str(r.inputs.get("name")))
    }
    assert set(tagged) >= {"baseline-ssh-key", "baseline-startup", "burst-registry", "overflow-registry"}
    untagged = lambda value: re.sub(r"-[0-9a-f]{8}\b", "", value) if isinstance(value, str) else value  # noqa: E731
    engines: dict[str, Engine] = {}
    for resource in run.resources_of(DYNAMIC):  # the stack as the last release left it
        engine, props = _engine_and_props(resource, doubles)
        old = {
            key: untagged(value) for key, value in props.items() if key not in ("secret_env", "workshop_tag")
        }
        if "secret_env" in props:
            old["secret_env"] = {key: untagged(value) for key, value in props["secret_env"].items()}
        if "registry_credentials" in props:
            old["registry_credentials"] = untagged(props["registry_credentials"])
        real = {
            f"{o.name}-{k}": o.state.outputs[k]
            for o in engines.values()
            if o.state
            for k in o.provider.outputs
        }
        engine.up(
            {key: real.get(value, value) if isinstance(value, str) else value for key, value in old.items()}
        )
        engines[resource.urn] = engine

    steps = _up_every_resource(run, engines, doubles)

    changed = {name: step.action for name, step in steps.items() if step.action != "same"}
    assert {changed[name] for name in tagged} == {"replace"}
    assert changed["baseline-0"] == changed["baseline-1"] == "update"
    assert changed["burst-deployment"] == changed["overflow-template"] == "update"
    verda, runpod = doubles
    names = [k["name"] for k in verda.ssh_keys.values()] + [s["name"] for s in verda.scripts.values()]
    names += list(verda.secrets) + list(verda.registry_credentials)
    logins = [a["name"] for a in runpod.store["containerregistryauth"].values()]
    assert [re.sub(r"-[0-9a-f]{8}$", "", login) for login in logins] == [tagged["overflow-registry"]]
    assert sorted(names) == sorted(name for name in tagged.values() if name != tagged["overflow-registry"])
