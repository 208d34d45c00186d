"""The routes of the Verda double: what each endpoint does to the in-memory state.

Field names follow the ``verda`` SDK's dataclasses (``Instance``, ``Volume``, ``Deployment``...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.infra.providers.verda_double import Answer, VerdaDouble

NOT_FOUND = 404, {"code": "not_found", "message": "not found"}
STAMP = "2026-11-24T08:00:00Z"


def token(d: VerdaDouble, body: Any, q: Any) -> Answer:
    if body.get("grant_type") == "client_credentials" and body.get("client_secret") != d.client_secret:
        return 401, {"code": "unauthorized_request", "message": "Invalid client credentials"}
    return 200, {
        "access_token": "at", "refresh_token": "rt", "scope": "cloud-api-v1",
        "token_type": "Bearer", "expires_in": 3600,
    }  # fmt: skip


# --- instances ------------------------------------------------------------------------------
def list_instances(d: VerdaDouble, body: Any, q: Any) -> Answer:
    return 200, [i for i in d.instances.values() if i["status"] != "deleted"]


def create_instance(d: VerdaDouble, body: Any, q: Any) -> Answer:
    id_ = d.new_id("inst")
    os_volume = body.get("os_volume") or {"name": f"{body['hostname']}-os", "size": 50}
    d.instances[id_] = {
        "id": id_, "instance_type": body["instance_type"], "price_per_hour": 2.29,
        "hostname": body["hostname"], "description": body["description"], "status": d.boot[0],
        "created_at": STAMP, "ssh_key_ids": body["ssh_key_ids"], "cpu": {}, "gpu": {}, "memory": {},
        "storage": {}, "gpu_memory": {}, "ip": None, "os_volume_id": None,
        "location": body["location_code"], "image": body["image"],
        "startup_script_id": body["startup_script_id"], "is_spot": body["is_spot"],
        "_boot": 0, "_os_volume": os_volume, "_volumes": body.get("existing_volumes", []),
    }  # fmt: skip
    return 202, id_


def get_instance(d: VerdaDouble, body: Any, q: Any, id_: str) -> Answer:
    inst = d.instances.get(id_)
    if inst is None or inst["status"] == "deleted":
        return NOT_FOUND
    _advance(d, inst)
    return 200, inst


def _advance(d: VerdaDouble, inst: dict[str, Any]) -> None:
    if inst["status"] in ("deleting", "starting"):
        inst["status"] = {"deleting": "deleted", "starting": "running"}[inst["status"]]
        return
    if inst["_boot"] + 1 < len(d.boot):
        inst["_boot"] += 1
        inst["status"] = d.boot[inst["_boot"]]
    if inst["status"] in ("provisioning", "running") and inst["os_volume_id"] is None:
        vol = _new_volume(d, inst["_os_volume"]["name"], inst["_os_volume"]["size"], "NVMe", inst["location"])
        vol.update(is_os_volume=True, status="attached", instance_id=inst["id"])
        inst["os_volume_id"], inst["ip"] = vol["id"], "203.0.113.7"


def instance_action(d: VerdaDouble, body: Any, q: Any) -> Answer:
    ids = body["id"] if isinstance(body["id"], list) else [body["id"]]
    for id_ in ids:
        inst = d.instances.get(id_)
        if inst is None or inst["status"] == "deleted":
            return NOT_FOUND
        if body["action"] == "start" and inst["status"] == "offline":
            inst["status"] = "starting"
        if body["action"] == "delete":
            inst["status"] = "deleting"
            for vol_id in body.get("volume_ids") or []:
                if body.get("delete_permanently"):
                    d.volumes[vol_id]["status"] = "deleted"
    return 202, ""


def availability(d: VerdaDouble, body: Any, q: Any, instance_type: str) -> Answer:
    return 200, instance_type not in d.unavailable


# --- volumes --------------------------------------------------------------------------------
def _new_volume(d: VerdaDouble, name: str, size: int, type_: str, location: str) -> dict[str, Any]:
    id_ = d.new_id("vol")
    d.volumes[id_] = {
        "id": id_, "status": "ordered", "name": name, "size": size, "type": type_,
        "is_os_volume": False, "created_at": STAMP, "location": location, "instance_id": None,
        "pseudo_path": f"/{name}",
        "mount_command": f"mount -t nfs nfs.fin-03.verda.internal:/{name} /mnt/{name}",
        "filesystem_to_fstab_command": f"echo 'nfs:/{name} /mnt/{name} nfs defaults 0 0' >> /etc/fstab",
    }  # fmt: skip
    return d.volumes[id_]


def list_volumes(d: VerdaDouble, body: Any, q: Any) -> Answer:
    return 200, [v for v in d.volumes.values() if v["status"] != "deleted"]


def create_volume(d: VerdaDouble, body: Any, q: Any) -> Answer:
    return 202, _new_volume(d, body["name"], body["size"], body["type"], body["location_code"])["id"]


def get_volume(d: VerdaDouble, body: Any, q: Any, id_: str) -> Answer:
    vol = d.volumes.get(id_)
    if vol is None or vol["status"] == "deleted":
        return NOT_FOUND
    if vol["status"] == "ordered":
        vol["status"] = "detached"
    return 200, vol


def delete_volume(d: VerdaDouble, body: Any, q: Any, id_: str) -> Answer:
    vol = d.volumes.get(id_)
    if vol is None or vol["status"] == "deleted":
        return NOT_FOUND
    vol["status"] = "deleted"
    return 202, ""


def volume_action(d: VerdaDouble, body: Any, q: Any) -> Answer:
    vol = d.volumes.get(body["id"] if isinstance(body["id"], str) else body["id"][0])
    if vol is None:
        return NOT_FOUND
    if body["action"] == "resize":
        vol["size"] = body["size"]
    return 202, ""


# --- ssh keys and startup scripts -----------------------------------------------------------
def _blob_routes(path: str, store: str, field: str) -> list[tuple[str, str, Any]]:
    def listing(d: VerdaDouble, body: Any, q: Any) -> Answer:
        return 200, list(getattr(d, store).values())

    def create(d: VerdaDouble, body: Any, q: Any) -> Answer:
        id_ = d.new_id(store)
        getattr(d, store)[id_] = {"id": id_, "name": body["name"], field: body[field]}
        return 201, id_

    def get(d: VerdaDouble, body: Any, q: Any, id_: str) -> Answer:
        found = getattr(d, store).get(id_)
        return (200, [found]) if found else NOT_FOUND

    def delete(d: VerdaDouble, body: Any, q: Any, id_: str) -> Answer:
        return (200, "") if getattr(d, store).pop(id_, None) else NOT_FOUND

    return [
        ("GET", path, listing), ("POST", path, create),
        ("GET", path + "/([^/]+)", get), ("DELETE", path + "/([^/]+)", delete),
    ]  # fmt: skip


# --- serverless containers ------------------------------------------------------------------
def list_deployments(d: VerdaDouble, body: Any, q: Any) -> Answer:
    return 200, list(d.deployments.values())


def create_deployment(d: VerdaDouble, body: Any, q: Any) -> Answer:
    if body["name"] in d.deployments:
        return 400, {"code": "invalid_request", "message": "deployment name already exists"}
    dep = {**body, "endpoint_base_url": f"https://containers.verda.test/{body['name']}", "created_at": STAMP}
    d.deployments[body["name"]] = dep
    return 200, dep


def get_deployment(d: VerdaDouble, body: Any, q: Any, name: str) -> Answer:
    return (200, d.deployments[name]) if name in d.deployments else NOT_FOUND


def patch_deployment(d: VerdaDouble, body: Any, q: Any, name: str) -> Answer:
    if name not in d.deployments:
        return NOT_FOUND
    d.deployments[name].update({k: v for k, v in body.items() if v is not None and k != "name"})
    return 200, d.deployments[name]


def delete_deployment(d: VerdaDouble, body: Any, q: Any, name: str) -> Answer:
    return (200, "") if d.deployments.pop(name, None) else NOT_FOUND


def deployment_status(d: VerdaDouble, body: Any, q: Any, name: str) -> Answer:
    return (200, {"status": "healthy"}) if name in d.deployments else NOT_FOUND


def _named_routes(path: str, store: str, kind: str) -> list[tuple[str, str, Any]]:
    def listing(d: VerdaDouble, body: Any, q: Any) -> Answer:
        return 200, [{"name": n, "created_at": STAMP, **v["_shown"]} for n, v in getattr(d, store).items()]

    def create(d: VerdaDouble, body: Any, q: Any) -> Answer:
        if body["name"] in getattr(d, store):
            return 400, {"code": "invalid_request", "message": f"{kind} already exists"}
        shown = {"secret_type": "generic"} if store == "secrets" else {}
        getattr(d, store)[body["name"]] = {"_body": body, "_shown": shown}
        return 201, ""

    def delete(d: VerdaDouble, body: Any, q: Any, name: str) -> Answer:
        return (200, "") if getattr(d, store).pop(name, None) else NOT_FOUND

    return [("GET", path, listing), ("POST", path, create), ("DELETE", path + "/([^/]+)", delete)]


# The instance types the tests name; the SDK reads every field of each.
INSTANCE_TYPES = ("1H100.80S.30V", "2H100.80S.60V", "1A100.22V")


def instance_types(d: VerdaDouble, body: Any, q: Any) -> Answer:
    fields = ("description", "cpu", "gpu", "memory", "gpu_memory", "storage", "best_for", "model", "name")
    return 200, [
        {
            "id": f"it-{index}", "instance_type": name, "price_per_hour": 2.29, "spot_price": 1.15,
            **dict.fromkeys(fields, ""), "p2p": "", "currency": "usd", "manufacturer": "NVIDIA",
            "display_name": name, "supported_os": ["ubuntu-24.04-cuda-12.8-open-docker"],
        }
        for index, name in enumerate(INSTANCE_TYPES)
    ]  # fmt: skip


def compute_resources(d: VerdaDouble, body: Any, q: Any) -> Answer:
    return 200, [
        {"name": "H100", "size": 1, "is_available": True},
        {"name": "RTX 4500 Ada", "size": 1, "is_available": True},
    ]


ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/oauth2/token", token),
    ("GET", "/instances", list_instances),
    ("GET", "/instance-types", instance_types),
    ("POST", "/instances", create_instance),
    ("PUT", "/instances", instance_action),
    ("GET", "/instances/([^/]+)", get_instance),
    ("GET", "/instance-availability/([^/]+)", availability),
    ("GET", "/volumes", list_volumes),
    ("POST", "/volumes", create_volume),
    ("PUT", "/volumes", volume_action),
    ("GET", "/volumes/([^/]+)", get_volume),
    ("DELETE", "/volumes/([^/]+)", delete_volume),
    *_blob_routes("/sshkeys", "ssh_keys", "key"),
    *_blob_routes("/scripts", "scripts", "script"),
    ("GET", "/container-deployments", list_deployments),
    ("POST", "/container-deployments", create_deployment),
    ("GET", "/container-deployments/([^/]+)", get_deployment),
    ("PATCH", "/container-deployments/([^/]+)", patch_deployment),
    ("DELETE", "/container-deployments/([^/]+)", delete_deployment),
    ("GET", "/container-deployments/([^/]+)/status", deployment_status),
    *_named_routes("/secrets", "secrets", "secret"),
    *_named_routes("/container-registry-credentials", "registry_credentials", "credentials"),
    ("GET", "/serverless-compute-resources", compute_resources),
]
