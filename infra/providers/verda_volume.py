"""Verda shared filesystem (``NVMe_Shared``): the models, mounted by instances and containers.

It outlives workshops: the pools declare it with ``retain_on_delete`` and the next morning's create
adopts the volume of the same name, models and all. It may grow in place, never shrink.
"""

from __future__ import annotations

from typing import Any

from infra.providers.lifecycle import GrowOnly, poll
from infra.providers.timing import Timing
from infra.providers.verda_api import VerdaProvider, delete_confirmed, fetch_or_none

SHARED = "NVMe_Shared"
SETTLED = frozenset({"detached", "attached"})


class SharedVolumeProvider(GrowOnly, VerdaProvider):
    """``name``, ``size`` (GB), ``location`` -> volume id and its mount commands."""

    kind = "Verda shared filesystem"
    required = ("name", "size", "location")
    replace_keys = frozenset({"name", "location"})
    outputs = ("volume_id", "mount_command", "pseudo_path", "fstab_command")

    place_key = "location"

    def size_of(self, obj: Any) -> int:
        return int(obj.size)

    def elsewhere(self, api: Any, props: dict[str, Any]) -> list[tuple[str, int]]:
        return [
            (volume.location, int(volume.size))
            for volume in api.volumes.get()
            if (volume.name, volume.type) == (props["name"], SHARED)
            and volume.location != props["location"]
            and volume.status not in ("deleted", "deleting")
        ]

    def find(self, api: Any, props: dict[str, Any]) -> Any | None:
        for volume in api.volumes.get():
            if (volume.name, volume.type, volume.location) == (props["name"], SHARED, props["location"]):
                return volume
        return None

    def make(self, api: Any, props: dict[str, Any]) -> Any:
        return api.volumes.create(SHARED, props["name"], int(props["size"]), location=props["location"])

    def adopt(self, api: Any, props: dict[str, Any], obj: Any) -> Any:
        """The volume an earlier day kept, grown when the config now asks for more (never shrunk)."""
        return self._grown(api, obj.id, int(obj.size), self.kept_size(props, int(obj.size)))

    def _grown(self, api: Any, id_: str, old: int, new: int) -> Any:
        if new > old:
            api.volumes.increase_size(id_, new)
        return api.volumes.get_by_id(id_)

    def settle(self, api: Any, props: dict[str, Any], obj: Any) -> Any:
        timing = Timing.of(props)
        return poll(
            f"{self.kind} {props['name']!r} becoming ready",
            lambda: self._ready(api, obj.id),
            timing.ready_timeout_s,
            timing.poll_interval_s,
        )

    def _ready(self, api: Any, id_: str) -> Any | None:
        volume = api.volumes.get_by_id(id_)
        return volume if volume.status in SETTLED else None

    def fetch(self, api: Any, id_: str, props: dict[str, Any]) -> Any | None:
        volume = fetch_or_none(api.volumes.get_by_id, id_)
        return None if volume is None or volume.status in ("deleted", "deleting") else volume

    def change(self, api: Any, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> Any:
        old = int(olds["size"])
        return self._grown(api, id_, old, self.kept_size(news, old))

    def remove(self, api: Any, props: dict[str, Any], obj: Any) -> None:
        delete_confirmed(
            f"{self.kind} {obj.name!r}",
            lambda: api.volumes.delete_by_id(obj.id, True),
            lambda: self.fetch(api, obj.id, props),
            Timing.of(props),
        )

    def drifted(self, obj: Any, props: dict[str, Any]) -> dict[str, Any]:
        """A size grown in the console: the next `up` asks for the config to follow (it cannot shrink)."""
        return {"size": obj.size} if int(obj.size) != int(props["size"]) else {}

    def describe(self, obj: Any, props: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return str(obj.id), {
            "volume_id": str(obj.id),
            "mount_command": obj.mount_command or "",
            "pseudo_path": obj.pseudo_path or "",
            "fstab_command": obj.filesystem_to_fstab_command or "",
        }
