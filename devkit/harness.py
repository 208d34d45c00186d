"""Run the Pulumi program under mocks for a committed `Pulumi.<stack>.yaml`, recording every resource.

    run = run_stack("workshop")
    run.one("hcloud:index/server:Server").inputs["serverType"]
    run.resources_of("docker:index/container:Container")
    run.outputs["platformUrl"]; "credentials" in run.secret_outputs

The stack file is read as committed; tests may override keys (`overrides={"queue": {...}}`) or leave
secrets out (`without={"hcloud:token"}`) to check how the program reacts.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import pickle
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import dill
import pulumi
import yaml
from google.protobuf import json_format
from pulumi.runtime import mocks, rpc

from infra import credential_registry
from infra.loading import load_config
from infra.program import build

REPO = Path(__file__).resolve().parents[1]
PROJECT = "comfy-workshop"
SECRET_SIG = rpc._special_secret_sig  # the marker a serialized secret value carries
TEST_SECRETS = {
    "cloudflare:apiToken": "test-cloudflare-token",
    "hcloud:token": "test-hcloud-token",
    "tailscale:apiKey": "tskey-api-test",
    "comfy-workshop:verdaClientSecret": "test-verda-secret",
    "comfy-workshop:runpodApiKey": "test-runpod-key",
    "comfy-workshop:registryPassword": "test-registry-token",
    "comfy-workshop:verdaInferenceKey": "test-verda-inference-key",
}
# Credentials that are ids rather than secrets (set in the stack config without --secret).
TEST_SETTINGS = {"comfy-workshop:verdaClientId": "test-verda-client"}
# Every credential's environment variable (a credential there would hide a missing-secret error).
ENV_SECRETS = tuple(credential.env for credential in credential_registry.ALL if credential.env)


def stack_names() -> list[str]:
    """The committed stacks, from the `Pulumi.<stack>.yaml` files beside `Pulumi.yaml`."""
    return sorted(path.name.split(".")[1] for path in REPO.glob("Pulumi.*.yaml"))


def stack_file(stack: str) -> dict[str, Any]:
    """The `config:` of a committed stack file, keys without the project prefix."""
    data = yaml.safe_load((REPO / f"Pulumi.{stack}.yaml").read_text())
    prefix = f"{PROJECT}:"
    return {
        key.removeprefix(prefix): value for key, value in data["config"].items() if key.startswith(prefix)
    }


def _wire(value: Any) -> str:
    """Pulumi hands the program every config value as text; structured values as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def vault_outputs(participants: Iterable[str] = ("user01", "user02")) -> dict[str, Any]:
    """What the vault stack exports, as the workshop's StackReference sees it in tests."""
    names = list(participants)
    return {
        "domain": "workshop.example.org",
        "adminUser": "admin",
        "participantNames": names,
        "participantPasswords": {name: f"pw-{name}" for name in names},
        "adminPassword": "vault-admin-password",
        "sessionSecret": "vault-session-secret-0123456789",
        "r2": {
            "models": {"bucket": "comfy-models", "endpoint": "https://acct.r2.cloudflarestorage.com"},
            "cache": {"bucket": "comfy-cache", "endpoint": "https://acct.eu.r2.cloudflarestorage.com"},
            "userFiles": {
                "bucket": "comfy-user-files",
                "endpoint": "https://acct.eu.r2.cloudflarestorage.com",
            },
        },
        "modelsReadCredentials": {"accessKeyId": "models-key-id", "secretAccessKey": "models-secret"},
        "userFilesCredentials": {"accessKeyId": "files-key-id", "secretAccessKey": "files-secret"},
        "originCertificate": "-----BEGIN CERTIFICATE-----\nvault\n-----END CERTIFICATE-----\n",
        "originPrivateKey": "-----BEGIN PRIVATE KEY-----\nvault\n-----END PRIVATE KEY-----\n",
        "deployPublicKey": "ssh-ed25519 AAAAvault deploy",
        "deployPrivateKey": "-----BEGIN OPENSSH PRIVATE KEY-----\nvault\n-----END OPENSSH PRIVATE KEY-----\n",
    }


# The tailnet policy the organizer already has (what `getAcl` answers): their own tags and rules.
ORGANIZER_POLICY: dict[str, Any] = {
    "groups": {"group:eng": ["alice@example.org"]},
    "tagOwners": {"tag:prod": ["group:eng"]},
    "acls": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:prod:*"]}],
    "ssh": [{"action": "check", "src": ["group:eng"], "dst": ["tag:prod"], "users": ["root"]}],
}
CLOUDFLARE_V4 = ["173.245.48.0/20", "103.21.244.0/22"]
CLOUDFLARE_V6 = ["2400:cb00::/32"]
VAULT_SECRET_OUTPUTS = [
    "participantPasswords",
    "adminPassword",
    "sessionSecret",
    "modelsReadCredentials",
    "userFilesCredentials",
    "originPrivateKey",
    "deployPrivateKey",
]


@dataclass
class Resource:
    """One registered resource: type token, logical name, inputs (camelCase wire names) and options."""

    type: str
    name: str
    urn: str
    inputs: dict[str, Any]
    parent: str
    depends_on: list[str]
    secret_inputs: set[str]
    ignore_changes: list[str]
    protect: bool
    custom: bool
    provider: str
    retain_on_delete: bool = False
    id: str = ""
    deleted_with: str = ""


@dataclass
class StackRun:
    stack: str
    resources: list[Resource]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    invokes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def resources_of(self, type_: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, name: str | None = None) -> Resource:
        found = [r for r in self.resources_of(type_) if name is None or r.name == name]
        assert len(found) == 1, f"expected one {type_} {name or ''}, found {[r.name for r in found]}"
        return found[0]

    def by_urn(self, urn: str) -> Resource:
        return next(r for r in self.resources if r.urn == urn)

    def named(self, name: str) -> Resource:
        found = [r for r in self.resources if r.name == name]
        assert len(found) == 1, f"expected one resource named {name}, found {len(found)}"
        return found[0]

    def types(self) -> set[str]:
        return {r.type for r in self.resources}

    def depends_transitively(self, resource: Resource, target: Resource) -> bool:
        """Whether ``resource`` waits for ``target``: directly, through what it depends on, or through
        its provider (Pulumi deletes a resource before its provider, and a provider before its
        dependencies)."""
        seen: set[str] = set()
        todo = [*resource.depends_on, *_provider_urn(resource)]
        while todo:
            urn = todo.pop()
            if urn == target.urn:
                return True
            if urn not in seen:
                seen.add(urn)
                found = next((r for r in self.resources if r.urn == urn), None)
                todo += [*found.depends_on, *_provider_urn(found)] if found else []
        return False


def _provider_urn(resource: Resource) -> list[str]:
    return [resource.provider.rsplit("::", 1)[0]] if resource.provider else []


def _plain(value: Any) -> Any:
    """Inputs without the secret wrappers (which inputs were secret is kept in ``secret_inputs``)."""
    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == SECRET_SIG:
            return _plain(value.get("value"))
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _secret_keys(struct: Any) -> set[str]:
    """Top-level input keys whose value holds a secret anywhere inside it."""
    as_dict = json_format.MessageToDict(struct)
    return {key for key, value in as_dict.items() if SECRET_SIG in json.dumps(value)}


def dynamic_outputs(args: mocks.MockResourceArgs) -> dict[str, Any]:
    """What our dynamic providers' ``create`` adds to their inputs: each provider's ``outputs`` (all
    share one resource type; the pickled provider says which), URLs where the output is one."""
    if args.typ != "pulumi-python:dynamic:Resource":
        return {}
    name = args.inputs.get("name", args.name)
    return {
        key: f"https://containers.datacrunch.io/{name}" if key.endswith("_url") else f"{args.name}-{key}"
        for key in _outputs_of(_plain(args.inputs["__provider"]))
    }


@functools.lru_cache(maxsize=64)
def _outputs_of(pickled_provider: str) -> tuple[str, ...]:
    """The ``outputs`` of a pickled provider (one unpickling per provider kind, not per resource)."""
    return tuple(dill.loads(base64.b64decode(pickled_provider)).outputs)


class Recorder(mocks.Mocks):
    """Answers registrations with plausible provider outputs and invokes with canned data."""

    def __init__(self, vault: dict[str, Any], tailnet_policy: dict[str, Any] | None = None) -> None:
        self.vault = vault
        self.tailnet_policy = ORGANIZER_POLICY if tailnet_policy is None else tailnet_policy
        self.invokes: list[tuple[str, dict[str, Any]]] = []

    def new_resource(self, args: mocks.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        if args.typ == "pulumi:pulumi:StackReference":
            state = {"name": args.name, "outputs": self.vault, "secretOutputNames": VAULT_SECRET_OUTPUTS}
            return args.resource_id or args.name, state
        # Hetzner ids are integers (the program converts them: `firewall_ids` takes ints); derived from
        # the name, so the same resource has the same id in every run, whatever else is declared.
        numeric = str(int(hashlib.sha256(args.name.encode()).hexdigest()[:8], 16))
        resource_id = numeric if args.typ.startswith("hcloud:") else f"{args.name}-id"
        return resource_id, {**args.inputs, **OUTPUTS.get(args.typ, {}), **dynamic_outputs(args)}

    def call(self, args: mocks.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        self.invokes.append((args.token, dict(args.args)))
        if args.token == "tailscale:index/getAcl:getAcl":
            return {"id": "acl", "json": json.dumps(self.tailnet_policy), "hujson": ""}, []
        if args.token == "cloudflare:index/getIpRanges:getIpRanges":
            return {"ipv4Cidrs": CLOUDFLARE_V4, "ipv6Cidrs": CLOUDFLARE_V6}, []
        if args.token == "cloudflare:index/getZone:getZone":
            return {"id": "zone-id", "zoneId": "zone-id", "name": "example.org"}, []
        if args.token == "cloudflare:index/getApiTokenPermissionGroupsList:getApiTokenPermissionGroupsList":
            # The API decodes its URL-encoded filters; a name sent with plain spaces matches nothing.
            raw = str(args.args.get("name", ""))
            if " " in raw:
                return {"results": []}, []
            name = unquote(raw)
            return {
                "results": [
                    {
                        "id": f"pg-{name}",
                        "name": name,
                        "category": "r2",
                        "isSelectable": True,
                        "scopes": ["com.cloudflare.edge.r2.bucket"],
                    }
                ]
            }, []
        return {}, []


OUTPUTS: dict[str, dict[str, Any]] = {
    "hcloud:index/server:Server": {"ipv4Address": "203.0.113.10", "ipv6Address": "2001:db8::1"},
    "random:index/randomPassword:RandomPassword": {"result": "generated-password"},
    "tls:index/privateKey:PrivateKey": {
        "privateKeyPem": "-----BEGIN PRIVATE KEY-----\nk\n-----END PRIVATE KEY-----\n",
        "privateKeyOpenssh": "-----BEGIN OPENSSH PRIVATE KEY-----\nk\n-----END OPENSSH PRIVATE KEY-----\n",
        "publicKeyOpenssh": "ssh-ed25519 AAAAtest",
    },
    "tls:index/certRequest:CertRequest": {"certRequestPem": "-----BEGIN CERTIFICATE REQUEST-----\n"},
    "cloudflare:index/apiToken:ApiToken": {"value": "token-value"},
    "cloudflare:index/originCaCertificate:OriginCaCertificate": {
        "certificate": "-----BEGIN CERTIFICATE-----\n"
    },
    "tailscale:index/tailnetKey:TailnetKey": {"key": "tskey-auth-test"},
    "docker:index/remoteImage:RemoteImage": {"imageId": "sha256:0123456789abcdef"},
    "command:remote:Command": {"stdout": "ready\n100.64.0.10\ncomfy-workshop.tail1234.ts.net\n"},
}


class RecordingMonitor(mocks.MockMonitor):
    """The SDK's mock monitor, keeping what `Mocks.new_resource` is not told: parent, options, secrets."""

    def __init__(self, mock: mocks.Mocks) -> None:
        super().__init__(mock)
        self.recorded: list[Resource] = []

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        if request.type != "pulumi:pulumi:Stack":
            self.recorded.append(
                Resource(
                    type=request.type,
                    name=request.name,
                    urn=response.urn,
                    inputs=_plain(rpc.deserialize_properties(request.object)),
                    parent=request.parent,
                    depends_on=list(request.dependencies),
                    secret_inputs=_secret_keys(request.object),
                    ignore_changes=list(request.ignoreChanges),
                    protect=request.protect,
                    custom=request.custom,
                    provider=request.provider,
                    retain_on_delete=request.retainOnDelete,
                    id=response.id,
                    deleted_with=request.deletedWith,
                )
            )
        return response


def stack_values(
    stack: str, overrides: Mapping[str, Any] | None = None, drop: Iterable[str] = ()
) -> dict[str, Any]:
    values = {**stack_file(stack), **(overrides or {})}
    return {key: value for key, value in values.items() if key not in set(drop)}


def set_config(values: Mapping[str, Any], without: Iterable[str] = ()) -> None:
    """Configure the runtime as `pulumi up -s <stack>` would, test secrets included."""
    secrets = {key: value for key, value in TEST_SECRETS.items() if key not in set(without)}
    settings = {key: value for key, value in TEST_SETTINGS.items() if key not in set(without)}
    config = {f"{PROJECT}:{key}": _wire(value) for key, value in values.items()} | settings | secrets
    pulumi.runtime.set_all_config(config, list(secrets))


# The program writes the VPS's SSH identity under the deploying user's home: never the real one here.
SCRATCH_HOME = Path(tempfile.mkdtemp(prefix="comfy-workshop-home-"))


@contextmanager
def home(path: Path) -> Iterator[None]:
    before = os.environ.get("HOME")
    os.environ["HOME"] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = before


def run_stack(
    stack: str,
    *,
    overrides: Mapping[str, Any] | None = None,
    drop: Iterable[str] = (),
    without: Iterable[str] = (),
    vault: dict[str, Any] | None = None,
    stack_name: str | None = None,
    preview: bool = False,
    home_dir: Path = SCRATCH_HOME,
    tailnet_policy: dict[str, Any] | None = None,
) -> StackRun:
    """Evaluate the program for ``stack`` under mocks and return what it declared and exported
    (as the user whose home is ``home_dir``)."""
    with home(home_dir):
        return _run_stack(
            stack,
            overrides,
            drop,
            without,
            Recorder(vault or vault_outputs(), tailnet_policy),
            stack_name,
            preview,
        )


@contextmanager
def pickle_as_found() -> Iterator[None]:
    """Leave ``pickle`` as the block found it. Pulumi's ``serialize_provider`` (run for every dynamic
    resource a program declares, and by the tests that pickle providers as the engine does) wraps
    pickle's ``_Pickler._batch_setitems`` in its sorting wrapper and never unwraps it: one more layer
    per call, and after about a thousand in one process every pickling ends in RecursionError. A real
    ``pulumi up`` declares a few dozen; the test session declares thousands."""
    found = pickle._Pickler._batch_setitems, pickle._Pickler.save_dict  # type: ignore[attr-defined]
    try:
        yield
    finally:
        pickle._Pickler._batch_setitems, pickle._Pickler.save_dict = found  # type: ignore[attr-defined]


def _run_stack(
    stack: str,
    overrides: Mapping[str, Any] | None,
    drop: Iterable[str],
    without: Iterable[str],
    recorder: Recorder,
    stack_name: str | None,
    preview: bool,
) -> StackRun:
    monitor = RecordingMonitor(recorder)
    name = stack_name or stack
    pulumi.runtime.set_mocks(recorder, project=PROJECT, stack=name, preview=preview, monitor=monitor)
    set_config(stack_values(stack, overrides, drop), without)
    captured: dict[str, Any] = {}

    def program() -> pulumi.Output[Any]:
        outputs = {key: pulumi.Output.from_input(value) for key, value in build(load_config(name)).items()}
        secrets: dict[str, pulumi.Output[bool]] = {
            key: pulumi.Output.from_input(out.is_secret()) for key, out in outputs.items()
        }
        return pulumi.Output.all(
            values=pulumi.Output.all(**outputs),
            secrets=pulumi.Output.all(**secrets),
        ).apply(captured.update)

    with pickle_as_found():
        pulumi.runtime.test(program)()  # type: ignore[no-untyped-call]
    # In a preview, outputs that depend on what providers return stay unknown: nothing is captured.
    secret_outputs = {key for key, secret in captured.get("secrets", {}).items() if secret}
    values = dict(captured.get("values", {}))
    return StackRun(name, list(monitor.recorded), values, secret_outputs, recorder.invokes)
