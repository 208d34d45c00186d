"""Typed Pulumi resources over the dynamic providers: what the pools declare.

Each class names its provider; the provider names the outputs (``LifecycleProvider.outputs``), which
the class declares as None inputs so the pools can read them. Connection inputs (credentials, API
URL) are wrapped as Pulumi secrets here and their outputs marked secret, so they never appear in
plain state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pulumi
from pulumi.dynamic import Resource

from infra.providers.lifecycle import LifecycleProvider
from infra.providers.runpod import (
    EndpointProvider,
    NetworkVolumeProvider,
    RegistryAuthProvider,
    TemplateProvider,
)
from infra.providers.verda_containers import DeploymentProvider
from infra.providers.verda_host import SshKeyProvider, StartupScriptProvider
from infra.providers.verda_instance import InstanceProvider
from infra.providers.verda_secrets import RegistryCredentialsProvider, SecretProvider
from infra.providers.verda_volume import SharedVolumeProvider

SECRET_KEYS = (
    "client_id",
    "client_secret",
    "api_key",
    "value",
    "access_token",
    "docker_config_json",
    "password",
)

Props = Mapping[str, pulumi.Input[Any]]


class _Declared(Resource):
    """A dynamic resource whose provider is ``provider_class`` (a class: one fresh object per resource)."""

    provider_class: ClassVar[type[LifecycleProvider]]

    def __init__(self, name: str, props: Props, opts: pulumi.ResourceOptions | None = None) -> None:
        provider = self.provider_class()
        secret = [key for key in SECRET_KEYS if key in props]
        inputs: dict[str, Any] = {k: pulumi.Output.secret(v) if k in secret else v for k, v in props.items()}
        inputs.update(dict.fromkeys(provider.outputs))
        hidden = pulumi.ResourceOptions(additional_secret_outputs=secret)
        super().__init__(provider, name, inputs, pulumi.ResourceOptions.merge(hidden, opts))


class _Remote(_Declared):
    """A resource whose provider reports the remote object's id as ``remote_id``."""

    remote_id: pulumi.Output[str]


class VerdaSshKey(_Remote):
    provider_class = SshKeyProvider


class VerdaStartupScript(_Remote):
    provider_class = StartupScriptProvider


class VerdaSharedVolume(_Declared):
    provider_class = SharedVolumeProvider
    volume_id: pulumi.Output[str]
    mount_command: pulumi.Output[str]
    pseudo_path: pulumi.Output[str]


class VerdaInstance(_Declared):
    provider_class = InstanceProvider
    instance_id: pulumi.Output[str]
    ip: pulumi.Output[str]
    status: pulumi.Output[str]


class VerdaDeployment(_Declared):
    provider_class = DeploymentProvider
    endpoint_base_url: pulumi.Output[str]


class VerdaSecret(_Declared):
    provider_class = SecretProvider


class VerdaRegistryCredentials(_Declared):
    provider_class = RegistryCredentialsProvider


class RunPodNetworkVolume(_Remote):
    provider_class = NetworkVolumeProvider


class RunPodRegistryAuth(_Remote):
    provider_class = RegistryAuthProvider


class RunPodTemplate(_Remote):
    provider_class = TemplateProvider


class RunPodEndpoint(_Remote):
    provider_class = EndpointProvider
    endpoint_url: pulumi.Output[str]


# Every resource kind the pools declare (the engine-faithful tests drive each through a week).
ALL: tuple[type[_Declared], ...] = (
    VerdaSshKey,
    VerdaStartupScript,
    VerdaSharedVolume,
    VerdaInstance,
    VerdaDeployment,
    VerdaSecret,
    VerdaRegistryCredentials,
    RunPodNetworkVolume,
    RunPodRegistryAuth,
    RunPodTemplate,
    RunPodEndpoint,
)
