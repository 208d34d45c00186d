"""Typed Pulumi resources over the dynamic providers: what the pools declare.

Each class names the outputs a pool reads. Connection inputs (credentials, API URL) are wrapped as
Pulumi secrets here and their outputs marked secret, so they never appear in plain state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pulumi
from pulumi.dynamic import Resource, ResourceProvider

from infra.providers.runpod import EndpointProvider, NetworkVolumeProvider, TemplateProvider
from infra.providers.verda_containers import DeploymentProvider
from infra.providers.verda_host import SshKeyProvider, StartupScriptProvider
from infra.providers.verda_instance import InstanceProvider
from infra.providers.verda_secrets import RegistryCredentialsProvider, SecretProvider
from infra.providers.verda_volume import SharedVolumeProvider

SECRET_KEYS = ("client_id", "client_secret", "api_key", "value", "access_token", "docker_config_json")

Props = Mapping[str, pulumi.Input[Any]]


def _declare(
    resource: Resource,
    provider: ResourceProvider,
    name: str,
    props: Props,
    outputs: tuple[str, ...],
    opts: pulumi.ResourceOptions | None,
) -> None:
    secret = [key for key in SECRET_KEYS if key in props]
    inputs: dict[str, Any] = {k: pulumi.Output.secret(v) if k in secret else v for k, v in props.items()}
    inputs.update(dict.fromkeys(outputs))
    hidden = pulumi.ResourceOptions(additional_secret_outputs=secret)
    Resource.__init__(resource, provider, name, inputs, pulumi.ResourceOptions.merge(hidden, opts))


class VerdaSshKey(Resource):
    remote_id: pulumi.Output[str]

    def __init__(self, name: str, props: Props, opts: pulumi.ResourceOptions | None = None) -> None:
        _declare(self, SshKeyProvider(), name, props, ("remote_id",), opts)


class VerdaStartupScript(Resource):
    remote_id: pulumi.Output[str]

    def __init__(self, name: str, props: Props, opts: pulumi.ResourceOptions | None = None) -> None:
        _declare(self, StartupScriptProvider(), name, props, ("remote_id",), opts)


class VerdaSharedVolume(Resource):
    volume_id: pulumi.Output[str]
    mount_command: pulumi.Output[str]
    pseudo_path: pulumi.Output[str]

    def __init__(self, name: str, props: Props, opts: pulumi.ResourceOptions | None = None) -> None:
        outputs = ("volume_id", "mount_command", "pseudo_path", "fstab_command")
        _declare(self, SharedVolumeProvider(), name, props, outputs, opts)


class VerdaInstance(Resource):
    instance_id: pulumi.Output[str]
    ip: pulumi.Output[str]
    status: pulumi.Output[str]

    def __init__(self, name: str, props: Props, opts: pulumi.ResourceOptions | None = None) -> None:
        outputs = ("instance_id", "ip", "status", "os_volume_id", "price_per_hour")
        _declare(self, InstanceProvider(), name, props, outputs, opts)


class VerdaDeployment(Resource):
    endpoint_base_url: pulumi.Output[str]

    def __init__(self, name: str, props: Props, opts: pulumi.ResourceOptions | None = None) -> None:
        _declare(self, DeploymentProvider(), name, props, ("endpoint_base_url",), opts)


class VerdaSecret(Resource):
    def __init__(self, name: str, props: Props, opts: pulumi.ResourceOptions | None = None) -> None:
        _declare(self, SecretProvider(), name, props, (), opts)


class VerdaRegistryCredentials(Resource):
    def __init__(self, name: str, props: Props, opts: pulumi.ResourceOptions | None = None) -> None:
        _declare(self, RegistryCredentialsProvider(), name, props, (), opts)


class RunPodNetworkVolume(Resource):
    remote_id: pulumi.Output[str]

    def __init__(self, name: str, props: Props, opts: pulumi.ResourceOptions | None = None) -> None:
        _declare(self, NetworkVolumeProvider(), name, props, ("remote_id",), opts)


class RunPodTemplate(Resource):
    remote_id: pulumi.Output[str]

    def __init__(self, name: str, props: Props, opts: pulumi.ResourceOptions | None = None) -> None:
        _declare(self, TemplateProvider(), name, props, ("remote_id",), opts)


class RunPodEndpoint(Resource):
    remote_id: pulumi.Output[str]
    endpoint_url: pulumi.Output[str]

    def __init__(self, name: str, props: Props, opts: pulumi.ResourceOptions | None = None) -> None:
        _declare(self, EndpointProvider(), name, props, ("remote_id", "endpoint_url"), opts)
