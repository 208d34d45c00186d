"""The workshop stack under mocks: what is reachable from where, what is secret, what goes first."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

import infra.local
import infra.workshop
from devkit.harness import (
    CLOUDFLARE_V4,
    CLOUDFLARE_V6,
    ORGANIZER_POLICY,
    REPO,
    Resource,
    StackRun,
    run_stack,
)

CONTAINER = "docker:index/container:Container"


@pytest.fixture(scope="module")
def workshop() -> StackRun:
    return run_stack("workshop")


def container(run: StackRun, role: str) -> Resource:
    return run.one(CONTAINER, f"platform-{role}")


def env(resource: Resource) -> dict[str, str]:
    return dict(item.split("=", 1) for item in resource.inputs["envs"])


def test_the_firewall_opens_only_the_site_and_tailscale(workshop: StackRun) -> None:
    rules = workshop.one("hcloud:index/firewall:Firewall").inputs["rules"]
    opened = {(rule["protocol"], rule.get("port")) for rule in rules}
    assert opened == {("tcp", "80"), ("tcp", "443"), ("udp", "41641"), ("icmp", None)}
    sources = {rule.get("port"): rule["sourceIps"] for rule in rules}
    assert sources["80"] == sources["443"] == CLOUDFLARE_V4 + CLOUDFLARE_V6, (
        "only Cloudflare reaches the site"
    )
    assert sources["41641"] == ["0.0.0.0/0", "::/0"]
    firewall_id = int(workshop.one("hcloud:index/firewall:Firewall").id)
    assert workshop.one("hcloud:index/server:Server").inputs["firewallIds"] == [firewall_id]


def test_the_site_can_be_opened_to_everyone_by_config() -> None:
    run = run_stack("workshop", overrides={"vps": {"webFromCloudflareOnly": False}})
    rules = run.one("hcloud:index/firewall:Firewall").inputs["rules"]
    assert [r["sourceIps"] for r in rules if r.get("port") == "443"] == [["0.0.0.0/0", "::/0"]]


def test_ssh_opens_only_to_the_allow_list_and_then_uses_the_public_address() -> None:
    run = run_stack("workshop", overrides={"vps": {"sshAllowList": ["198.51.100.0/24"]}})
    rules = run.one("hcloud:index/firewall:Firewall").inputs["rules"]
    assert [r["sourceIps"] for r in rules if r.get("port") == "22"] == [["198.51.100.0/24"]]
    assert run.one("command:remote:Command", "vps-ready").inputs["connection"]["host"] == "203.0.113.10"


def test_the_server_takes_type_and_location_from_config_and_is_never_replaced_by_accident(
    workshop: StackRun,
) -> None:
    server = workshop.one("hcloud:index/server:Server")
    assert (server.inputs["serverType"], server.inputs["location"]) == ("cx33", "fsn1")
    assert {"userData", "sshKeys", "image"} <= set(server.ignore_changes)
    assert "userData" in server.secret_inputs, "cloud-init carries the tailnet key and the host key"
    assert "tailscale up" in server.inputs["userData"] or "join-tailnet.sh" in server.inputs["userData"]


def test_the_data_volume_is_created_and_attached_when_configured(workshop: StackRun) -> None:
    volume = workshop.one("hcloud:index/volume:Volume")
    assert (volume.inputs["size"], volume.inputs["location"], volume.inputs["format"]) == (20, "fsn1", "ext4")
    assert workshop.one("hcloud:index/volumeAttachment:VolumeAttachment")
    assert "mount-data.sh" in workshop.one("hcloud:index/server:Server").inputs["userData"]
    without = run_stack("workshop", overrides={"vps": {"dataVolumeGb": None}})
    assert not without.resources_of("hcloud:index/volume:Volume")


def test_nginx_publishes_the_site_publicly_and_the_worker_api_only_on_the_tailnet(workshop: StackRun) -> None:
    ports = {(p["internal"], p["external"], p["ip"]) for p in container(workshop, "nginx").inputs["ports"]}
    assert ports == {(80, 80, "0.0.0.0"), (443, 443, "0.0.0.0"), (8081, 8081, "100.64.0.10")}


def test_redis_and_the_queue_manager_publish_no_port(workshop: StackRun) -> None:
    for role in ("redis", "queue-manager"):
        assert not container(workshop, role).inputs.get("ports"), f"{role} must stay on the private network"
    networks = container(workshop, "redis").inputs["networksAdvanced"]
    assert [(n["name"], n["aliases"]) for n in networks] == [("comfy-workshop", ["redis"])]


def test_redis_keeps_an_aof_on_a_volume_behind_a_password(workshop: StackRun) -> None:
    redis = container(workshop, "redis")
    conf = redis.inputs["uploads"][0]["content"]
    assert "appendonly yes" in conf and "user queue-manager on >generated-password " in conf
    assert "uploads" in redis.secret_inputs
    assert redis.inputs["volumes"][0]["containerPath"] == "/data"
    assert (
        env(container(workshop, "queue-manager"))["QM_REDIS_URL"]
        == "redis://queue-manager:generated-password@redis:6379/0"
    )


def test_every_container_has_a_healthcheck_and_a_restart_policy(workshop: StackRun) -> None:
    for resource in workshop.resources_of(CONTAINER):
        assert resource.inputs["restart"] == "unless-stopped", resource.name
        assert resource.inputs["healthcheck"]["tests"], resource.name


def test_every_credential_reaches_the_containers_as_a_secret(workshop: StackRun) -> None:
    qm = container(workshop, "queue-manager")
    assert {"envs", "uploads"} <= qm.secret_inputs
    settings = env(qm)
    assert settings["QM_ADMIN_PASSWORD"] == "vault-admin-password"
    assert settings["QM_SESSION_SECRET"] == "vault-session-secret-0123456789"
    assert set(json.loads(settings["QM_WORKER_TOKENS"])) == {"baseline", "burst"}
    assert settings["S3_SECRET_ACCESS_KEY"] == "files-secret"
    assert json.loads(qm.inputs["uploads"][0]["content"]) == {"user01": "pw-user01", "user02": "pw-user02"}
    assert "uploads" in container(workshop, "nginx").secret_inputs, "the origin certificate's key"
    for step in workshop.resources_of("command:remote:Command"):
        assert "connection" in step.secret_inputs, step.name


def test_the_queue_manager_gets_the_queue_policy_and_its_public_url(workshop: StackRun) -> None:
    settings = env(container(workshop, "queue-manager"))
    assert settings["QM_SCHEDULING"] == "fair"
    assert settings["QM_MAX_RUNNING_PER_USER"] == "2"
    assert settings["QM_MAX_UPLOAD_BYTES"] == str(100 * 1024 * 1024)
    assert settings["QM_MAX_USER_FILES_BYTES"] == str(10 * 1024 * 1024 * 1024)
    assert settings["QM_PUBLIC_URL"] == "https://workshop.example.org"
    # One H100 instance and six one-request serverless replicas: a leaked token registers no more.
    assert json.loads(settings["QM_POOL_CAPACITY"]) == {"baseline": 1, "burst": 6}
    assert settings["QM_FILES_URL"] == "s3://comfy-user-files/files"
    assert settings["S3_ENDPOINT_URL"] == "https://acct.eu.r2.cloudflarestorage.com"


def test_the_queue_manager_image_is_built_on_the_vps_from_images(workshop: StackRun) -> None:
    image = workshop.one("docker:index/remoteImage:RemoteImage", "platform-queue-manager-image")
    assert image.inputs["build"]["dockerfile"] == "images/queue-manager/Dockerfile"
    assert image.inputs["name"].startswith("comfy-workshop/queue-manager:")
    digest = image.inputs["triggers"]["context"]
    assert image.inputs["name"] == f"comfy-workshop/queue-manager:{digest[:16]}", (
        "the tag is the sources' hash"
    )
    provider = workshop.one("pulumi:providers:docker", "docker-provider")
    assert image.provider.startswith(provider.urn)
    assert provider.inputs["host"] == "ssh://root@comfy-workshop"


def test_docker_is_used_only_after_cloud_init_finished(workshop: StackRun) -> None:
    provider = workshop.one("pulumi:providers:docker", "docker-provider")
    ready = workshop.one("command:remote:Command", "vps-ready")
    assert ready.urn in provider.depends_on
    assert workshop.depends_transitively(ready, workshop.one("hcloud:index/server:Server"))
    assert "cloud-init status --wait" in ready.inputs["stdin"]


def test_destroy_drains_and_snapshots_before_the_queue_manager_and_server_go(workshop: StackRun) -> None:
    drain = workshop.one("command:remote:Command", "queue-drain")
    assert "cli drain --timeout" in drain.inputs["delete"] and "cli save" in drain.inputs["delete"]
    assert "cli load" in workshop.one("command:remote:Command", "queue-step").inputs["create"]
    # Pulumi deletes dependents first: the drain runs while these still exist.
    assert workshop.depends_transitively(drain, container(workshop, "queue-manager"))
    assert workshop.depends_transitively(drain, container(workshop, "redis"))
    assert workshop.depends_transitively(drain, workshop.one("hcloud:index/server:Server"))


def test_destroy_drains_before_any_gpu_pool_goes() -> None:
    """Running jobs finish on their GPUs: a pool deleted beside the drain (a Verda instance has no
    tie to the queue manager) killed them, to run again the next morning."""
    pools = [
        {"kind": "verda-instance", "name": "baseline", "count": 2, "modelsVolume": {"name": "comfy-models"}},
        {"kind": "verda-serverless", "name": "burst"},
        {"kind": "runpod-serverless", "name": "overflow"},
    ]
    run = run_stack("workshop", overrides={"pools": pools})
    drain = run.one("command:remote:Command", "queue-drain")
    gpu = run.resources_of("pulumi-python:dynamic:Resource")
    assert {r.name for r in gpu} >= {"baseline-0", "baseline-1", "burst-deployment", "overflow-endpoint"}
    assert [r.name for r in gpu if not run.depends_transitively(drain, r)] == []


def test_the_morning_restores_the_queue_before_any_gpu_can_take_a_job() -> None:
    """A worker that claims before the restore ran would run a morning job ahead of last night's
    queue, or a job twice: pull pools' machines start after the restore step; push pools (which the
    queue manager's settings name, so they come before it) meet a queue manager that leases nothing
    until the restore ran (QM_RESTORE_FIRST)."""
    pools = [
        {"kind": "verda-instance", "name": "baseline", "count": 2},
        {"kind": "runpod-serverless", "name": "overflow"},
    ]
    run = run_stack("workshop", overrides={"pools": pools})
    restore = run.one("command:remote:Command", "queue-step")
    machines = [run.one("pulumi-python:dynamic:Resource", f"baseline-{index}") for index in range(2)]
    assert all(run.depends_transitively(machine, restore) for machine in machines)
    assert "QM_RESTORE_FIRST=1" in container(run, "queue-manager").inputs["envs"]


def test_a_mid_day_up_that_changes_the_queue_steps_never_restores_over_the_live_queue() -> None:
    """pulumi-command runs a changed command's ``update``, or its ``create`` again when it has none:
    a new drain timeout (or drain script) must not load last evening's snapshot into today's queue."""
    for drain_timeout in (600, 900):
        run = run_stack("workshop", overrides={"queue": {"drainTimeoutSeconds": drain_timeout}})
        for step in run.resources_of("command:remote:Command"):
            if step.name.startswith("queue-"):
                on_change = step.inputs.get("update") or step.inputs.get("create") or ""
                assert "cli load" not in on_change, f"{step.name} restores again when its inputs change"


def test_tailscale_keys_are_tagged_preauthorized_and_the_gpu_key_is_ephemeral(workshop: StackRun) -> None:
    keys = {r.name: r.inputs for r in workshop.resources_of("tailscale:index/tailnetKey:TailnetKey")}
    vps, gpu = keys["tailnet-vps-key"], keys["tailnet-gpu-key"]
    assert (vps["reusable"], vps["preauthorized"], vps["tags"]) == (False, True, ["tag:comfy-vps"])
    assert (gpu["reusable"], gpu["ephemeral"], gpu["preauthorized"], gpu["tags"]) == (
        True, True, True, ["tag:comfy-gpu"],
    )  # fmt: skip
    policy = json.loads(workshop.one("tailscale:index/acl:Acl").inputs["acl"])
    assert {"action": "accept", "src": ["tag:comfy-gpu"], "dst": ["tag:comfy-vps:8081"]} in policy["acls"]


def test_the_dns_record_is_proxied_and_points_at_the_vps(workshop: StackRun) -> None:
    record = workshop.one("cloudflare:index/dnsRecord:DnsRecord").inputs
    assert (record["name"], record["type"], record["content"], record["proxied"]) == (
        "workshop.example.org", "A", "203.0.113.10", True,
    )  # fmt: skip
    assert record["zoneId"] == "zone-id"


def test_nothing_of_the_vault_is_declared_by_the_workshop(workshop: StackRun) -> None:
    vault_types = {
        "cloudflare:index/r2Bucket:R2Bucket", "cloudflare:index/apiToken:ApiToken",
        "cloudflare:index/originCaCertificate:OriginCaCertificate", "comfy-workshop:credentials:Credentials",
    }  # fmt: skip
    assert not vault_types & workshop.types()
    passwords = [r.name for r in workshop.resources_of("random:index/randomPassword:RandomPassword")]
    assert all(name.startswith(("pools-", "platform-redis")) for name in passwords), passwords


def test_outputs_give_urls_addresses_and_secret_credentials(workshop: StackRun) -> None:
    assert workshop.outputs["vpsAddress"] == "203.0.113.10"
    assert workshop.outputs["tailnetNames"]["vps"] == "comfy-workshop"
    assert workshop.outputs["credentials"]["admin"] == {"user": "admin", "password": "vault-admin-password"}
    assert "credentials" in workshop.secret_outputs
    assert "vpsAddress" not in workshop.secret_outputs


def test_pull_pools_get_the_tailnet_queue_url_and_the_gpu_key() -> None:
    run = run_stack("workshop")
    # The full MagicDNS name the VPS reported: Docker's bridge may not carry the tailnet's search domain.
    assert run.outputs["workerApiUrl"] == "http://comfy-workshop.tail1234.ts.net:8081"


def test_nginx_trusts_the_client_address_cloudflare_forwards(workshop: StackRun) -> None:
    site = workshop.one(CONTAINER, "platform-nginx").inputs["uploads"][0]["content"]
    assert "real_ip_header CF-Connecting-IP;" in site
    assert all(f"set_real_ip_from {cidr};" in site for cidr in CLOUDFLARE_V4 + CLOUDFLARE_V6)
    assert "listen 443 ssl" in site and "client_max_body_size 100m;" in site


def test_containers_go_with_the_server_so_destroy_needs_no_ssh_to_docker(workshop: StackRun) -> None:
    server = workshop.one("hcloud:index/server:Server")
    on_docker = [r for r in workshop.resources if r.type.startswith("docker:")]
    assert len(on_docker) >= 8
    assert {r.name for r in on_docker if r.deleted_with != server.urn} == set()
    assert workshop.one("command:remote:Command", "queue-drain").deleted_with == "", "the drain must run"
    assert (
        workshop.one("pulumi:providers:docker").inputs["disableDockerDaemonCheck"] == "true"
    )  # provider config is text


def test_the_vps_leaves_the_tailnet_on_destroy_without_cutting_its_own_session(workshop: StackRun) -> None:
    ready = workshop.one("command:remote:Command", "vps-ready")
    assert "tailscale logout" in ready.inputs["delete"]
    assert ready.inputs["delete"].startswith("nohup ") and ready.inputs["delete"].endswith("&")


def test_docker_over_ssh_needs_no_file_from_an_earlier_machine(tmp_path: Path) -> None:
    laptop, ci = tmp_path / "laptop", tmp_path / "ci-runner"
    runs = [run_stack("workshop", home_dir=home) for home in (laptop, ci)]

    assert all(run.resources_of("command:local:Command") == [] for run in runs), "files only on one machine"
    providers = [run.one("pulumi:providers:docker", "docker-provider").inputs for run in runs]
    assert providers[0] == providers[1], "deploying from elsewhere must not change the provider"
    options = " ".join(json.loads(providers[0]["sshOpts"]))  # provider inputs travel as JSON text
    assert str(REPO) not in options and "~/.ssh/comfy-workshop/workshop_ed25519" in options
    for home in (laptop, ci):
        key = home / ".ssh" / "comfy-workshop" / "workshop_ed25519"
        known = (home / ".ssh" / "comfy-workshop" / "workshop_known_hosts").read_text()
        assert key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert known.startswith(providers[0]["host"].removeprefix("ssh://root@") + " ssh-ed25519 ")


def _policy(run: StackRun) -> dict[str, Any]:
    return json.loads(run.one("tailscale:index/acl:Acl").inputs["acl"])


def test_our_rules_are_merged_into_the_organizers_tailnet_policy(workshop: StackRun) -> None:
    policy = _policy(workshop)

    for key in ("groups", "ssh"):
        assert policy[key] == ORGANIZER_POLICY[key], f"the organizer's {key} must stay"
    assert ORGANIZER_POLICY["acls"][0] in policy["acls"]
    assert policy["tagOwners"]["tag:prod"] == ["group:eng"]
    assert policy["tagOwners"]["tag:comfy-gpu"] == ["autogroup:admin"]
    assert {"action": "accept", "src": ["tag:comfy-gpu"], "dst": ["tag:comfy-vps:8081"]} in policy["acls"]


def test_the_next_up_rewrites_our_rules_and_keeps_theirs(workshop: StackRun) -> None:
    yesterday = _policy(workshop)
    changed = {"tailscale": {"sshFrom": ["tag:ci"]}}

    today = _policy(run_stack("workshop", overrides=changed, tailnet_policy=yesterday))

    assert ORGANIZER_POLICY["acls"][0] in today["acls"]
    assert {"action": "accept", "src": ["tag:ci"], "dst": ["tag:comfy-vps:22"]} in today["acls"]
    assert len(today["acls"]) == len(yesterday["acls"]) + 1, "our old rules are replaced, not piled up"
    assert _policy(run_stack("workshop", tailnet_policy=yesterday)) == yesterday, "an unchanged up is a no-op"


@pytest.mark.parametrize(
    "rule",
    [
        {"action": "accept", "src": ["group:eng"], "dst": ["tag:comfy-vps:443"]},
        {"action": "accept", "src": ["*"], "dst": ["*:*"]},  # Tailscale's default: allow all
        {"action": "accept", "src": ["tag:comfy-gpu"], "dst": ["tag:prod:*"]},
    ],
)
def test_a_policy_with_rules_on_our_tags_we_did_not_write_is_refused(rule: dict[str, Any]) -> None:
    policy = {**ORGANIZER_POLICY, "acls": [*ORGANIZER_POLICY["acls"], rule]}

    with pytest.raises(Exception, match=r"tailnet policy holds rules the program did not write.*Fix: "):
        run_stack("workshop", tailnet_policy=policy)


@pytest.mark.parametrize("stack", ["workshop", "local"])
def test_a_program_error_after_the_pools_fails_the_up_naming_it_instead_of_hanging(
    stack: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pull pools wait for the morning's restore step, declared after the queue manager: a
    program that failed in between left them waiting, and the engine with them, for ever."""
    module = {"workshop": infra.workshop, "local": infra.local}[stack]

    def broken(*_: object, **__: object) -> None:
        raise ValueError("the platform could not be declared")

    monkeypatch.setattr(module, "_platform", broken)
    pools = {
        "workshop": [{"kind": "verda-instance", "name": "baseline"}],
        "local": [{"kind": "local-cpu", "name": "cpu"}],
    }[stack]
    with pytest.raises(Exception, match="the platform could not be declared"):
        run_stack(stack, overrides={"pools": pools})
