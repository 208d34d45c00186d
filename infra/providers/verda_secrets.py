"""Verda secrets and container-registry credentials: write-only named values for deployments.

Verda never shows a stored value back, so a secret or credential found under our name cannot be
trusted to hold our value: it is deleted and written again. A changed value replaces it. Their names
carry the workshop's tag (``Ownership.NAMED``): what is found under one is this workshop's.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from verda.containers import CustomRegistryCredentials, DockerHubCredentials, GithubCredentials

from infra.providers.lifecycle import Ownership, ProviderError
from infra.providers.timing import Timing
from infra.providers.verda_api import VerdaProvider, delete_confirmed

REGISTRIES = {"dockerhub": DockerHubCredentials, "ghcr": GithubCredentials}


class _WriteOnly(VerdaProvider):
    ownership = Ownership.NAMED

    def matches(self, obj: Any, props: dict[str, Any]) -> bool:
        return False

    def describe(self, obj: Any, props: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return str(props["name"]), {}

    @abstractmethod
    def _listed(self, api: Any) -> list[Any]: ...

    @abstractmethod
    def _delete(self, api: Any, name: str) -> None: ...

    def find(self, api: Any, props: dict[str, Any]) -> Any | None:
        named = [obj for obj in self._listed(api) if obj.name == props["name"]]
        return named[0] if named else None

    def fetch(self, api: Any, id_: str, props: dict[str, Any]) -> Any | None:
        return self.find(api, {**props, "name": id_})

    def make(self, api: Any, props: dict[str, Any]) -> Any:
        self._write(api, props)
        return self.find(api, props)

    @abstractmethod
    def _write(self, api: Any, props: dict[str, Any]) -> None: ...

    def remove(self, api: Any, props: dict[str, Any], obj: Any) -> None:
        delete_confirmed(
            f"{self.kind} {obj.name!r}",
            lambda: self._delete(api, obj.name),
            lambda: self.fetch(api, obj.name, props),
            Timing.of(props),
        )


class SecretProvider(_WriteOnly):
    """``name``, ``value`` (secret) -> a Verda secret that deployments reference by name."""

    kind = "Verda secret"
    required = ("name", "value")
    replace_keys = frozenset({"name", "value"})

    def _listed(self, api: Any) -> list[Any]:
        return list(api.containers.get_secrets())

    def _delete(self, api: Any, name: str) -> None:
        # force: a deployment may still reference it while it is being replaced.
        api.containers.delete_secret(name, force=True)

    def _write(self, api: Any, props: dict[str, Any]) -> None:
        api.containers.create_secret(props["name"], props["value"])


class RegistryCredentialsProvider(_WriteOnly):
    """``name``, ``registry`` (dockerhub|ghcr|custom), ``username`` and ``access_token`` (secret), or
    ``docker_config_json`` (secret) for any other registry."""

    kind = "Verda registry credentials"
    required = ("name", "registry")
    replace_keys = frozenset({"name", "registry", "username", "access_token", "docker_config_json"})

    def _listed(self, api: Any) -> list[Any]:
        return list(api.containers.get_registry_credentials())

    def _delete(self, api: Any, name: str) -> None:
        api.containers.delete_registry_credentials(name)

    def _write(self, api: Any, props: dict[str, Any]) -> None:
        api.containers.add_registry_credentials(credentials_for(props))


def credentials_for(props: dict[str, Any]) -> Any:
    registry = props["registry"]
    if registry == "custom":
        return CustomRegistryCredentials(props["name"], props["docker_config_json"])
    if registry not in REGISTRIES:
        raise ProviderError(
            f"registry {registry!r} is not one of dockerhub, ghcr, custom: for another registry use "
            "'custom' with a docker config JSON"
        )
    return REGISTRIES[registry](props["name"], props["username"], props["access_token"])
