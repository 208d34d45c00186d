"""The evening and the morning: everything a participant sees survives the destroy and the up.

A platform is filled through its API (two participants: queued, running and finished jobs,
outputs, uploads, saved workflows and templates, settings, hidden history, queue places). Then the
destroy's own step runs (the QueueKeeper's command: ``infra/templates/drain.sh``), Redis is wiped,
a new queue manager starts and the up's own step runs (``restore.sh``). Every answer each
participant got in the evening is asked again in the morning. ``docker`` is a shim that runs the
``docker exec`` command here, with the queue manager's settings; the files directory stands for the
vault's bucket, which the destroy keeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis
from pydantic import SecretStr

from devkit.doubles.comfyui_nodes import catalogue
from infra.queue_keeper import script_command
from services.protocol.jobs import OutputFile
from services.protocol.workers import Completion, Lease
from services.queue_manager.keys import family_of
from services.queue_manager.settings import Settings
from services.queue_manager.snapshot import CHECKSUM_KEY
from tests.support.queue_manager_app import (
    ADMIN,
    ADMIN_PASSWORD,
    POOL,
    WORKER_AUTH,
    live_server,
    login,
    register_worker,
    settings_for,
)

GRAPH: dict[str, Any] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "night"}},
}
USERS = ("alice", "bob")
pytestmark = pytest.mark.slow
CONTAINER = "comfy-workshop-queue-manager"


def day_settings(redis_url: str) -> Settings:
    """The night's running job keeps its lease while the (slow) evening steps run."""
    return settings_for(redis_url, lease_seconds=600)


@pytest.fixture(scope="session")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the container's stand-in Python keeps the bytecode it compiles, for every step after."""
    return tmp_path_factory.mktemp("bytecode")


@pytest.fixture
def docker_shim(tmp_path: Path, compiled: Path) -> Path:
    """``docker inspect`` says the container exists; ``docker exec [-i] <c> cmd...`` runs cmd here,
    with its Python's modules compiled once, as the image's are (``UV_COMPILE_BYTECODE``): each step
    is a new process, and compiling the queue manager's imports again in each (with
    ``PYTHONDONTWRITEBYTECODE`` set) took two thirds of its CPU."""
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python").write_text(
        f'#!/bin/sh\nunset PYTHONDONTWRITEBYTECODE\nexport PYTHONPYCACHEPREFIX="{compiled}"\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    (shim / "python").chmod(0o755)
    docker = shim / "docker"
    docker.write_text(
        '#!/bin/sh\ncase "$1" in\n  inspect) exit 0 ;;\n'
        '  exec) shift; while [ "${1#-}" != "$1" ]; do shift; done; shift; exec "$@" ;;\nesac\nexit 1\n'
    )
    docker.chmod(0o755)
    return shim


def keeper_step(
    which: str,
    redis_url: str,
    bucket: Path,
    shim: Path,
    participants: tuple[str, ...] = USERS,
    pools: tuple[str, ...] = (POOL,),
) -> subprocess.CompletedProcess[str]:
    """Run the QueueKeeper's own create (restore) or delete (drain) command, with the settings the
    queue manager's container has (its participants and pools among them)."""
    command = (
        script_command("drain.sh", CONTAINER, "1")
        if which == "drain"
        else script_command("restore.sh", CONTAINER)
    )
    env = {
        **os.environ,
        "PATH": f"{shim}:{os.environ['PATH']}",
        "QM_ENV": "development",
        "QM_REDIS_URL": redis_url,
        "QM_FILES_URL": bucket.as_uri(),
        "QM_PARTICIPANTS": json.dumps({user: f"{user}-pw" for user in participants}),
        "QM_WORKER_TOKENS": json.dumps({pool: f"{pool}-token" for pool in pools}),
    }
    return subprocess.run(
        ["sh", "-c", command], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_evening_and_morning_steps_start_without_the_web_app() -> None:
    """Each step (``cli drain``, ``save``, ``load``) is a new process on the server: building the web
    app's routes on import cost each one more CPU than everything else it imports, for nothing."""
    web = "{'fastapi', 'services.queue_manager.main'}"
    code = f"import sys, services.queue_manager.cli; print(sorted({web} & set(sys.modules)))"
    imported = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert imported.stdout.strip() == "[]"


def claim(worker: httpx.Client) -> Lease:
    reply = worker.post("/api/workers/w1/claim", params={"wait": 5}, headers=WORKER_AUTH)
    assert reply.status_code == 200, reply.text
    return Lease.model_validate(reply.json())


def finish(worker: httpx.Client, bucket: Path, user: str, name: str) -> str:
    """The next job runs on the worker and writes one output into the user files."""
    lease = claim(worker)
    assert lease.job.user == user
    (bucket / "users" / user / "output").mkdir(parents=True, exist_ok=True)
    (bucket / "users" / user / "output" / name).write_bytes(f"PNG of {user}".encode())
    output = OutputFile(node_id="2", kind="images", filename=name, type="output")
    done = Completion(token=lease.token, outputs=[output]).model_dump(mode="json")
    worker.post(f"/api/leases/{lease.job.id}/complete", json=done, headers=WORKER_AUTH).raise_for_status()
    return lease.job.id


def queue(client: httpx.Client, user: str) -> str:
    reply = client.post(f"/w/{user}/api/prompt", json={"prompt": GRAPH, "client_id": "tab"})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["prompt_id"])


def personal_data(client: httpx.Client, user: str) -> None:
    """Uploads, saved workflows, node templates and settings of one participant."""
    upload = client.post(
        f"/w/{user}/api/upload/image", files={"image": ("in.png", user.encode(), "image/png")}
    )
    assert upload.status_code == 200, upload.text
    for path, body in {
        "workflows/portrait.json": b'{"nodes": [], "by": "%s"}' % user.encode(),
        "comfy.templates.json": b'[{"name": "mine"}]',
    }.items():
        saved = client.post(f"/w/{user}/api/userdata/{path.replace('/', '%2F')}", content=body)
        assert saved.status_code == 200, saved.text
    client.post(f"/w/{user}/api/settings/Comfy.ColorPalette", json=f"{user}-palette").raise_for_status()


def fill(server_url: str, bucket: Path) -> dict[str, httpx.Client]:
    """Two participants' day; returns their logged-in clients. Bob's last job runs at night."""
    clients = {user: login(httpx.Client(base_url=server_url, timeout=20), user) for user in USERS}
    worker = httpx.Client(base_url=server_url, timeout=20)
    register_worker(worker, catalogue(["in.png"]))
    alice, bob = clients["alice"], clients["bob"]
    for user, client in clients.items():
        personal_data(client, user)
    queue(alice, "alice")
    finish(worker, bucket, "alice", "night_00001_.png")
    queue(alice, "alice")
    hidden = finish(worker, bucket, "alice", "night_00002_.png")
    alice.post("/w/alice/api/history", json={"delete": [hidden]}).raise_for_status()
    queue(bob, "bob")
    finish(worker, bucket, "bob", "night_00001_.png")
    queue(bob, "bob")
    assert claim(worker).job.user == "bob"  # running when the evening comes; its worker is gone
    for user in ("alice", "bob", "alice", "alice"):
        queue(clients[user], user)
    admin = login(httpx.Client(base_url=server_url, timeout=20), ADMIN, ADMIN_PASSWORD)
    admin.post("/api/admin/users/bob/priority", json={"priority": 2}).raise_for_status()
    admin.close()
    worker.close()
    return clients


def answers(client: httpx.Client, user: str) -> dict[str, Any]:
    """What the participant's workspace and API show."""
    base = f"/w/{user}/api"
    got: dict[str, Any] = {}
    for route in (
        "/history?max_items=64",
        "/settings",
        "/userdata?dir=workflows&recurse=true&full_info=true",
        "/userdata/workflows%2Fportrait.json",
        "/userdata/comfy.templates.json",
        "/view?filename=in.png&type=input",
        "/view?filename=night_00001_.png&type=output",
        "/object_info",
        "/queue",
        "/prompt",
    ):
        reply = client.get(base + route)
        assert reply.status_code == 200, (route, reply.text)
        got[route] = reply.json() if "json" in reply.headers.get("content-type", "") else reply.content
    got["/api/jobs"] = client.get("/api/jobs").json()
    return got


def interrupted_moves_to_the_front(evening: dict[str, Any]) -> dict[str, Any]:
    """The morning's expected answers: a job running at night waits at the head of the queue,
    its interrupted attempt not counted."""
    panel = evening["/queue"]
    running = {item[1] for item in panel["queue_running"]}
    requeued = {"state": "queued", "worker_id": None, "attempts": 0}  # as a released job: started_at kept
    return {
        **evening,
        "/queue": {"queue_running": [], "queue_pending": panel["queue_running"] + panel["queue_pending"]},
        "/api/jobs": [{**job, **requeued} if job["id"] in running else job for job in evening["/api/jobs"]],
    }


def comparable(answers_: dict[str, Any]) -> dict[str, Any]:
    """Queue panel entries carry their place number; compare ids in order."""
    panel = answers_["/queue"]
    return {
        **answers_,
        "/queue": {name: [item[1] for item in items] for name, items in panel.items()},
        "/api/jobs": {job["id"]: job for job in answers_["/api/jobs"]},
    }


@pytest.fixture
def bucket(tmp_path: Path) -> Path:
    return tmp_path / "bucket"


def saved_snapshot(bucket: Path) -> Path:
    """The snapshot the vault's checksum file names (the last evening's)."""
    return bucket / "snapshots" / (bucket / CHECKSUM_KEY).read_text().split()[1]


def test_everything_a_participant_sees_survives_the_night(
    redis_url: str, bucket: Path, docker_shim: Path
) -> None:
    with live_server(day_settings(redis_url), bucket) as evening_server:
        clients = fill(evening_server.url, bucket)
        drained = keeper_step("drain", redis_url, bucket, docker_shim)
        assert drained.returncode == 0, drained.stderr
        evening = {user: answers(client, user) for user, client in clients.items()}
        for client in clients.values():
            client.close()
    assert bob_runs_at_night(evening["bob"])
    redis.Redis.from_url(redis_url).flushall()  # the destroy deletes Redis and its volume

    with live_server(day_settings(redis_url), bucket) as morning_server:
        restored = keeper_step("restore", redis_url, bucket, docker_shim)
        assert restored.returncode == 0, restored.stderr
        assert "restored 8 jobs" in restored.stdout
        for user in USERS:
            with httpx.Client(base_url=morning_server.url, timeout=20) as client:
                morning = answers(login(client, user), user)
            expected = comparable(interrupted_moves_to_the_front(evening[user]))
            for route, answer in comparable(morning).items():
                assert answer == expected[route], (user, route)


def bob_runs_at_night(bob: dict[str, Any]) -> bool:
    return len(bob["/queue"]["queue_running"]) == 1


def test_every_key_the_api_writes_is_declared_in_keys_py(redis_url: str, bucket: Path) -> None:
    with live_server(day_settings(redis_url), bucket) as server:
        clients = fill(server.url, bucket)
        more_of_the_day(server.url, clients["alice"])
        for client in clients.values():
            client.close()
        keys = [key.decode() for key in redis.Redis.from_url(redis_url).scan_iter(count=1000)]
    assert len(keys) > 20
    undeclared = sorted(key for key in keys if family_of(key, "qm") is None)
    assert undeclared == [], "declare these key families in services/queue_manager/keys.py FAMILIES"


def more_of_the_day(server_url: str, alice: httpx.Client) -> None:
    """What the day-over fill leaves out: failures, dead letters and their requeue, cancels, a pause,
    job priorities, a push container naming itself."""
    worker = httpx.Client(base_url=server_url, timeout=20)
    admin = login(httpx.Client(base_url=server_url, timeout=20), ADMIN, ADMIN_PASSWORD)
    try:
        for retryable in (True, False):
            lease = claim(worker)
            failure = {
                "token": lease.token,
                "worker_id": "w1",
                "error": {"type": "E", "message": "m", "retryable": retryable},
            }
            worker.post(
                f"/api/leases/{lease.job.id}/fail", json=failure, headers=WORKER_AUTH
            ).raise_for_status()
        admin.post(
            f"/api/admin/jobs/{queue(alice, 'alice')}/priority", json={"priority": 3}
        ).raise_for_status()
        alice.post(f"/api/jobs/{queue(alice, 'alice')}/cancel").raise_for_status()
        admin.post("/api/admin/pause").raise_for_status()
        dead = admin.get("/api/admin/queue").json()
        for job in dead.get("dead", []):
            admin.post(f"/api/admin/dead/{job['id']}/requeue")
        admin.post("/api/admin/resume").raise_for_status()
    finally:
        admin.close()
        worker.close()


@pytest.fixture
def saved_day(redis_url: str, bucket: Path, docker_shim: Path) -> Iterator[None]:
    """A first morning (nothing saved yet) then an evening that saved one queued job."""
    with live_server(day_settings(redis_url), bucket) as server:
        assert keeper_step("restore", redis_url, bucket, docker_shim).returncode == 0
        with httpx.Client(base_url=server.url, timeout=20) as alice:
            queue(login(alice, "alice"), "alice")
        assert keeper_step("drain", redis_url, bucket, docker_shim).returncode == 0
    redis.Redis.from_url(redis_url).flushall()
    yield


@pytest.mark.usefixtures("saved_day")
def test_a_corrupt_snapshot_stops_the_morning_and_restores_nothing(
    redis_url: str, bucket: Path, docker_shim: Path
) -> None:
    snapshot = saved_snapshot(bucket)
    snapshot.write_bytes(snapshot.read_bytes().replace(b'"alice"', b'"alicf"'))
    reply = keeper_step("restore", redis_url, bucket, docker_shim)
    assert reply.returncode != 0 and "corrupt" in reply.stderr and "sha256" in reply.stderr
    assert redis.Redis.from_url(redis_url).dbsize() == 0


@pytest.mark.usefixtures("saved_day")
def test_a_missing_snapshot_after_the_first_day_stops_the_morning(
    redis_url: str, bucket: Path, docker_shim: Path
) -> None:
    saved_snapshot(bucket).unlink()
    (bucket / CHECKSUM_KEY).unlink()
    reply = keeper_step("restore", redis_url, bucket, docker_shim)
    assert (
        reply.returncode != 0 and "no queue snapshot" in reply.stderr and "snapshots/started" in reply.stderr
    )
    assert redis.Redis.from_url(redis_url).dbsize() == 0


def saved_files(client: httpx.Client, user: str) -> dict[str, Any]:
    """A participant's saved workflows (names and bytes), settings and hidden history."""
    base = f"/w/{user}/api"
    listing = client.get(f"{base}/userdata?dir=workflows&recurse=true").json()
    return {
        "workflows": {
            name: client.get(f"{base}/userdata/{quote(f'workflows/{name}', safe='')}").content
            for name in listing
        },
        "settings": client.get(f"{base}/settings").json(),
    }


def test_a_save_before_the_morning_restore_keeps_last_evenings_files_too(
    redis_url: str, bucket: Path, docker_shim: Path
) -> None:
    """The workspaces answer as soon as the queue manager runs, before the up's restore step: a
    participant who opens hers then (the frontend stores a setting on load) or saves a workflow
    must find last evening's workflows and settings next to what she saved, not instead of them."""
    with live_server(day_settings(redis_url), bucket) as server:
        alice = login(httpx.Client(base_url=server.url, timeout=20), "alice")
        personal_data(alice, "alice")
        for name, body in {"sub dir/café ☕.json": '{"名": "ü"}'.encode(), "empty.json": b""}.items():
            path = quote(f"workflows/{name}", safe="")
            alice.post(f"/w/alice/api/userdata/{path}", content=body).raise_for_status()
        alice.post("/w/alice/api/settings/Comfy.Locale", json="fr").raise_for_status()
        queue(alice, "alice"), queue(alice, "alice")
        evening = saved_files(alice, "alice")
        alice.close()
        assert keeper_step("drain", redis_url, bucket, docker_shim).returncode == 0
    redis.Redis.from_url(redis_url).flushall()
    with live_server(day_settings(redis_url), bucket) as server:
        alice = login(httpx.Client(base_url=server.url, timeout=20), "alice")
        early = {"Comfy.ColorPalette": "light", "Comfy.TutorialCompleted": True}
        alice.post("/w/alice/api/settings", json=early).raise_for_status()
        alice.post("/w/alice/api/userdata/workflows%2Fmorning.json", content=b"{}").raise_for_status()
        queue(alice, "alice")
        assert keeper_step("restore", redis_url, bucket, docker_shim).returncode == 0
        morning = saved_files(alice, "alice")
        later = queue(alice, "alice")
        numbers = {item[1]: item[0] for item in alice.get("/w/alice/api/queue").json()["queue_pending"]}
        alice.close()
    assert {"sub dir/café ☕.json", "empty.json", "portrait.json"} <= set(evening["workflows"])
    assert morning["workflows"] == {**evening["workflows"], "morning.json": b"{}"}
    assert morning["settings"] == {**evening["settings"], **early}
    assert len(numbers) == 4 and numbers[later] > max(n for job, n in numbers.items() if job != later)


def waiting_jobs(server_url: str, user: str) -> list[str]:
    with httpx.Client(base_url=server_url, timeout=20) as client:
        panel = login(client, user).get(f"/w/{user}/api/queue").json()
    return [item[1] for item in panel["queue_pending"]]


@pytest.mark.usefixtures("saved_day")
def test_an_evening_after_a_failed_morning_restore_keeps_last_nights_queue(
    redis_url: str, bucket: Path, docker_shim: Path
) -> None:
    """The morning's restore failed (the bucket did not answer) or never ran, yet the platform ran
    the day; the evening's save must not write today's queue over the snapshot nobody restored."""
    with live_server(day_settings(redis_url), bucket) as server:
        down = keeper_step("restore", redis_url, saved_snapshot(bucket), docker_shim)  # not a directory
        assert down.returncode != 0
        with httpx.Client(base_url=server.url, timeout=20) as bob:
            queue(login(bob, "bob"), "bob")
        assert keeper_step("drain", redis_url, bucket, docker_shim).returncode == 0
    redis.Redis.from_url(redis_url).flushall()
    with live_server(day_settings(redis_url), bucket) as server:
        assert keeper_step("restore", redis_url, bucket, docker_shim).returncode == 0
        assert len(waiting_jobs(server.url, "alice")) == 1 and len(waiting_jobs(server.url, "bob")) == 1


def test_two_evenings_without_a_morning_between_keep_the_queue_once(
    redis_url: str, bucket: Path, docker_shim: Path
) -> None:
    """A destroy that drained, then stopped, is run again: the second save keeps what the first did.
    (A day's own job, not last night's: the evenings treat both alike, and the night before cost
    this test a third of its steps.)"""
    with live_server(day_settings(redis_url), bucket) as server:
        assert keeper_step("restore", redis_url, bucket, docker_shim).returncode == 0
        with httpx.Client(base_url=server.url, timeout=20) as alice:
            queue(login(alice, "alice"), "alice")
        for _ in range(2):
            assert keeper_step("drain", redis_url, bucket, docker_shim).returncode == 0
    redis.Redis.from_url(redis_url).flushall()
    with live_server(day_settings(redis_url), bucket) as server:
        assert keeper_step("restore", redis_url, bucket, docker_shim).returncode == 0
        assert len(waiting_jobs(server.url, "alice")) == 1


def test_what_a_participant_sends_after_the_evening_save_is_refused_not_lost(
    redis_url: str, bucket: Path, docker_shim: Path
) -> None:
    """The workspaces still answer while the destroy takes down the GPUs after the drain: a save, a
    setting or a job sent then would vanish with the Redis. It is refused, saying why; the morning
    takes them again."""
    with live_server(day_settings(redis_url), bucket) as server:
        alice = login(httpx.Client(base_url=server.url, timeout=20), "alice")
        assert keeper_step("drain", redis_url, bucket, docker_shim).returncode == 0
        refused = [
            alice.post("/w/alice/api/userdata/workflows%2Flate.json", content=b"{}"),
            alice.post("/w/alice/api/settings/Comfy.Locale", json="fr"),
            alice.post("/w/alice/api/prompt", json={"prompt": GRAPH, "client_id": "tab"}),
        ]
        alice.close()
    for reply in refused:
        assert reply.status_code == 503 and "closed for the night" in reply.text, reply.text
    with live_server(day_settings(redis_url), bucket) as server:
        assert keeper_step("restore", redis_url, bucket, docker_shim).returncode == 0
        with httpx.Client(base_url=server.url, timeout=20) as alice:
            login(alice, "alice")
            assert alice.post("/w/alice/api/userdata/workflows%2Flate.json", content=b"{}").status_code == 200
            assert alice.post("/w/alice/api/settings/Comfy.Locale", json="fr").status_code == 200
            queue(alice, "alice")


def test_a_backup_the_bucket_refuses_stops_the_destroy_and_the_workshop_goes_on(
    redis_url: str, bucket: Path, docker_shim: Path
) -> None:
    """The destroy fails loudly, and participants are not left closed out: the next evening's save
    keeps what they made meanwhile."""
    with live_server(day_settings(redis_url), bucket) as server:
        alice = login(httpx.Client(base_url=server.url, timeout=20), "alice")
        personal_data(alice, "alice")
        (bucket / "snapshots").write_bytes(b"")  # the snapshot's put fails
        failed = keeper_step("drain", redis_url, bucket, docker_shim)
        assert failed.returncode != 0 and "snapshots" in failed.stderr, failed.stderr
        assert not redis.Redis.from_url(redis_url).exists("qm:paused")  # the GPUs take jobs again
        assert alice.post("/w/alice/api/userdata/workflows%2Flate.json", content=b"{}").status_code == 200
        alice.close()
        (bucket / "snapshots").unlink()
        assert keeper_step("drain", redis_url, bucket, docker_shim).returncode == 0
    redis.Redis.from_url(redis_url).flushall()
    with live_server(day_settings(redis_url), bucket) as server:
        assert keeper_step("restore", redis_url, bucket, docker_shim).returncode == 0
        with httpx.Client(base_url=server.url, timeout=20) as alice:
            assert set(saved_files(login(alice, "alice"), "alice")["workflows"]) == {
                "portrait.json",
                "late.json",
            }


def test_the_organizers_resume_opens_a_closed_workshop_again(
    redis_url: str, bucket: Path, docker_shim: Path
) -> None:
    """An organizer who stops the destroy after its drain and goes on with the day has one button."""
    with live_server(day_settings(redis_url), bucket) as server:
        alice = login(httpx.Client(base_url=server.url, timeout=20), "alice")
        assert keeper_step("drain", redis_url, bucket, docker_shim).returncode == 0
        assert alice.post("/w/alice/api/settings/Comfy.Locale", json="fr").status_code == 503
        with httpx.Client(base_url=server.url, timeout=20) as admin:
            login(admin, ADMIN, ADMIN_PASSWORD).post("/api/admin/resume").raise_for_status()
        assert alice.post("/w/alice/api/settings/Comfy.Locale", json="fr").status_code == 200
        alice.close()


@pytest.mark.usefixtures("saved_day")
def test_the_morning_names_waiting_jobs_of_a_participant_removed_overnight(
    redis_url: str, bucket: Path, docker_shim: Path
) -> None:
    """Their jobs come back (a rename can be undone) and would take GPUs first: the up says so."""
    with live_server(settings_for(redis_url, participants=("bob",)), bucket):
        restored = keeper_step("restore", redis_url, bucket, docker_shim, participants=("bob",))
    assert restored.returncode == 0
    assert "1 waiting jobs of alice, no longer a participant, run unless you cancel them" in restored.stdout
    assert "bob" not in restored.stdout


def fail_for_good(worker: httpx.Client) -> str:
    """The next job fails on the worker at its last attempt: a dead letter."""
    lease = claim(worker)
    failure = {
        "token": lease.token,
        "worker_id": "w1",
        "error": {"type": "E", "message": "m", "retryable": True},
    }
    worker.post(f"/api/leases/{lease.job.id}/fail", json=failure, headers=WORKER_AUTH).raise_for_status()
    return lease.job.id


def undo_after_the_save(
    alice: httpx.Client, admin: httpx.Client, night: dict[str, str]
) -> list[httpx.Response]:
    """Every change of what alice has that she or the organizer can still send once the evening's
    snapshot is taken: each would be lost with the Redis (the job cancelled would run in the
    morning, the workflow deleted would come back)."""
    base = "/w/alice/api"
    return [
        alice.post(f"{base}/queue", json={"delete": [night["waiting"]]}),
        alice.post(f"{base}/queue", json={"clear": True}),
        alice.post(f"/api/jobs/{night['waiting']}/cancel"),
        alice.post(f"{base}/interrupt", json={}),
        alice.post(f"{base}/history", json={"delete": [night["finished"]]}),
        alice.post(f"{base}/history", json={"clear": True}),
        alice.delete(f"{base}/userdata/workflows%2Fportrait.json"),
        alice.post(f"{base}/userdata/workflows%2Fportrait.json/move/workflows%2Fmoved.json"),
        admin.post(f"/api/admin/jobs/{night['waiting']}/cancel"),
        admin.post(f"/api/admin/jobs/{night['waiting']}/priority", json={"priority": 5}),
        admin.post("/api/admin/users/alice/priority", json={"priority": 7}),
        admin.post(f"/api/admin/dead/{night['dead']}/requeue"),
    ]


def what_alice_and_the_organizer_see(alice: httpx.Client, admin: httpx.Client) -> dict[str, Any]:
    overview = admin.get("/api/admin/queue").json()
    lines = {name: [(job["id"], job["state"]) for job in overview[name]] for name in ("queued", "dead")}
    return {
        **answers(alice, "alice"),
        "admin queue": lines,
        "admin users": [u for u in admin.get("/api/admin/users").json() if u["user"] == "alice"],
    }


def test_what_is_undone_after_the_evening_save_is_refused_and_comes_back_in_the_morning(
    redis_url: str, bucket: Path, docker_shim: Path
) -> None:
    """Cancels, history deletions, file deletions and the organizer's priorities and requeues sent
    after the snapshot are refused with the night's 503, change nothing, and the morning has all of
    it as the snapshot holds it."""
    with live_server(settings_for(redis_url, lease_seconds=600, max_attempts=1), bucket) as server:
        alice = login(httpx.Client(base_url=server.url, timeout=20), "alice")
        admin = login(httpx.Client(base_url=server.url, timeout=20), ADMIN, ADMIN_PASSWORD)
        worker = httpx.Client(base_url=server.url, timeout=20)
        register_worker(worker, catalogue(["in.png"]))
        personal_data(alice, "alice")
        queue(alice, "alice")
        night = {"finished": finish(worker, bucket, "alice", "night_00001_.png")}
        queue(alice, "alice")
        night["dead"] = fail_for_good(worker)
        queue(alice, "alice")
        night["running"] = claim(worker).job.id
        night["waiting"] = queue(alice, "alice")
        queue(alice, "alice")
        assert keeper_step("drain", redis_url, bucket, docker_shim).returncode == 0
        evening = what_alice_and_the_organizer_see(alice, admin)
        refused = undo_after_the_save(alice, admin, night)
        assert what_alice_and_the_organizer_see(alice, admin) == evening
        for client in (alice, admin, worker):
            client.close()
    for reply in refused:
        assert reply.status_code == 503 and "closed for the night" in reply.text, (reply.url, reply.text)
    redis.Redis.from_url(redis_url).flushall()
    with live_server(day_settings(redis_url), bucket) as server:
        assert keeper_step("restore", redis_url, bucket, docker_shim).returncode == 0
        alice = login(httpx.Client(base_url=server.url, timeout=20), "alice")
        admin = login(httpx.Client(base_url=server.url, timeout=20), ADMIN, ADMIN_PASSWORD)
        morning = what_alice_and_the_organizer_see(alice, admin)
        alice.close(), admin.close()
    expected = comparable(interrupted_moves_to_the_front(evening))
    queued = [night["running"], *(job for job, _ in evening["admin queue"]["queued"])]
    expected["admin queue"] = {**evening["admin queue"], "queued": [(job, "queued") for job in queued]}
    expected["admin users"] = [{**evening["admin users"][0], "queued": 3, "running": 0}]
    assert evening["admin queue"]["dead"] == [(night["dead"], "failed")]
    assert comparable(morning) == expected


def test_the_morning_names_waiting_jobs_pinned_to_a_pool_gone_overnight(
    redis_url: str, bucket: Path, docker_shim: Path
) -> None:
    """The organizer pinned a job to a pool the config no longer has: no worker can ever take it,
    and the morning's up says so, as a submit to that pool is refused, instead of it waiting unseen."""
    pools = {name: SecretStr(f"{name}-token") for name in (POOL, "h100")}
    with live_server(settings_for(redis_url, lease_seconds=600, worker_tokens=pools), bucket) as server:
        with httpx.Client(base_url=server.url, timeout=20) as admin:
            pinned = login(admin, ADMIN, ADMIN_PASSWORD).post(
                "/api/jobs", json={"prompt": GRAPH, "pool": "h100"}
            )
            assert pinned.status_code == 201, pinned.text
        assert keeper_step("drain", redis_url, bucket, docker_shim, pools=(POOL, "h100")).returncode == 0
    redis.Redis.from_url(redis_url).flushall()
    with live_server(day_settings(redis_url), bucket):
        restored = keeper_step("restore", redis_url, bucket, docker_shim)
    assert restored.returncode == 0, restored.stderr
    assert "1 waiting jobs pinned to pool h100, which the config no longer has" in restored.stdout
    assert f"pool {POOL}" not in restored.stdout
    assert "no longer a participant" not in restored.stdout  # the organizer's own job is hers


def test_a_day_resumed_after_the_evening_save_keeps_what_was_deleted_deleted(
    redis_url: str, bucket: Path, docker_shim: Path
) -> None:
    """The destroy saved, then stopped (a provider refused a deletion), and the organizer pressed
    Resume and went on with the day. The snapshot it saved is that same Redis's, no morning's to
    merge back: a workflow deleted and a history entry hidden since must not come back that evening."""
    with live_server(day_settings(redis_url), bucket) as server:
        alice = login(httpx.Client(base_url=server.url, timeout=20), "alice")
        worker = httpx.Client(base_url=server.url, timeout=20)
        register_worker(worker, catalogue(["in.png"]))
        personal_data(alice, "alice")
        queue(alice, "alice")
        done = finish(worker, bucket, "alice", "night_00001_.png")
        assert keeper_step("drain", redis_url, bucket, docker_shim).returncode == 0
        with httpx.Client(base_url=server.url, timeout=20) as admin:
            login(admin, ADMIN, ADMIN_PASSWORD).post("/api/admin/resume").raise_for_status()
        alice.delete("/w/alice/api/userdata/workflows%2Fportrait.json").raise_for_status()
        alice.post("/w/alice/api/history", json={"delete": [done]}).raise_for_status()
        evening = saved_files(alice, "alice"), alice.get("/w/alice/api/history").json()
        assert keeper_step("drain", redis_url, bucket, docker_shim).returncode == 0
        alice.close(), worker.close()
    redis.Redis.from_url(redis_url).flushall()
    with live_server(day_settings(redis_url), bucket) as server:
        assert keeper_step("restore", redis_url, bucket, docker_shim).returncode == 0
        with httpx.Client(base_url=server.url, timeout=20) as alice:
            login(alice, "alice")
            assert (saved_files(alice, "alice"), alice.get("/w/alice/api/history").json()) == evening
    assert evening[0]["workflows"] == {} and evening[1] == {}


def test_no_worker_takes_a_job_before_the_mornings_restore(
    redis_url: str, bucket: Path, docker_shim: Path
) -> None:
    """The GPUs may be up before the restore step ran (a push pool is built beside it): a job they
    took then would run ahead of last night's queue, or twice once the restore brings its twin. The
    queue manager leases nothing, and the organizer's Resume cannot open it, until the restore ran;
    then last night's job goes first."""
    morning = settings_for(redis_url, lease_seconds=600, restore_first=True)
    with live_server(morning, bucket) as server:
        assert keeper_step("restore", redis_url, bucket, docker_shim).returncode == 0
        with httpx.Client(base_url=server.url, timeout=20) as alice:
            night = queue(login(alice, "alice"), "alice")
        assert keeper_step("drain", redis_url, bucket, docker_shim).returncode == 0
    redis.Redis.from_url(redis_url).flushall()
    with live_server(morning, bucket) as server:
        worker = httpx.Client(base_url=server.url, timeout=20)
        register_worker(worker, catalogue(["in.png"]))
        alice = login(httpx.Client(base_url=server.url, timeout=20), "alice")
        early = queue(alice, "alice")
        early_claim = worker.post("/api/workers/w1/claim", params={"wait": 0}, headers=WORKER_AUTH)
        with httpx.Client(base_url=server.url, timeout=20) as admin:
            resume = login(admin, ADMIN, ADMIN_PASSWORD).post("/api/admin/resume")
        assert early_claim.status_code == 204, early_claim.text
        assert resume.status_code == 409 and "restore" in resume.text, resume.text
        assert keeper_step("restore", redis_url, bucket, docker_shim).returncode == 0
        assert [claim(worker).job.id for _ in range(2)] == [night, early]
        alice.close(), worker.close()
