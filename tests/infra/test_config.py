"""Bad stack configurations fail before any resource exists, naming the key, the value and the fix."""

from __future__ import annotations

import json
import re
from typing import Any

import pulumi
import pytest

from devkit.harness import TEST_SECRETS, set_config, stack_values
from infra.errors import ConfigError
from infra.loading import load_config
from services.worker.models import ModelError, parse_manifest
from tests.support.stack_config import problems


def workshop_pool(**fields: Any) -> dict[str, Any]:
    return {"kind": "verda-serverless", "name": "burst", "maxReplicas": 4, **fields}


@pytest.mark.parametrize("stack", ["vault", "workshop", "local"])
def test_every_committed_stack_file_is_valid(stack: str) -> None:
    set_config(stack_values(stack))
    assert load_config(stack).role == stack


def test_an_unknown_pool_kind_lists_the_known_kinds() -> None:
    text = problems("workshop", {"pools": [{"kind": "verda-instanse", "name": "gpu"}]})
    assert "comfy-workshop:pools[0].kind = 'verda-instanse'" in text
    assert "local-gpu, runpod-serverless, verda-instance, verda-serverless" in text


def test_min_replicas_above_max_says_so() -> None:
    text = problems("workshop", {"pools": [workshop_pool(minReplicas=5, maxReplicas=2)]})
    assert "comfy-workshop:pools[0]" in text
    assert "minReplicas (5) is greater than maxReplicas (2)" in text
    assert "fix: lower minReplicas or raise maxReplicas" in text


def test_a_domain_with_a_scheme_is_refused() -> None:
    text = problems("workshop", {"domain": "https://workshop.example.org/"})
    assert "comfy-workshop:domain = 'https://workshop.example.org/'" in text
    assert "no scheme, no path" in text


def test_a_participant_count_out_of_range_names_the_range() -> None:
    text = problems("vault", {"participants": 500})
    assert "comfy-workshop:participants = 500" in text
    assert "1 to 200 participants" in text


def test_duplicate_pool_names_are_refused() -> None:
    text = problems("workshop", {"pools": [workshop_pool(), workshop_pool(kind="runpod-serverless")]})
    assert "comfy-workshop:pools" in text
    assert "duplicate pool name burst" in text
    assert "give every pool name a distinct name" in text


def test_an_unknown_vps_location_lists_the_locations() -> None:
    text = problems("workshop", {"vps": {"location": "fra1"}})
    assert "comfy-workshop:vps.location = 'fra1'" in text
    assert "fsn1, nbg1, hel1" in text


def test_a_missing_provider_secret_names_the_exact_command() -> None:
    text = problems("workshop", without={"hcloud:token"})
    assert "hcloud:token = (not set)" in text
    assert "pulumi config set --secret 'hcloud:token' <Hetzner Cloud API token>" in text
    assert "export HCLOUD_TOKEN" in text


def test_a_pool_kind_brings_its_own_required_secret() -> None:
    pool = {"kind": "runpod-serverless", "name": "rp", "maxReplicas": 2}
    text = problems("workshop", {"pools": [pool]}, without={"comfy-workshop:runpodApiKey"})
    assert "pulumi config set --secret 'comfy-workshop:runpodApiKey'" in text


def test_a_verda_serverless_pool_needs_the_inference_key_the_dispatcher_calls_with() -> None:
    text = problems("workshop", without={"comfy-workshop:verdaInferenceKey"})
    assert "pulumi config set --secret 'comfy-workshop:verdaInferenceKey'" in text


def test_an_unknown_scheduling_policy_is_refused_with_the_choices() -> None:
    text = problems("workshop", {"queue": {"scheduling": "random"}})
    assert "comfy-workshop:queue.scheduling = 'random'" in text
    assert "'fifo', 'fair' or 'priority'" in text
    assert "pulumi config set --path 'comfy-workshop:queue.scheduling'" in text


def test_a_tailscale_tag_without_prefix_is_refused() -> None:
    text = problems("workshop", {"tailscale": {"gpuTag": "comfy-gpu"}})
    assert "comfy-workshop:tailscale.gpuTag = 'comfy-gpu'" in text
    assert "'tag:<name>'" in text


def test_a_misspelt_top_level_key_suggests_the_right_one() -> None:
    text = problems("workshop", {"pool": []})
    assert "comfy-workshop:pool = []: unknown key" in text
    assert "did you mean 'pools'?" in text


def test_serverless_pools_without_a_registry_say_what_to_add() -> None:
    text = problems("workshop", drop={"registry"})
    assert "pools baseline, burst pull the worker image from a registry" in text
    assert "registryPassword" in text


def test_duplicate_participants_are_refused() -> None:
    text = problems("vault", {"participants": ["anna", "ben", "anna"]})
    assert "duplicate participant anna" in text


def test_an_invalid_participant_name_is_refused() -> None:
    text = problems("vault", {"participants": ["Anna Smith"]})
    assert "comfy-workshop:participants[0] = 'Anna Smith'" in text
    assert "lower-case letters" in text


def test_cloud_pools_are_refused_in_the_local_stack() -> None:
    text = problems("local", {"pools": [workshop_pool()]})
    assert "burst (verda-serverless) is a cloud pool" in text
    assert "use kind local-cpu or local-gpu" in text


def test_an_unknown_role_names_the_roles() -> None:
    text = problems("local", {"role": "staging"})
    assert "comfy-workshop:role = 'staging'" in text
    assert "vault, workshop, local" in text


def test_a_missing_vault_stack_name_is_required() -> None:
    text = problems("workshop", drop={"vaultStack"})
    assert "comfy-workshop:vaultStack = (not set): required key is not set" in text
    assert "pulumi config set 'comfy-workshop:vaultStack' <value>" in text


def test_a_bad_ssh_allow_list_entry_is_refused() -> None:
    text = problems("workshop", {"vps": {"sshAllowList": ["203.0.113.300/32"]}})
    assert "comfy-workshop:vps.sshAllowList[0]" in text


def test_the_same_r2_bucket_twice_is_refused() -> None:
    r2 = {"models": {"name": "data"}, "cache": {"name": "data"}, "userFiles": {"name": "files"}}
    text = problems("vault", {"r2": r2})
    assert "duplicate bucket name data" in text


def test_all_problems_are_reported_at_once() -> None:
    text = problems("workshop", {"domain": "bad", "vps": {"location": "mars"}})
    assert "2 configuration problems" in text


def test_the_error_prints_cleanly_in_pulumi_output() -> None:
    # RunError is what the Pulumi language host prints as a message, without a Python traceback.
    assert issubclass(ConfigError, pulumi.RunError)
    assert set(TEST_SECRETS)  # the harness provides every secret a committed stack needs


def test_a_tailscale_oauth_client_stands_in_for_the_api_key() -> None:
    set_config(stack_values("workshop"), without={"tailscale:apiKey"})
    config = dict(pulumi.runtime.config.CONFIG.get())
    pulumi.runtime.set_all_config({**config, "tailscale:oauthClientSecret": "tskey-client-x"})
    assert load_config("workshop").role == "workshop"


def test_a_model_with_a_bad_checksum_names_the_entry() -> None:
    text = problems(
        "workshop", {"models": [{"path": "checkpoints/a.safetensors", "size": 1, "sha256": "abc"}]}
    )
    assert "comfy-workshop:models[0].sha256 = 'abc'" in text


def test_local_models_need_a_folder_to_come_from() -> None:
    model = {"path": "checkpoints/a.safetensors", "size": 1, "sha256": "0" * 64}
    text = problems("local", {"models": [model]})
    assert "fix: set modelsDir" in text


@pytest.mark.parametrize("location", ["ash", "hil", "sin"])
def test_a_server_type_hetzner_does_not_offer_at_the_location_is_refused(location: str) -> None:
    text = problems("workshop", {"vps": {"serverType": "cx33", "location": location}})

    assert f"Hetzner does not offer cx servers (cx33) in {location}" in text
    assert "cpx" in text


def test_cpx_servers_are_fine_outside_the_eu() -> None:
    set_config(stack_values("workshop", {"vps": {"serverType": "cpx31", "location": "ash"}}))

    assert load_config("workshop").vps.location == "ash"  # type: ignore[union-attr]


@pytest.mark.parametrize("stack", ["vault", "local"])
def test_a_participant_named_as_the_admin_is_refused_before_anything_exists(stack: str) -> None:
    """The queue manager refuses to start with such a pair: found only after the VPS was up."""
    text = problems(stack, {"participants": ["admin", "bob"]})
    assert "comfy-workshop:adminUser = 'admin'" in text
    assert "also a participant's name" in text and "fix:" in text


def test_duplicate_participants_are_refused_on_the_local_stack_too() -> None:
    text = problems("local", {"participants": ["bob", "bob"]})
    assert "comfy-workshop:participants" in text
    assert "duplicate participant bob" in text


@pytest.mark.parametrize(
    "pools",
    [
        [
            {"kind": "verda-instance", "name": "baseline", "modelsVolume": {"name": "models", "sizeGb": 500}},
            {"kind": "verda-serverless", "name": "burst", "modelsVolume": {"name": "models", "sizeGb": 600}},
        ],
        [
            {
                "kind": "runpod-serverless",
                "name": "baseline",
                "modelsVolume": {"name": "models", "sizeGb": 500},
            },
            {"kind": "runpod-serverless", "name": "burst", "modelsVolume": {"name": "models", "sizeGb": 600}},
        ],
    ],
)
def test_pools_sharing_a_models_volume_with_different_sizes_are_refused_at_preview(
    pools: list[dict[str, Any]],
) -> None:
    text = problems("workshop", {"pools": pools})
    assert "comfy-workshop:pools" in text
    assert "baseline and burst share the models volume 'models'" in text and "500 and 600 GB" in text
    assert "fix: give both the same modelsVolume.sizeGb" in text


def test_pools_sharing_a_models_volume_one_keeping_it_and_one_not_are_refused_at_preview() -> None:
    """One resource is either kept by `pulumi destroy` or not: the first pool's setting won unsaid."""
    pools = [
        {"kind": "verda-instance", "name": "baseline", "modelsVolume": {"name": "models"}},
        {"kind": "verda-serverless", "name": "burst", "modelsVolume": {"name": "models", "keep": False}},
    ]
    text = problems("workshop", {"pools": pools})
    assert "baseline and burst share the models volume 'models' (FIN-03) with different keep settings" in text
    assert "fix: give both the same modelsVolume.keep" in text


def test_pools_naming_one_volume_in_two_places_are_two_volumes() -> None:
    pools = [
        {
            "kind": "verda-instance",
            "name": "a",
            "location": "FIN-01",
            "modelsVolume": {"name": "m", "sizeGb": 500},
        },
        {
            "kind": "verda-instance",
            "name": "b",
            "location": "FIN-03",
            "modelsVolume": {"name": "m", "sizeGb": 600},
        },
    ]
    set_config(stack_values("workshop", {"pools": pools}))
    assert [pool.name for pool in load_config("workshop").pools] == ["a", "b"]


@pytest.mark.parametrize(
    ("field", "value", "fix"),
    [
        ("gpuTypeIds", ["H100"], "RunPod's GPU type id, e.g. 'NVIDIA H100 80GB HBM3'"),
        (
            "modelsVolume",
            {"name": "models", "dataCenterId": "eu-ro-1"},
            "a RunPod data center id such as EU-RO-1",
        ),
    ],
)
def test_a_runpod_gpu_or_data_center_in_the_wrong_form_is_refused_at_preview(
    field: str, value: Any, fix: str
) -> None:
    """RunPod refused them only when the endpoint or volume was created, after the rest of the stack."""
    text = problems("workshop", {"pools": [{"kind": "runpod-serverless", "name": "rp", field: value}]})
    assert f"comfy-workshop:pools[0].{field}" in text
    assert fix in text


@pytest.mark.parametrize("value", ["", "   ", "rp-s3cr3tvalue\n", " rp-s3cr3tvalue", "rp-s3cr3t value"])
def test_a_blank_or_spaced_credential_is_refused_without_showing_it(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key pasted with its line break (or an empty one) passed the check and failed at the provider,
    with 401s after the rest of the stack was made."""
    monkeypatch.setitem(TEST_SECRETS, "comfy-workshop:runpodApiKey", value)
    pool = {"kind": "runpod-serverless", "name": "rp", "maxReplicas": 2}

    text = problems("workshop", {"pools": [pool]})

    assert "comfy-workshop:runpodApiKey" in text
    assert "pulumi config set --secret 'comfy-workshop:runpodApiKey'" in text
    assert "s3cr3t" not in text, "a secret is never shown"


def test_a_model_path_listed_twice_is_refused() -> None:
    """Two entries for one file (each with its own sha256) left every worker's sync failing on one."""
    model = {"path": "checkpoints/a.safetensors", "size": 1, "sha256": "a" * 64}
    text = problems("workshop", {"models": [model, {**model, "sha256": "b" * 64}]})
    assert "comfy-workshop:models" in text
    assert "duplicate model path checkpoints/a.safetensors" in text


def test_a_workshop_local_gpu_pool_must_name_its_docker_host() -> None:
    """Without one its workers started on the default Docker: whichever machine ran `pulumi up` (a
    laptop, the deploy workflow's runner), not the VPS nor a GPU box, and another machine's destroy
    could not reach them."""
    text = problems("workshop", {"pools": [{"kind": "local-gpu", "name": "studio"}]})
    assert "comfy-workshop:pools" in text and "studio (local-gpu) names no dockerHost" in text
    assert "pulumi config set --path 'comfy-workshop:pools[0].dockerHost' ssh://root@gpu-box" in text


def test_a_local_cpu_pool_is_refused_in_the_workshop_stack() -> None:
    text = problems("workshop", {"pools": [{"kind": "local-cpu", "name": "cpu"}]})
    assert "comfy-workshop:pools" in text and "cpu (local-cpu) runs only in the local stack" in text


@pytest.mark.parametrize(
    "other", ["checkpoints//a.safetensors", "checkpoints/./a.safetensors", "./checkpoints/a.safetensors"]
)
def test_a_model_path_naming_a_listed_file_another_way_is_refused(other: str) -> None:
    """The same file written twice differently passed the duplicate check: each worker's sync then
    failed on one of the two sha256s and no worker became ready."""
    model = {"path": "checkpoints/a.safetensors", "size": 1, "sha256": "a" * 64}
    text = problems("workshop", {"models": [model, {**model, "path": other, "sha256": "b" * 64}]})
    assert "comfy-workshop:models[1].path" in text and "checkpoints/x.safetensors" in text


@pytest.mark.parametrize(
    "path",
    [
        ".",
        "checkpoints/",
        "checkpoints/a.safetensors.part",
        "checkpoints/.a.safetensors.sha256",
        ".comfy-models.lock",
    ],
)
def test_a_model_path_the_sync_cannot_keep_is_refused(path: str) -> None:
    """A folder, a partial download's or a verified mark's name, the volume's lock: the sync would
    write over its own bookkeeping or fail after the GPUs started."""
    text = problems("workshop", {"models": [{"path": path, "size": 1, "sha256": "a" * 64}]})
    assert "comfy-workshop:models[0].path" in text


@pytest.mark.parametrize(
    "source",
    [
        *("../x.safetensors", "/models/x.safetensors", "sd/../../x.safetensors"),
        *("sd//x.safetensors", "./x.safetensors", "sd/", "", "sd\\x.safetensors"),
    ],
)
def test_a_model_source_outside_the_bucket_is_refused_at_preview_as_the_worker_refuses_it(
    source: str,
) -> None:
    """The stack config and the worker's manifest are one format with one rule: both name the key
    and the fix (the config said no key, the worker no fix). A key the worker's bucket reads refuse
    ('//', './', a trailing '/', empty, a backslash) is refused there too: it passed the preview and
    stopped every GPU's sync in the morning with 'invalid storage key'."""
    model = {"path": "checkpoints/x.safetensors", "size": 1, "sha256": "a" * 64, "source": source}
    text = problems("workshop", {"models": [model]})
    assert "comfy-workshop:models[0].source" in text and repr(source) in text and "fix:" in text
    with pytest.raises(ModelError) as refused:
        parse_manifest(json.dumps({"models": [model]}), "WORKER_MODELS_MANIFEST", as_json=True)
    assert repr(source) in str(refused.value) and "fix:" in str(refused.value)


def test_a_model_path_that_is_another_ones_folder_is_refused() -> None:
    models = [
        {"path": "checkpoints/a", "size": 1, "sha256": "a" * 64},
        {"path": "checkpoints/a/b.safetensors", "size": 1, "sha256": "b" * 64},
    ]
    text = problems("workshop", {"models": models})
    assert "comfy-workshop:models" in text and "checkpoints/a is a file and a folder" in text


@pytest.mark.parametrize(
    "pool",
    [
        {"kind": "verda-instance", "name": "baseline", "modelsVolume": {"name": "m", "sizeGb": 50}},
        {"kind": "runpod-serverless", "name": "baseline", "modelsVolume": {"name": "m", "sizeGb": 50}},
    ],
)
def test_models_larger_than_the_volume_they_fill_are_refused_at_preview(pool: dict[str, Any]) -> None:
    """Every GPU would wait on a sync that runs out of room after an hour of downloading."""
    models = [
        {"path": f"checkpoints/{n}.safetensors", "size": 20 * 10**9, "sha256": "a" * 64} for n in range(3)
    ]
    text = problems("workshop", {"pools": [pool], "models": models})
    assert "comfy-workshop:models" in text and "60.0 GB" in text and "'m' holds 50 GB" in text
    assert "fix: set modelsVolume.sizeGb of pool baseline to 60 or more" in text


def test_a_model_path_longer_than_a_worker_can_report_is_refused_at_preview() -> None:
    """A worker reports its models' paths when it registers and the queue manager takes paths of
    at most MAX_MODEL_PATH characters: every worker would be refused after its GPU had started."""
    from services.protocol.workers import MAX_MODEL_PATH

    long = "loras/" + "x" * MAX_MODEL_PATH + ".safetensors"
    text = problems("workshop", {"models": [{"path": long, "size": 1, "sha256": "a" * 64}]})
    assert "comfy-workshop:models[0].path" in text and "shorter path" in text


@pytest.mark.parametrize(
    ("stack_name", "pool"),
    [
        ("Dec_Workshop", {"kind": "verda-instance", "name": "baseline"}),
        ("acme.dec", workshop_pool()),
        ("w" * 40, {"kind": "verda-instance", "name": "baseline-pool-for-the-day", "count": 12}),
    ],
)
def test_a_stack_name_verda_cannot_take_in_a_host_name_fails_at_preview(
    stack_name: str, pool: dict[str, Any]
) -> None:
    """Verda objects are named `cw-<stack>-<pool>` (an instance's host name, a deployment's name): a stack
    named with '_', '.', capitals, or so long the name passes 63 characters was refused by Verda at
    create, mid-up, after the VPS was made, with advice to fix the pool's config."""
    text = problems("workshop", {"role": "workshop", "pools": [pool]}, stack_name=stack_name)

    assert f"comfy-workshop:pools[0].name = {pool['name']!r}" in text
    assert f"stack {stack_name!r}" in text and "pulumi stack rename" in text


@pytest.mark.parametrize(
    ("stack_name", "pool", "name"),
    [
        # Its host names fit (cw-<stack>-<pool>-0); its SSH key and startup script do not.
        ("acme-december-workshop", {"kind": "verda-instance", "name": "baseline-h100-pool-fin"}, "-startup-"),
        # Its deployment's name fits; the secret with the models bucket's secret key does not.
        (
            "workshop",
            {"kind": "verda-serverless", "name": "burst-pool"},
            "-worker-models-s3-secret-access-key-",
        ),
        (
            "acme-december-2026",
            {"kind": "runpod-serverless", "name": "overflow-gpus-eu-west-one"},
            "-registry-",
        ),
        # With its own registry login, the template and endpoint (cw-<stack>-<pool>) are the longest.
        (
            "Dec_" + "w" * 50,
            {"kind": "runpod-serverless", "name": "overflow-pool", "registryAuthId": "auth-1"},
            "cw-dec_" + "w" * 50 + "-overflow-pool",
        ),
    ],
    ids=["verda-instance", "verda-serverless", "runpod-serverless", "runpod-own-login"],
)
def test_a_stack_or_pool_name_making_a_name_too_long_for_its_provider_fails_at_preview(
    stack_name: str, pool: dict[str, Any], name: str
) -> None:
    """Each pool names its objects at the provider after the stack and the pool, the secrets, logins,
    SSH key and startup script with 'what' and the workshop's 8-character tag besides: a name past 63
    characters was only refused by the provider mid-up (after the VPS was made), or not at all."""
    text = problems("workshop", {"role": "workshop", "pools": [pool]}, stack_name=stack_name)

    assert f"comfy-workshop:pools[0].name = {pool['name']!r}" in text
    too_long = re.search(r"'(cw-[^']*)' is (\d+) characters, over the 63", text)
    assert too_long, text
    assert name.lower() in too_long.group(1).lower() and len(too_long.group(1)) == int(too_long.group(2)) > 63
    assert f"{int(too_long.group(2)) - 63} characters shorter" in text and "pulumi stack rename" in text


def test_a_runpod_pool_takes_any_stack_name() -> None:
    set_config(
        stack_values("workshop", {"role": "workshop", "pools": [{"kind": "runpod-serverless", "name": "o"}]})
    )
    assert load_config("Dec_Workshop").role == "workshop"


@pytest.mark.parametrize("seconds", [0, 30, 10**9, "an hour"])
def test_a_nonsense_maximum_job_time_names_the_range(seconds: object) -> None:
    text = problems("workshop", {"pools": [workshop_pool(maxJobSeconds=seconds)]})
    assert f"comfy-workshop:pools[0].maxJobSeconds = {seconds!r}" in text
    assert "60" in text and "86400" in text


def test_a_models_list_too_long_for_the_workers_environment_is_refused_at_preview() -> None:
    """The workers get the manifest in one environment variable (WORKER_MODELS_MANIFEST_JSON), which
    Linux caps at 128 KiB: 500 LoRAs with paths and bucket keys of a hundred characters passed the
    preview, and every GPU worker's container then failed to start ('argument list too long')."""
    folder = "loras/" + "workshop-styles-" * 5
    models = [
        {
            "path": f"{folder}{index:03d}.safetensors",
            "size": 1,
            "sha256": f"{index:064x}",
            "source": f"{folder}{index:03d}",
        }
        for index in range(500)
    ]
    text = problems("workshop", {"models": models})
    assert "comfy-workshop:models" in text and "WORKER_MODELS_MANIFEST_JSON" in text, text
    assert "fix:" in text
    set_config(stack_values("workshop", {"models": models[:300]}))
    assert len(load_config("workshop").models) == 300  # 92 KB: fits


def test_the_stack_config_takes_as_many_models_as_a_worker_reports_and_names_the_limit() -> None:
    """One count of model files for the stack config, the workers' manifest and their registration
    (MAX_MODELS): the config refused a 501st model ('List should have at most 500 items', no fix) that
    the workers take, though 600 short-named LoRAs fit the workers' environment."""
    from services.protocol.workers import MAX_MODELS

    def loras(count: int) -> list[dict[str, Any]]:
        return [{"path": f"loras/{n}.safetensors", "size": 1, "sha256": f"{n:064x}"} for n in range(count)]

    set_config(stack_values("workshop", {"models": loras(600)}))
    assert len(load_config("workshop").models) == 600
    text = problems("workshop", {"models": loras(MAX_MODELS + 1)})
    assert f"{MAX_MODELS + 1} model files, more than the {MAX_MODELS}" in text, text
    assert "fix: list fewer models" in text


def test_a_refused_models_list_is_not_printed_whole_before_its_reason() -> None:
    """`pulumi preview` printed the whole refused value before the reason: 2001 models put 190 000
    characters of it on the organizer's screen, the reason and the fix after them."""
    from services.protocol.workers import MAX_MODELS

    models = [
        {"path": f"loras/{n}.safetensors", "size": 1, "sha256": f"{n:064x}"} for n in range(MAX_MODELS + 1)
    ]
    text = problems("workshop", {"models": models})
    assert "comfy-workshop:models = [{'path': 'loras/0.safetensors'" in text, text[:300]
    assert "more than the" in text and "fix: list fewer models" in text
    assert len(text) < 2000, f"{len(text)} characters"
