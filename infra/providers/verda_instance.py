"""Verda GPU instances (H100 and friends): the billable resource, handled with the most care.

The hostname is the deterministic name: before creating, an instance of that hostname is looked up
and adopted when it matches (a create that went through although the call failed), or deleted when
it does not. A create that ends in an error, an ``error`` status or a boot that never finishes
deletes the instance and its OS volume and waits for Verda to confirm. Deleting keeps the shared
filesystem: only the OS volume is passed for permanent deletion.
"""

from __future__ import annotations

from typing import Any

from pulumi.dynamic import CheckResult
from pulumi.runtime import rpc
from verda.constants import Actions, InstanceStatus

from infra.providers.lifecycle import Ownership, ProviderError, foreign_object, poll
from infra.providers.timing import Timing
from infra.providers.verda_api import VerdaProvider, delete_confirmed, fetch_or_none

GONE = frozenset({"deleting", "deleted", "discontinued"})
# The statuses of an instance on its way to "running"; any other one will not get there by waiting.
BOOTING = frozenset({InstanceStatus.ORDERED, InstanceStatus.PROVISIONING, "new", "validating"})
DEFAULT_IMAGE = "ubuntu-24.04-cuda-12.8-open-docker"
# What the instance is made of: a change means a new instance. ``setup_digest`` stands for what the
# startup script does; the script's id may change without it (a renewed tailnet key in the script
# matters only to instances created later), so ``startup_script_id`` is only recorded in place. So are
# ``ssh_key_ids``: an instance reads its keys at first boot only, and the pool's key, deleted in the
# console and made again, gets a new id for the same public key.
SPEC_KEYS = (
    "name",
    "instance_type",
    "image",
    "location",
    "is_spot",
    "setup_digest",
    "existing_volumes",
    "os_volume_size",
    "description",
)
# What a refresh records for an instance Verda reports in error: no input, so always a change, and
# one that replaces it.
BROKEN = "broken"
# Stopped in Verda's console, and the action that brings each back.
STOPPED = {InstanceStatus.OFFLINE: Actions.START, InstanceStatus.HIBERNATING: Actions.RESTORE}
# The statuses of a stopped instance on its way back to "running".
RESUMING = BOOTING | frozenset({*STOPPED, InstanceStatus.RESTORING, "starting"})
# What Verda must have free for a new instance.
MACHINE_KEYS = frozenset({"instance_type", "location", "is_spot"})
# The workshop's tag (``infra.pools.base.workshop_tag``) is written into the description at create,
# after this mark: an instance found under our name carrying it is this workshop's. It is read at
# create only, never a change: a running instance (made without it by the last release) stays.
TAG_MARK = "workshop "


class InstanceProvider(VerdaProvider):
    """``name`` (hostname), ``instance_type``, ``location``, ``is_spot``, ``ssh_key_ids``,
    ``startup_script_id``, ``setup_digest`` (of the script, less the secrets that may rotate),
    ``existing_volumes`` (shared filesystems), ``os_volume_size`` (GB)."""

    kind = "Verda instance"
    required = ("name", "instance_type", "location")
    replace_keys = frozenset({*SPEC_KEYS, BROKEN})
    outputs = ("instance_id", "ip", "status", "os_volume_id", "price_per_hour")
    ownership = Ownership.SHOWN
    # ``worker_files``: the worker env lines that say where its workers store participants' files
    # (this workshop's bucket at its R2 account), which prove an untagged instance ours.
    checked_only = frozenset({"workshop_tag", "worker_files"})

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        """Also, at preview: the instance type is one Verda has, and no other stack's instance has our
        name."""
        return self.check_offered(
            super().check(_olds, news),
            "instance_type",
            lambda api: (t.instance_type for t in api.instance_types.get()),
            "set the pool's instanceType in comfy-workshop:pools",
        )

    def find(self, api: Any, props: dict[str, Any]) -> Any | None:
        mine = [i for i in api.instances.get() if i.hostname == props["name"] and i.status not in GONE]
        if not mine:
            return None
        found = mine[0]
        found.stores_our_files = _untagged(found) and _stores_our_files(api, found, props)
        return found

    def foreign(self, obj: Any, props: dict[str, Any]) -> str | None:
        """Made with other SSH keys than the pool's (each stack makes its own key) and without this
        workshop's tag in its description: another workshop in the same Verda account whose stack and
        pool have the same names as this one's. With the tag it is this workshop's, left by a lost state
        (its key pair is made anew): ``matches`` refuses it, so the create deletes it and makes anew.
        So is one made before the tag (no tag at all) whose startup script stores participants' files
        in this workshop's bucket (``find`` reads it): no other workshop writes there."""
        if rpc.UNKNOWN in _key_ids(props.get("ssh_key_ids")) or _same_keys(obj, props) or _tagged(obj, props):
            return None
        if getattr(obj, "stores_our_files", False):
            return None
        return foreign_object(self.kind, props["name"], "it has other SSH keys") + _how_to_check(obj, props)

    def matches(self, obj: Any, props: dict[str, Any]) -> bool:
        """Of the machine asked for, running or on its way, and made with the pool's SSH keys: a leftover
        of a lost state (other keys) has workers holding yesterday's worker token and tailnet key. The
        instance a timed-out create's own request made has the keys this create sends: adopted."""
        wanted = (props["instance_type"], props["location"], bool(props.get("is_spot")))
        machine = (obj.instance_type, obj.location, bool(obj.is_spot))
        return machine == wanted and obj.status != "error" and _same_keys(obj, props)

    def make(self, api: Any, props: dict[str, Any]) -> Any:
        self._require_capacity(api, props)
        return api.instances.create(
            instance_type=props["instance_type"],
            image=props.get("image") or DEFAULT_IMAGE,
            hostname=props["name"],
            description=_description(props),
            ssh_key_ids=list(props.get("ssh_key_ids") or []),
            location=props["location"],
            startup_script_id=props.get("startup_script_id") or None,
            existing_volumes=list(props.get("existing_volumes") or []),
            os_volume=_os_volume(props),
            is_spot=bool(props.get("is_spot")),
            wait_for_status=None,
        )

    def _require_capacity(self, api: Any, props: dict[str, Any], before: str = "") -> None:
        spot = bool(props.get("is_spot"))
        if not api.instances.is_available(props["instance_type"], spot, props["location"]):
            kind = "spot" if spot else "on-demand"
            where = f"{props['instance_type']} free in {props['location']}"
            raise ProviderError(
                f"Verda has no {kind} {where} right now{before}: "
                "try another location, the other of spot/on-demand, or later."
            )

    def can_replace(self, news: dict[str, Any], replaces: list[str]) -> None:
        """A new machine (type, location, spot) must be free before the engine deletes the running
        one: the replacement takes its hostname, so it is made only after the old one is gone. The
        same machine is not checked: the deleted instance frees it."""
        if not MACHINE_KEYS & set(replaces) or any(news.get(key) == rpc.UNKNOWN for key in MACHINE_KEYS):
            return
        api = self.guarded(news, lambda: self.connect(news))
        before = f", so {news['name']!r} keeps its current machine (pulumi up would delete it first)"
        self.guarded(news, lambda: self._require_capacity(api, news, before))

    def settle(self, api: Any, props: dict[str, Any], obj: Any) -> Any:
        advice = "Run `pulumi up` again, or pick another location or instance type."
        return self._until_running(api, obj.id, props, BOOTING, advice)

    def change(self, api: Any, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> Any:
        """In place: ``startup_script_id`` and ``ssh_key_ids`` (read at first boot only: nothing to
        send), and an instance a refresh found stopped is started again."""
        instance = api.instances.get_by_id(id_)
        if instance.status not in STOPPED:
            return instance
        api.instances.action(id_, STOPPED[instance.status])
        advice = "Delete it in Verda's console, then `pulumi refresh` and `pulumi up` make a new one."
        return self._until_running(api, id_, news, RESUMING, advice)

    def _until_running(
        self, api: Any, id_: str, props: dict[str, Any], waiting: frozenset[str], advice: str
    ) -> Any:
        """Poll until the instance runs; a status outside ``waiting`` will not get there: fail at once."""

        def running() -> Any | None:
            instance = api.instances.get_by_id(id_)
            if instance.status == InstanceStatus.RUNNING:
                return instance
            if instance.status not in waiting:
                raise ProviderError(
                    f"{self.kind} {props['name']!r} went to status {instance.status!r} instead of "
                    f"'running'. {advice}"
                )
            return None

        timing = Timing.of(props)
        what = f"{self.kind} {props['name']!r} reaching 'running'"
        return poll(what, running, timing.ready_timeout_s, timing.poll_interval_s)

    def drifted(self, obj: Any, props: dict[str, Any]) -> dict[str, Any]:
        """Shut down or hibernated in the console: a pool without its GPU. ``stopped`` is no input, so
        the next `up` sees it as a change, and its update starts the instance again. In ``error`` (a
        failed host) nothing brings it back: ``broken`` is a replace key, so that `up` makes a new one."""
        if obj.status == InstanceStatus.ERROR:
            return {BROKEN: obj.status}
        return {"stopped": obj.status} if obj.status in STOPPED else {}

    def fetch(self, api: Any, id_: str, props: dict[str, Any]) -> Any | None:
        instance = fetch_or_none(api.instances.get_by_id, id_)
        return None if instance is None or instance.status in GONE else instance

    def remove(self, api: Any, props: dict[str, Any], obj: Any) -> None:
        os_volumes = [obj.os_volume_id] if obj.os_volume_id else None
        delete_confirmed(
            f"{self.kind} {obj.hostname!r}",
            lambda: api.instances.action(obj.id, Actions.DELETE, os_volumes, bool(os_volumes)),
            lambda: self.fetch(api, obj.id, props),
            Timing.of(props),
        )
        for volume in api.volumes.get():
            if volume.name == os_volume_name(props["name"]) and volume.is_os_volume and _alive(volume):
                self._remove_os_volume(api, props, volume)

    def _remove_os_volume(self, api: Any, props: dict[str, Any], volume: Any) -> None:
        """An instance deleted before it had an OS volume id may leave that volume behind."""
        delete_confirmed(
            f"OS volume {volume.name!r}",
            lambda: api.volumes.delete_by_id(volume.id, True),
            lambda: _alive(fetch_or_none(api.volumes.get_by_id, volume.id)),
            Timing.of(props),
        )

    def describe(self, obj: Any, props: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return str(obj.id), {
            "instance_id": str(obj.id),
            "ip": obj.ip or "",
            "status": obj.status,
            "os_volume_id": obj.os_volume_id or "",
            "price_per_hour": float(obj.price_per_hour or 0.0),
        }


def _key_ids(ids: Any) -> list[str]:
    return sorted(map(str, ids or []))


def _same_keys(obj: Any, props: dict[str, Any]) -> bool:
    return _key_ids(obj.ssh_key_ids) == _key_ids(props.get("ssh_key_ids"))


def _description(props: dict[str, Any]) -> str:
    """What the instance is, and the workshop's tag after ``TAG_MARK`` when the pool gives it."""
    text = props.get("description") or f"comfy-workshop {props['name']}"
    tag = props.get("workshop_tag")
    return f"{text} ({TAG_MARK}{tag})" if tag else text


def _tagged(obj: Any, props: dict[str, Any]) -> bool:
    """Whether ``obj`` carries this workshop's tag (``props`` without one: the last release's)."""
    tag = props.get("workshop_tag")
    return bool(tag) and tag != rpc.UNKNOWN and f"({TAG_MARK}{tag})" in str(obj.description or "")


def _untagged(obj: Any) -> bool:
    """Whether ``obj`` carries no workshop's tag at all (made before the tag, by the last release)."""
    return f"({TAG_MARK}" not in str(obj.description or "")


def _file_lines(props: dict[str, Any]) -> list[str]:
    """The worker env lines (``KEY=value``) that say where this workshop's workers store files."""
    files = props.get("worker_files")
    if not isinstance(files, dict) or rpc.UNKNOWN in files.values():
        return []
    return [f"{key}={value}" for key, value in sorted(files.items())]


def _stores_our_files(api: Any, obj: Any, props: dict[str, Any]) -> bool:
    """Whether ``obj``'s startup script (still at Verda) writes every line of ``_file_lines``."""
    wanted = _file_lines(props)
    script = (
        fetch_or_none(api.startup_scripts.get_by_id, obj.startup_script_id) if obj.startup_script_id else None
    )
    return bool(wanted) and script is not None and set(wanted) <= set(str(script.script).splitlines())


def _how_to_check(obj: Any, props: dict[str, Any]) -> str:
    """For an untagged instance: how the organizer tells whether it is this workshop's."""
    if not _untagged(obj):
        return ""
    lines = " and ".join(_file_lines(props)) or "this workshop's files bucket"
    return (
        f" It carries no workshop tag (made before this release): it is this workshop's if its startup "
        f"script (Verda console, the instance's startup script {obj.startup_script_id or '(none left)'}) "
        f"writes {lines}; then delete it in Verda's console with its OS volume "
        f"({os_volume_name(props['name'])}) and run `pulumi up` again."
    )


def _os_volume(props: dict[str, Any]) -> dict[str, Any]:
    """The OS disk; a reclaimed spot instance takes it along instead of leaving a billed volume."""
    volume: dict[str, Any] = {
        "name": os_volume_name(props["name"]),
        "size": int(props.get("os_volume_size") or 100),
    }
    if props.get("is_spot"):
        volume["on_spot_discontinue"] = "delete_permanently"
    return volume


def os_volume_name(hostname: str) -> str:
    """The name of the OS volume of the instance named ``hostname``."""
    return f"{hostname}-os"


def _alive(volume: Any | None) -> Any | None:
    return None if volume is None or volume.status in GONE else volume
