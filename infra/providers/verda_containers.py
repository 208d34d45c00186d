"""Verda serverless container deployments: the push pool's replicas and their autoscaler.

The deployment's name is its id. Everything but the name changes in place (``update_deployment``);
a deployment found under our name is adopted and brought to the wanted spec. The autoscaler scales
on the requests sent to the deployment's own endpoint (``endpoint_base_url``), which is what the
queue manager's push dispatcher calls.
"""

from __future__ import annotations

from typing import Any

from pulumi.dynamic import CheckResult
from verda.containers import (
    ComputeResource,
    Container,
    ContainerRegistryCredentials,
    ContainerRegistrySettings,
    Deployment,
    EntrypointOverridesSettings,
    EnvVar,
    EnvVarType,
    HealthcheckSettings,
    QueueLoadScalingTrigger,
    ScalingOptions,
    ScalingPolicy,
    ScalingTriggers,
    SharedFileSystemMount,
)

from infra.providers.lifecycle import Ownership, other_workshop
from infra.providers.timing import Timing
from infra.providers.verda_api import VerdaProvider, delete_confirmed, fetch_or_none

SCALING_DEFAULTS = {
    "min_replica_count": 0,
    "max_replica_count": 1,
    "scale_up_delay_s": 0,
    "scale_down_delay_s": 300,
    "queue_message_ttl_s": 3600,
    "concurrent_requests_per_replica": 1,
    "queue_load_threshold": 1.0,
}


class DeploymentProvider(VerdaProvider):
    """``name``, ``image``, ``port``, ``health_path``, ``env`` (plain), ``secret_env`` (env name ->
    Verda secret name), ``mounts`` ([{mount_path, volume_id}]), ``compute`` ({name, size}),
    ``scaling`` (see SCALING_DEFAULTS), ``registry_credentials`` (name or empty), ``is_spot``,
    ``cmd`` (arguments replacing the image's CMD)."""

    kind = "Verda container deployment"
    required = ("name", "image", "compute")
    replace_keys = frozenset({"name"})
    outputs = ("endpoint_base_url",)
    ownership = Ownership.SHOWN

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        """Also, at preview: the compute (a pool's ``gpu``) is one Verda's serverless platform offers,
        and no other workshop's deployment has our name."""
        offered = self.check_offered(
            super().check(_olds, news),
            "compute",
            lambda api: (c.name for c in api.containers.get_compute_resources()),
            "set the pool's gpu in comfy-workshop:pools",
        )
        return offered

    def foreign(self, obj: Any, props: dict[str, Any]) -> str | None:
        """Deployment names are unique at Verda: one whose workers call another queue manager serves
        another workshop of the same stack and pool names."""
        env = obj.containers[0].env if obj.containers else None
        theirs = {var.name: var.value_or_reference_to_secret for var in env or []}
        return other_workshop(self.kind, props["name"], theirs, props.get("env"))

    def find(self, api: Any, props: dict[str, Any]) -> Any | None:
        return fetch_or_none(api.containers.get_deployment_by_name, props["name"])

    def make(self, api: Any, props: dict[str, Any]) -> Any:
        return api.containers.create_deployment(deployment_for(props))

    def adopt(self, api: Any, props: dict[str, Any], obj: Any) -> Any:
        """An adopted deployment may carry an older spec: bring it to ours (a fresh one needs nothing)."""
        return api.containers.update_deployment(props["name"], deployment_for(props))

    def fetch(self, api: Any, id_: str, props: dict[str, Any]) -> Any | None:
        return fetch_or_none(api.containers.get_deployment_by_name, id_)

    def change(self, api: Any, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> Any:
        return api.containers.update_deployment(id_, deployment_for(news))

    def remove(self, api: Any, props: dict[str, Any], obj: Any) -> None:
        delete_confirmed(
            f"{self.kind} {obj.name!r}",
            lambda: api.containers.delete_deployment(obj.name),
            lambda: self.fetch(api, obj.name, props),
            Timing.of(props),
        )

    def describe(self, obj: Any, props: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return str(obj.name), {"endpoint_base_url": obj.endpoint_base_url or ""}

    def drifted(self, obj: Any, props: dict[str, Any]) -> dict[str, Any]:
        """What the console lets one change: the image, the GPU, spot, the replica range, the env (a
        queue URL or a secret's name changed there leaves workers calling nowhere)."""
        now, wanted = console_view(obj), console_view(deployment_for(props))
        drift = {key: value for key, value in now.items() if value != wanted[key]}
        if "scaling" in drift:
            drift["scaling"] = {**(props.get("scaling") or {}), **drift["scaling"]}
        return drift


def console_view(dep: Deployment) -> dict[str, Any]:
    """A deployment's settings a console user may change, as inputs."""
    env = (dep.containers[0].env if dep.containers else None) or []
    return {
        "image": dep.containers[0].image if dep.containers else "",
        "env": _env_of(env, EnvVarType.PLAIN),
        "secret_env": _env_of(env, EnvVarType.SECRET),
        "compute": {"name": dep.compute.name, "size": dep.compute.size},
        "is_spot": bool(dep.is_spot),
        "scaling": {
            "min_replica_count": dep.scaling.min_replica_count,
            "max_replica_count": dep.scaling.max_replica_count,
        },
    }


def _env_of(env: list[EnvVar], kind: EnvVarType) -> dict[str, str]:
    """The variables of one kind: plain values, or the names of the Verda secrets they refer to."""
    return {var.name: var.value_or_reference_to_secret for var in env if var.type == kind}


def deployment_for(props: dict[str, Any]) -> Deployment:
    """The SDK's Deployment for our inputs."""
    credentials = props.get("registry_credentials") or ""
    return Deployment(
        name=props["name"],
        containers=[container_for(props)],
        compute=ComputeResource(name=props["compute"]["name"], size=int(props["compute"].get("size", 1))),
        container_registry_settings=ContainerRegistrySettings(
            is_private=bool(credentials),
            credentials=ContainerRegistryCredentials(name=credentials) if credentials else None,
        ),
        is_spot=bool(props.get("is_spot")),
        scaling=scaling_for(props.get("scaling") or {}),
    )


def container_for(props: dict[str, Any]) -> Container:
    port = int(props.get("port") or 8000)
    plain = [EnvVar(k, str(v), EnvVarType.PLAIN) for k, v in sorted((props.get("env") or {}).items())]
    secret = [EnvVar(k, v, EnvVarType.SECRET) for k, v in sorted((props.get("secret_env") or {}).items())]
    mounts = [SharedFileSystemMount(m["mount_path"], m["volume_id"]) for m in props.get("mounts") or []]
    cmd = list(props.get("cmd") or [])
    return Container(
        image=props["image"],
        exposed_port=port,
        entrypoint_overrides=EntrypointOverridesSettings(enabled=True, cmd=cmd) if cmd else None,
        healthcheck=HealthcheckSettings(enabled=True, port=port, path=props.get("health_path") or "/health"),
        env=plain + secret,
        volume_mounts=list(mounts) or None,
    )


def scaling_for(given: dict[str, Any]) -> ScalingOptions:
    s = {**SCALING_DEFAULTS, **given}
    return ScalingOptions(
        min_replica_count=int(s["min_replica_count"]),
        max_replica_count=int(s["max_replica_count"]),
        scale_down_policy=ScalingPolicy(delay_seconds=int(s["scale_down_delay_s"])),
        scale_up_policy=ScalingPolicy(delay_seconds=int(s["scale_up_delay_s"])),
        queue_message_ttl_seconds=int(s["queue_message_ttl_s"]),
        concurrent_requests_per_replica=int(s["concurrent_requests_per_replica"]),
        scaling_triggers=ScalingTriggers(
            queue_load=QueueLoadScalingTrigger(threshold=float(s["queue_load_threshold"]))
        ),
    )
