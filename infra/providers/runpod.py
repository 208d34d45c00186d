"""RunPod serverless: template, endpoint and network volume as dynamic providers over REST.

Each is a named object in a collection (``/templates``, ``/endpoints``, ``/networkvolumes``): found
by name before creating, changed in place with PATCH, deleted with the deletion confirmed by a 404.
"""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from typing import Any, ClassVar

from pulumi.runtime import rpc

from infra.providers.lifecycle import GrowOnly, Ownership, foreign_object, other_workshop, until_gone
from infra.providers.runpod_api import RunPodApi, RunPodError, RunPodProvider
from infra.providers.timing import Timing


class _Collection(RunPodProvider):
    collection: ClassVar[str]
    outputs: ClassVar[tuple[str, ...]] = ("remote_id",)
    # The fields RunPod shows back that ``body`` sends, and the input each comes from: one changed in
    # RunPod's console is a drift a refresh reports.
    shown: ClassVar[dict[str, str]] = {}

    @abstractmethod
    def body(self, props: dict[str, Any]) -> dict[str, Any]: ...

    def mine(self, obj: dict[str, Any], props: dict[str, Any]) -> bool:
        """Whether ``obj`` of the collection is the one ``props`` name."""
        return bool(obj.get("name") == props["name"])

    def find(self, api: RunPodApi, props: dict[str, Any]) -> Any | None:
        named = [obj for obj in api.call("GET", self.collection) if self.mine(obj, props)]
        return named[0] if named else None

    def make(self, api: RunPodApi, props: dict[str, Any]) -> Any:
        return api.call("POST", self.collection, self.body(props))

    def adopt(self, api: RunPodApi, props: dict[str, Any], obj: Any) -> Any:
        """One found under our name may be an earlier day's (a destroy that failed half-way): bring it
        to ``props``, or the state would claim values it does not have."""
        return self.change(api, str(obj["id"]), obj, props)

    def fetch(self, api: RunPodApi, id_: str, props: dict[str, Any]) -> Any | None:
        return api.get_or_none(f"{self.collection}/{id_}")

    def change(self, api: RunPodApi, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> Any:
        return api.call("PATCH", f"{self.collection}/{id_}", self.body(news))

    def remove(self, api: RunPodApi, props: dict[str, Any], obj: Any) -> None:
        path = f"{self.collection}/{obj['id']}"
        try:
            api.call("DELETE", path)
        except RunPodError as exc:
            if exc.status != 404:
                raise
        until_gone(
            f"{self.kind} {obj.get('name')!r}", lambda: api.get_or_none(path) is None, Timing.of(props)
        )

    def describe(self, obj: Any, props: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return str(obj["id"]), {"remote_id": str(obj["id"])}

    def drifted(self, obj: Any, props: dict[str, Any]) -> dict[str, Any]:
        wanted = self.body(props)
        return {
            key: obj[field]
            for field, key in self.shown.items()
            if field in obj and field in wanted and not _same(obj[field], wanted[field])
        }


def _same(remote: Any, wanted: Any) -> bool:
    """Whether RunPod's value is the one sent (a list in any order: RunPod may sort it)."""
    if isinstance(remote, list) and isinstance(wanted, list):
        return sorted(map(str, remote)) == sorted(map(str, wanted))
    return bool(remote == wanted)


class NetworkVolumeProvider(GrowOnly, _Collection):
    """``name``, ``size`` (GB), ``data_center`` -> a network volume (kept across workshops)."""

    kind = "RunPod network volume"
    collection = "/networkvolumes"
    required = ("name", "size", "data_center")
    replace_keys = frozenset({"data_center"})
    shown = {"size": "size"}

    place_key = "data_center"

    def size_of(self, obj: Any) -> int:
        return int(obj.get("size", 0))

    def elsewhere(self, api: RunPodApi, props: dict[str, Any]) -> list[tuple[str, int]]:
        return [
            (str(volume.get("dataCenterId")), self.size_of(volume))
            for volume in api.call("GET", self.collection)
            if volume.get("name") == props["name"] and volume.get("dataCenterId") != props["data_center"]
        ]

    def body(self, props: dict[str, Any]) -> dict[str, Any]:
        return {"name": props["name"], "size": int(props["size"]), "dataCenterId": props["data_center"]}

    def mine(self, obj: dict[str, Any], props: dict[str, Any]) -> bool:
        """Ours is the one of our name in our data center: one of that name elsewhere (where the pools
        were placed before) holds models too and is neither adopted nor deleted."""
        return super().mine(obj, props) and obj.get("dataCenterId") == props["data_center"]

    def adopt(self, api: RunPodApi, props: dict[str, Any], obj: Any) -> Any:
        """The volume an earlier day kept, grown when the config now asks for more (never shrunk)."""
        have = self.size_of(obj)
        return self._grown(api, obj["id"], props) if self.kept_size(props, have) > have else obj

    def change(self, api: RunPodApi, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> Any:
        self.kept_size(news, int(olds["size"]))
        return self._grown(api, id_, news)

    def _grown(self, api: RunPodApi, id_: str, props: dict[str, Any]) -> Any:
        return api.call(
            "PATCH", f"{self.collection}/{id_}", {"name": props["name"], "size": int(props["size"])}
        )


class RegistryAuthProvider(_Collection):
    """``name``, ``username``, ``password`` (secret) -> a container registry login for templates whose
    image is private. RunPod cannot change one in place, so any change makes a new one."""

    kind = "RunPod registry auth"
    collection = "/containerregistryauth"
    required = ("name", "username", "password")
    replace_keys = frozenset({"name", "username", "password"})
    ownership = Ownership.NAMED
    # RunPod refuses to delete a login a template still pulls with: the new one is made, the template
    # moved to it, and the old one deleted last. Its name at RunPod ends in its login's fingerprint
    # (``login_name``), so the two never share the name RunPod keeps unique.
    delete_before_replace = False

    def body(self, props: dict[str, Any]) -> dict[str, Any]:
        return {"name": login_name(props), "username": props["username"], "password": props["password"]}

    def mine(self, obj: dict[str, Any], props: dict[str, Any]) -> bool:
        """One found under our fingerprinted name holds our login (a failed create's, a lost state's):
        adopted. One of another login (yesterday's token) is not looked at: a template may use it."""
        return bool(obj.get("name") == login_name(props))


def login_name(props: dict[str, Any]) -> str:
    """A registry login's name at RunPod: ``name`` and 8 hex digits of a hash of it with the username
    and password, so each new token (or name) makes a login of a name of its own. The digits tell
    nothing the RunPod account does not: its templates can already pull with the login."""
    login = "\0".join(str(props[key]) for key in ("name", "username", "password"))
    return f"{props['name']}-{hashlib.sha256(login.encode()).hexdigest()[:8]}"


def login_name_shape(name: str) -> str:
    """What RunPod will call the registry login the program names ``name`` (``login_name``), its
    fingerprint shown as x's: as long as the real one, for the check of names' lengths at preview."""
    return f"{name}-{'x' * 8}"


class TemplateProvider(_Collection):
    """``name``, ``image``, ``env``, ``container_disk_gb``, ``registry_auth_id``, ``start_cmd`` -> a
    serverless template."""

    kind = "RunPod template"
    collection = "/templates"
    required = ("name", "image")
    shown = {"imageName": "image", "containerDiskInGb": "container_disk_gb", "env": "env"}
    ownership = Ownership.SHOWN

    def foreign(self, obj: Any, props: dict[str, Any]) -> str | None:
        """Template names are unique at RunPod: one whose workers call another queue manager serves
        another workshop of the same stack and pool names (and its endpoint with it)."""
        return other_workshop(self.kind, props["name"], obj.get("env"), props.get("env"))

    def body(self, props: dict[str, Any]) -> dict[str, Any]:
        body = {
            "name": props["name"],
            "imageName": props["image"],
            "isServerless": True,
            "containerDiskInGb": int(props.get("container_disk_gb") or 20),
            "volumeInGb": 0,
            "env": {k: str(v) for k, v in (props.get("env") or {}).items()},
        }
        if props.get("registry_auth_id"):
            body["containerRegistryAuthId"] = props["registry_auth_id"]
        if props.get("start_cmd"):
            body["dockerStartCmd"] = list(props["start_cmd"])
        return body


class EndpointProvider(_Collection):
    """``name``, ``template_id``, ``gpu_type_ids``, ``gpu_count``, ``workers_min``/``workers_max``,
    ``idle_timeout_s``, ``scaler_type``/``scaler_value``, ``network_volume_id``, ``flashboot``,
    ``execution_timeout_s``, ``data_center_ids`` -> a serverless endpoint taking ``/run`` jobs."""

    kind = "RunPod endpoint"
    collection = "/endpoints"
    outputs = ("remote_id", "endpoint_url")
    required = ("name", "template_id", "gpu_type_ids")
    ownership = Ownership.SHOWN
    shown = {
        "templateId": "template_id",
        "gpuTypeIds": "gpu_type_ids",
        "gpuCount": "gpu_count",
        "workersMin": "workers_min",
        "workersMax": "workers_max",
        "idleTimeout": "idle_timeout_s",
        "flashboot": "flashboot",
        "networkVolumeId": "network_volume_id",
    }

    def body(self, props: dict[str, Any]) -> dict[str, Any]:
        body = {
            "name": props["name"],
            "templateId": props["template_id"],
            "gpuTypeIds": list(props["gpu_type_ids"]),
            "gpuCount": int(props.get("gpu_count") or 1),
            "workersMin": int(props.get("workers_min") or 0),
            "workersMax": int(props.get("workers_max") or 1),
            "idleTimeout": int(props.get("idle_timeout_s") or 5),
            "scalerType": props.get("scaler_type") or "QUEUE_DELAY",
            "scalerValue": int(props.get("scaler_value") or 4),
            "flashboot": bool(props.get("flashboot", True)),
            "executionTimeoutMs": int(float(props.get("execution_timeout_s") or 3600) * 1000),
        }
        if props.get("network_volume_id"):
            body["networkVolumeId"] = props["network_volume_id"]
        if props.get("data_center_ids"):
            body["dataCenterIds"] = list(props["data_center_ids"])
        return body

    def foreign(self, obj: Any, props: dict[str, Any]) -> str | None:
        """An endpoint runs one template, and each workshop makes its own: one of our name running
        another template serves another workshop of the same stack and pool names."""
        theirs, ours = obj.get("templateId"), props.get("template_id")
        if not isinstance(ours, str) or ours == rpc.UNKNOWN or theirs in (None, ours):
            return None
        return foreign_object(
            self.kind, props["name"], f"it runs template {theirs}, this workshop's is {ours}"
        )

    def remove(self, api: RunPodApi, props: dict[str, Any], obj: Any) -> None:
        """RunPod deletes only an endpoint scaled to zero workers: scale it down first."""
        try:
            api.call("PATCH", f"{self.collection}/{obj['id']}", {"workersMin": 0, "workersMax": 0})
        except RunPodError as exc:
            if exc.status != 404:
                raise
        super().remove(api, props, obj)

    def describe(self, obj: Any, props: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return str(obj["id"]), {
            "remote_id": str(obj["id"]),
            "endpoint_url": f"https://api.runpod.ai/v2/{obj['id']}",
        }
