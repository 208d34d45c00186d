"""Verda SSH keys and startup scripts: small named objects an instance refers to by id.

Both are adopted by name when their content matches (a create that failed after Verda stored it),
replaced when their content changes, and deleted with the deletion confirmed.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pulumi.runtime import rpc

from infra.providers.lifecycle import Ownership, foreign_object
from infra.providers.timing import Timing
from infra.providers.verda_api import VerdaProvider, delete_confirmed, fetch_or_none


class _NamedBlob(VerdaProvider):
    """A Verda object that is a name plus one immutable text (``content_key``)."""

    service: ClassVar[str]
    outputs = ("remote_id",)

    def _service(self, api: Any) -> Any:
        return getattr(api, self.service)

    def find(self, api: Any, props: dict[str, Any]) -> Any | None:
        named = [obj for obj in self._service(api).get() if obj.name == props["name"]]
        return named[0] if named else None

    def fetch(self, api: Any, id_: str, props: dict[str, Any]) -> Any | None:
        return fetch_or_none(self._service(api).get_by_id, id_)

    def remove(self, api: Any, props: dict[str, Any], obj: Any) -> None:
        delete_confirmed(
            f"{self.kind} {obj.name!r}",
            lambda: self._service(api).delete_by_id(obj.id),
            lambda: self.fetch(api, obj.id, props),
            Timing.of(props),
        )

    def describe(self, obj: Any, props: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return str(obj.id), {"remote_id": str(obj.id)}


class SshKeyProvider(_NamedBlob):
    """``name``, ``public_key`` -> an SSH key id for instances."""

    kind = "Verda SSH key"
    service = "ssh_keys"
    required = ("name", "public_key")
    replace_keys = frozenset({"name", "public_key"})
    ownership = Ownership.SHOWN

    def matches(self, obj: Any, props: dict[str, Any]) -> bool:
        return str(obj.public_key).strip() == str(props["public_key"]).strip()

    def foreign(self, obj: Any, props: dict[str, Any]) -> str | None:
        """Each stack makes its own key pair: a key of our name with another public key is another
        workshop's (whose instances log in with it)."""
        if props.get("public_key") == rpc.UNKNOWN or self.matches(obj, props):
            return None
        return foreign_object(self.kind, props["name"], "it holds another public key")

    def make(self, api: Any, props: dict[str, Any]) -> Any:
        return api.ssh_keys.create(props["name"], props["public_key"])


class StartupScriptProvider(_NamedBlob):
    """``name``, ``script`` -> a startup script id for instances."""

    kind = "Verda startup script"
    service = "startup_scripts"
    required = ("name", "script")
    replace_keys = frozenset({"name", "script"})

    def matches(self, obj: Any, props: dict[str, Any]) -> bool:
        return bool(obj.script == props["script"])

    def make(self, api: Any, props: dict[str, Any]) -> Any:
        return api.startup_scripts.create(props["name"], props["script"])
