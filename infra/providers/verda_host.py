"""Verda SSH keys and startup scripts: small named objects an instance refers to by id.

Both are adopted by name when their content matches (a create that failed after Verda stored it),
replaced when their content changes, and deleted with the deletion confirmed.
"""

from __future__ import annotations

from typing import Any, ClassVar

from infra.providers.lifecycle import Ownership
from infra.providers.timing import Timing
from infra.providers.verda_api import VerdaProvider, delete_confirmed, fetch_or_none


class _NamedBlob(VerdaProvider):
    """A Verda object that is a name plus one immutable text. Its name carries the workshop's tag:
    one found under it with another text (yesterday's key pair or tailnet key, a state lost) is
    deleted and made anew."""

    ownership = Ownership.NAMED

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

    def matches(self, obj: Any, props: dict[str, Any]) -> bool:
        return str(obj.public_key).strip() == str(props["public_key"]).strip()

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
