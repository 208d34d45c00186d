"""Snapshot in the evening, restore in the morning: nothing queued is lost, order is kept."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.s3 import make_bucket, s3_settings
from services.protocol.jobs import JobError, JobState
from services.protocol.workers import Completion, Failure
from services.queue_manager.keys import Keys, family_of
from services.queue_manager.scripts import SaveFileArgs
from services.queue_manager.settings import Scheduling
from services.queue_manager.snapshot import (
    CHECKSUM_KEY,
    SNAPSHOT_KEY,
    RestoreResult,
    Snapshot,
    SnapshotError,
    bytes_client,
    load_saved_snapshot,
    mark_started,
    open_saved_snapshot,
    restore_snapshot,
    save_for_the_night,
    take_snapshot,
    unrestored_snapshot,
)
from services.queue_manager.store import Store
from services.storage import aiter_chunks, open_storage
from services.storage.base import StorageUnavailableError
from services.storage.local import LocalStorage
from tests.support.qm_api import ADMIN, PROMPT, job, user_auth

MIB = 1024 * 1024


async def test_a_restored_queue_runs_the_same_jobs_in_the_same_order(
    store_with: Callable[..., Store],
) -> None:
    evening = store_with()
    done = await evening.submit("ada", job())
    running = await evening.submit("bob", job())
    waiting = [await evening.submit(user, job()) for user in ("ada", "bob", "ada")]
    lease = await evening.claim("w1", "gpu")
    assert lease is not None
    await evening.complete(done.id, Completion(token=lease.token))
    assert await evening.claim("w2", "gpu") is not None  # bob's job is running at snapshot time
    snapshot = await take_snapshot(evening)
    await evening.redis.flushall()  # the evening destroy

    morning = store_with()
    result = await restore_snapshot(morning, snapshot)
    assert (result.restored, result.requeued) == (5, 4)
    order = [lease.job.id for lease in [await morning.claim("w", "gpu") for _ in range(4)] if lease]
    assert order == [running.id, *(j.id for j in waiting)]
    finished = await morning.get(done.id)
    assert finished is not None and finished.state == JobState.SUCCEEDED
    again = await restore_snapshot(morning, snapshot)
    assert again.restored == 0 and again.skipped == 5


async def test_snapshot_and_restore_over_http(client: httpx.AsyncClient) -> None:
    await client.post("/api/jobs", json={"prompt": PROMPT}, headers=user_auth("ada"))
    snapshot = (await client.get("/api/admin/snapshot", headers=ADMIN)).json()
    assert len(snapshot["jobs"]) == 1
    reply = await client.post("/api/admin/restore", json=snapshot, headers=ADMIN)
    assert reply.json() == {"restored": 0, "requeued": 0, "skipped": 1, "keys": 0}
    assert (await client.post("/api/admin/restore", json={"jobs": "x"}, headers=ADMIN)).status_code == 422


async def test_the_organizers_restore_after_the_evening_snapshot_is_refused_and_keeps_it_closed(
    client: httpx.AsyncClient, store: Store
) -> None:
    """Jobs restored into the Redis after its snapshot would vanish with it, and the restore's
    reopening would let participants change what is no longer saved while the destroy goes on."""
    await client.post("/api/jobs", json={"prompt": PROMPT}, headers=user_auth("ada"))
    snapshot = (await client.get("/api/admin/snapshot", headers=ADMIN)).json()
    await store.redis.flushall()
    await store.redis.set(store.keys.closed, "1")  # the evening's save took its snapshot
    reply = await client.post("/api/admin/restore", json=snapshot, headers=ADMIN)
    assert reply.status_code == 503 and "closed for the night" in reply.text
    assert await store.redis.exists(store.keys.closed) and await store.queued_ids() == []


async def test_a_queue_restored_with_a_large_submit_counter_still_takes_jobs(
    client: httpx.AsyncClient,
) -> None:
    # Redis's Lua wrote a job's number from 1e17 up as "1e+17", which the job record could not read
    # back: every submit after such a restore was a 500 (the route fuzzer found it)
    body = {"version": 1, "jobs": [], "seq": 10**17}
    assert (await client.post("/api/admin/restore", json=body, headers=ADMIN)).status_code == 200
    reply = await client.post("/api/jobs", json={"prompt": PROMPT}, headers=user_auth("ada"))
    assert reply.status_code == 201, reply.text
    job_id = reply.json()["id"]
    number = (await client.get(f"/api/jobs/{job_id}", headers=user_auth("ada"))).json()["number"]
    assert abs(number - (10**17 + 1)) <= 16  # a Lua number: exact up to 2**53, within 16 here


async def test_a_restore_writes_only_keys_of_families_the_snapshot_carries(client: httpx.AsyncClient) -> None:
    """An uploaded snapshot cannot plant a worker registration or any other key it should not hold."""
    planted = {"jobs": [], "keys": {"worker:evil": {"type": "hash", "data": {}}}}
    reply = await client.post("/api/admin/restore", json=planted, headers=ADMIN)
    assert reply.status_code == 422 and "worker:evil" in reply.text


QUEUED = {"user": "ada", "state": "queued", "scope": "*", "score": "1", "queued_at": "1"}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"keys": {"seq": {"type": "string", "data": b64("abc")}}}, "'seq' holds a value"),
        ({"keys": {"seq": {"type": "hash", "data": {}}}}, "'seq' is a string in keys.py"),
        ({"keys": {"fair:round": {"type": "string", "data": b64("nan")}}}, "'fair:round'"),
        ({"keys": {"user_priority": {"type": "hash", "data": {b64("ada"): b64("high")}}}}, "'user_priority'"),
        ({"keys": {"ws:settings:ada": {"type": "hash", "data": {b64("k"): b64("{")}}}}, "'ws:settings:ada'"),
        ({"keys": {"ws:hidden:ada": {"type": "set", "data": ["not base64!"]}}}, "'ws:hidden:ada'"),
        ({"keys": {"ws:hidden:ada": {"type": "set", "data": {"a": 1}}}}, "shape of a set"),
        ({"jobs": [{**QUEUED, "id": "j1", "score": "x"}]}, "job 'j1'"),
        ({"jobs": [{**QUEUED, "id": "j2", "spec": "{"}]}, "job 'j2'"),
        ({"jobs": [{**QUEUED, "id": "j3", "queued_at": "soon"}]}, "job 'j3'"),
        ({"jobs": [{**QUEUED, "id": "j4", "queued_at": "99999999999999999999"}]}, "job 'j4'"),
        ({"jobs": [{**QUEUED, "id": "j5", "queued_at": "1.5"}]}, "job 'j5'"),
        ({"version": 1, "seq": 2**64}, "seq"),  # a counter Redis cannot INCR: every submit was a 500
        ({"version": 1, "seq": -1}, "seq"),
        ({"version": 1, "user_priorities": {"ada": 10**30}}, "user_priorities"),
    ],
)  # fmt: skip
async def test_a_restore_refuses_a_value_the_queue_manager_could_not_read_back(
    client: httpx.AsyncClient, body: dict[str, Any], named: str
) -> None:
    """A snapshot written by hand (or garbled) gets a 422 naming the key or job, and the queue
    keeps working: before, a restored counter that was no integer made every later submit a 500."""
    reply = await client.post("/api/admin/restore", json={"jobs": [], **body}, headers=ADMIN)
    assert reply.status_code == 422 and named in reply.text, reply.text
    submitted = await client.post("/api/jobs", json={"prompt": PROMPT}, headers=user_auth("ada"))
    assert submitted.status_code == 201, submitted.text


async def test_a_snapshot_of_a_busy_queue_passes_its_own_checks(client: httpx.AsyncClient) -> None:
    """Every value the queue manager writes is one the restore checks accept (numbers Lua wrote too)."""
    for user in ("ada", "bob", "ada"):
        await client.post("/api/jobs", json={"prompt": PROMPT}, headers=user_auth(user))
    await client.post("/api/admin/users/ada/priority", json={"priority": 5}, headers=ADMIN)
    snapshot = (await client.get("/api/admin/snapshot", headers=ADMIN)).json()
    assert {"seq", "fair:user_round"} <= set(snapshot["keys"])
    reply = await client.post("/api/admin/restore", json=snapshot, headers=ADMIN)
    assert reply.status_code == 200 and reply.json()["skipped"] == 3


def run_cli(
    redis_url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QM_REDIS_URL": redis_url, "QM_ENV": "development", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "services.queue_manager.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_cli_snapshots_drains_and_restores(store: Store, redis_url: str, tmp_path: Path) -> None:
    queued = await store.submit("ada", job())
    out = tmp_path / "queue.json"
    assert run_cli(redis_url, "drain", "--timeout", "0").returncode == 0
    snap = run_cli(redis_url, "snapshot", "--out", str(out))
    assert snap.returncode == 0, snap.stderr
    assert [j["id"] for j in json.loads(out.read_text())["jobs"]] == [queued.id]
    await store.redis.flushall()
    restored = run_cli(redis_url, "restore", "--in", str(out))
    assert restored.returncode == 0 and "restored 1 jobs" in restored.stdout
    assert await store.position(queued.id) == 0


def test_the_cli_explains_a_bad_snapshot_file(redis_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    reply = run_cli(redis_url, "restore", "--in", str(bad))
    assert reply.returncode == 2 and "not a readable queue snapshot" in reply.stderr


async def test_a_snapshot_saved_before_checksums_existed_still_restores(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    legacy = {"version": 1, "jobs": [], "user_priorities": {"ada": 2}, "seq": 7}
    await storage.put(SNAPSHOT_KEY, aiter_chunks(json.dumps(legacy).encode()))
    loaded = await load_saved_snapshot(storage)
    assert loaded is not None and loaded.seq == 7 and loaded.user_priorities == {"ada": 2}
    await storage.put(SNAPSHOT_KEY, aiter_chunks(Snapshot(jobs=[]).model_dump_json().encode()))
    with pytest.raises(SnapshotError, match="missing"):  # a checksummed kind of snapshot lost its checksum
        await load_saved_snapshot(storage)


def test_every_key_the_key_schema_builds_belongs_to_a_declared_family() -> None:
    keys = Keys("qm")
    built = [getattr(keys, name) for name, member in vars(Keys).items() if isinstance(member, property)]
    for name, member in vars(Keys).items():
        if callable(member) and not name.startswith("_"):
            built.append(member(keys, *["x"] * (member.__code__.co_argcount - 1)))
    assert len(built) > 25
    assert [key for key in built if family_of(key, "qm") is None] == []


async def numbers(store: Store, ids: list[str]) -> list[int]:
    return [int(await store.redis.hget(store.keys.job(job_id), "number") or 0) for job_id in ids]


@pytest.mark.parametrize("ahead", [timedelta(0), timedelta(hours=12)], ids=["same clock", "clock ahead"])
@pytest.mark.parametrize("mode", list(Scheduling))
async def test_jobs_queued_in_the_morning_before_the_restore_wait_behind_last_nights_queue(
    store_with: Callable[..., Store], mode: Scheduling, ahead: timedelta
) -> None:
    """The workspaces answer before the up's restore step runs. A job queued then takes its turn as
    if it had been queued just after the restore; it got the fresh Redis's round 0 and queue number
    1, and ran before everyone who had waited overnight. Also when last evening's server clock ran
    ahead of this morning's (a new server each day): its snapshot is then "from the future"."""
    evening = store_with(scheduling=mode)
    for user, pool in (("ada", None),) * 3 + (("bob", None),) * 2 + (("dan", "cpu"),) * 2 + (("bob", "cpu"),):
        await evening.submit(user, job(), pool=pool)  # fair turns count per pool: cpu's are behind
    assert all([await evening.claim("w1", "gpu") for _ in range(3)])  # running: they queue again
    night = await evening.queued_ids()
    snapshot = await take_snapshot(evening)
    snapshot = snapshot.model_copy(update={"taken_at": snapshot.taken_at + ahead})
    await evening.redis.flushall()

    morning = store_with(scheduling=mode)
    morning_jobs = (
        *(("cara", False, "cpu"), ("cara", False, None), ("ada", False, None), ("ada", True, None)),
        *(("cara", False, None), ("ada", False, None)),
    )
    early = [(await morning.submit(u, job(front=front), pool=pool)).id for u, front, pool in morning_jobs[:4]]
    await restore_snapshot(morning, snapshot)
    numbered = await numbers(morning, early)
    await restore_snapshot(morning, snapshot)  # a restore run twice moves nothing again
    assert await numbers(morning, early) == numbered
    late = [(await morning.submit(u, job(front=front), pool=pool)).id for u, front, pool in morning_jobs[4:]]
    got = await morning.queued_ids()
    queue_numbers = await numbers(morning, got)
    await restore_snapshot(morning, snapshot)  # again at noon (the admin's restore): nothing moves
    assert (await morning.queued_ids(), await numbers(morning, got)) == (got, queue_numbers)
    rejoined = min(map(abs, await numbers(morning, early))) > max(await numbers(morning, night))
    await morning.redis.flushall()

    replay = store_with(scheduling=mode)  # the same morning, with the restore before any job
    await restore_snapshot(replay, snapshot)
    again = [(await replay.submit(u, job(front=front), pool=pool)).id for u, front, pool in morning_jobs]
    same = dict(zip(again, early + late, strict=True))
    assert got == [same.get(job_id, job_id) for job_id in await replay.queued_ids()]
    assert len(got) == 3 + len(night) + 6 and len(set(map(abs, queue_numbers))) == len(got), queue_numbers
    assert rejoined  # numbered after last night's jobs, as the morning's panel shows them


async def everything_in(store: Store) -> dict[str, Any]:
    """Each job's record and each copied key as the snapshot reads them (bytes as base64)."""
    taken = await take_snapshot(store)
    return {"jobs": {fields["id"]: fields for fields in taken.jobs}, "keys": taken.keys}


async def test_a_night_in_a_bucket_with_two_pools_keeps_every_job_and_byte(
    store_with: Callable[..., Store], s3_endpoint: str
) -> None:
    """The whole evening and morning against a bucket (moto), with waiting jobs in two pools and the
    unpinned queue, a running job, a dead letter and a finished one, and a saved file that is no
    UTF-8: the morning holds each record and byte as the evening did (the running job waits again,
    its cut attempt not counted), and a second restore changes nothing."""
    make_bucket(s3_endpoint, "vault")
    vault = open_storage("s3://vault/workshop", s3_settings(s3_endpoint))
    evening = store_with(max_attempts=1)
    first = await evening.submit("ada", job())
    lease = await evening.claim("w1", "gpu")
    assert lease is not None
    await evening.fail(
        first.id, Failure(token=lease.token, error=JobError(type="E", message="m", retryable=True))
    )
    for user, pool in (("ada", "gpu"), ("bob", "cpu"), ("bob", None), ("ada", "cpu"), ("bob", "gpu")):
        await evening.submit(user, job(), pool=pool)
    running = await evening.claim("w2", "cpu")
    assert running is not None
    body = bytes(range(256))
    saved = SaveFileArgs(evening.prefix, "ada", "workflows/raw.bin", body, "256 1", 1, "", 10, 10**6)
    assert await evening.scripts.run(saved) == ["ok"]
    saved = await save_for_the_night(evening, vault)
    taken = (await take_snapshot(evening)).model_copy(update={"taken_at": saved.taken_at})
    before = await everything_in(evening)
    await evening.redis.flushall()

    morning = store_with(max_attempts=1)
    loaded = await load_saved_snapshot(vault)
    assert loaded == taken
    await restore_snapshot(morning, loaded)
    await mark_started(vault)
    after = await everything_in(morning)
    again = await restore_snapshot(morning, loaded)
    assert (again.restored, again.keys) == (0, 0) and await everything_in(morning) == after
    assert await unrestored_snapshot(vault) is None
    cut = before["jobs"][running.job.id]
    requeued = {**cut, "state": "queued", "attempts": "0", "token": "", "worker_id": "", "lease_expires": ""}
    assert after["jobs"] == {**before["jobs"], running.job.id: requeued}
    changed = {
        name
        for name in {*after["keys"], *before["keys"]}
        if after["keys"].get(name) != before["keys"].get(name)
    }
    assert changed == set(), {name: (before["keys"].get(name), after["keys"].get(name)) for name in changed}
    assert before["jobs"][first.id]["dead"] == "1"
    assert await morning.queued_ids() == [running.job.id, *(await evening_order(before, running.job.id))]


async def evening_order(before: dict[str, Any], running: str) -> list[str]:
    """The evening's waiting jobs by schedule score, across pools."""
    waiting = [f for f in before["jobs"].values() if f["state"] == "queued" and f["id"] != running]
    return [f["id"] for f in sorted(waiting, key=lambda f: float(f["score"]))]


async def test_a_job_that_ran_before_the_morning_restore_gets_nobody_ahead_of_last_nights_queue(
    store_with: Callable[..., Store],
) -> None:
    """A worker took bob's morning job before the restore ran (the pools come up beside it). His
    next job must still wait behind his own jobs from last night, and behind ada's that are due
    first: the restore's merge kept the morning's lower fair rounds."""
    evening = store_with()
    for user in ("ada", "bob") * 3:
        await evening.submit(user, job())
    snapshot = await take_snapshot(evening)
    await evening.redis.flushall()

    morning = store_with()
    await morning.submit("bob", job())
    assert await morning.claim("w1", "gpu") is not None
    await restore_snapshot(morning, snapshot)
    later = await morning.submit("bob", job())
    assert (await morning.queued_ids())[-1] == later.id


async def test_the_evening_save_streams_saved_files_in_memory_far_under_their_size(
    store_with: Callable[..., Store], tmp_path: Path
) -> None:
    """A hundred participants at the saved-file cap are GBs: the save streams the snapshot into the
    vault, holding about one saved file at a time, and the morning has every byte back."""
    evening, vault = store_with(), LocalStorage(tmp_path / "vault")
    files = {f"p{n:02d}": {f"workflows/w{i}.json": os.urandom(MIB) for i in range(2)} for n in range(24)}
    writer = bytes_client(evening.client)
    for user, saved in files.items():
        await writer.hset(evening.keys.user_data(user), mapping=saved)  # type: ignore[arg-type]
        await writer.hset(evening.keys.user_data_meta(user), mapping={p: f"{MIB} 1" for p in saved})  # type: ignore[arg-type]
    await writer.aclose()
    await evening.submit("p00", job())
    total = sum(len(data) for saved in files.values() for data in saved.values())
    tracemalloc.start()
    try:
        await save_for_the_night(evening, vault)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < total / 6, f"the save held {peak / MIB:.0f} MiB for {total / MIB:.0f} MiB of saved files"
    await evening.redis.flushall()
    morning = store_with()
    loaded = await load_saved_snapshot(vault)
    assert loaded is not None and (await restore_snapshot(morning, loaded)).restored == 1
    reader = bytes_client(morning.client)
    back = {user: await reader.hgetall(morning.keys.user_data(user)) for user in files}
    await reader.aclose()
    assert back == {user: {p.encode(): d for p, d in saved.items()} for user, saved in files.items()}


async def test_the_morning_restore_streams_saved_files_in_memory_far_under_their_size(
    store_with: Callable[..., Store], tmp_path: Path
) -> None:
    """The morning reads back what the evening streamed: checking and restoring a hundred
    participants' saved files holds about one participant's at a time, and every byte comes back."""
    evening, vault = store_with(), LocalStorage(tmp_path / "vault")
    files = {f"p{n:02d}": {"workflows/w.json": os.urandom(MIB)} for n in range(64)}
    writer = bytes_client(evening.client)
    for user, saved in files.items():
        await writer.hset(evening.keys.user_data(user), mapping=saved)  # type: ignore[arg-type]
        await writer.hset(evening.keys.user_data_meta(user), mapping={p: f"{MIB} 1" for p in saved})  # type: ignore[arg-type]
    await writer.aclose()
    queued = await evening.submit("p00", job())
    await save_for_the_night(evening, vault)
    await evening.redis.flushall()
    total = sum(len(data) for saved in files.values() for data in saved.values())
    morning = store_with()
    result, peak = await restored_traced(morning, vault)
    assert peak < total / 6, f"the restore held {peak / MIB:.0f} MiB for {total / MIB:.0f} MiB of saved files"
    assert (result.restored, result.requeued) == (1, 1) and await morning.queued_ids() == [queued.id]
    reader = bytes_client(morning.client)
    back = {user: await reader.hgetall(morning.keys.user_data(user)) for user in files}
    await reader.aclose()
    assert back == {user: {p.encode(): d for p, d in saved.items()} for user, saved in files.items()}


async def restored_traced(morning: Store, vault: LocalStorage) -> tuple[RestoreResult, int]:
    """The vault's snapshot opened and restored into ``morning``, and the peak memory it took."""
    tracemalloc.start()
    try:
        loaded = await open_saved_snapshot(vault)
        assert loaded is not None
        return await restore_snapshot(morning, loaded), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def put_checked(vault: LocalStorage, body: bytes) -> None:
    """A snapshot body in the vault with a matching checksum file (as if the evening wrote it)."""
    name = "queue-20261206T180000000000Z.json"
    await vault.put(f"snapshots/{name}", aiter_chunks(body))
    line = f"{hashlib.sha256(body).hexdigest()}  {name}\n".encode()
    await vault.put(CHECKSUM_KEY, aiter_chunks(line))


@pytest.mark.parametrize(
    ("tail", "named"),
    [
        (
            '"keys":{"ws:ud:ada":{"type":"hash","data":{"d29yaw==":"eyJhIjox"}},"bogus":{"type":"string","data":""}}}',
            "bogus",
        ),
        ('"keys":{"ws:settings:ada":{"type":"string","data":"bm90IGpzb24="}}}', "ws:settings:ada"),
        ('"keys":{"seq":{"type":"string","data":"MQ=="}}', "not JSON"),
        ('"keys":[]}', "keys"),
    ],
)
async def test_a_foreign_or_broken_snapshot_that_matches_its_checksum_restores_nothing(
    store_with: Callable[..., Store], redis_url: str, tmp_path: Path, tail: str, named: str
) -> None:
    """The flaw sits after good jobs and keys: the morning names it and writes nothing at all."""
    store, vault = store_with(), LocalStorage(tmp_path / "vault")
    await store.submit("ada", job())
    good = json.loads((await take_snapshot(store)).model_dump_json())
    await store.redis.flushall()
    body = json.dumps({"version": 2, "jobs": good["jobs"]})[:-1] + "," + tail
    await put_checked(vault, body.encode())
    with pytest.raises(SnapshotError, match="matches its checksum but is not a queue snapshot") as refused:
        await open_saved_snapshot(vault)
    assert named in str(refused.value)
    env = {**os.environ, "QM_FILES_URL": f"file://{tmp_path / 'vault'}"}
    reply = subprocess.run(
        [sys.executable, "-m", "services.queue_manager.cli", "load"],
        env={**env, "QM_REDIS_URL": redis_url, "QM_ENV": "development"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert reply.returncode == 2 and named in reply.stderr, reply.stderr
    assert await store.redis.keys("*") == []


async def test_a_snapshot_changed_in_the_vault_during_the_restore_is_named_and_restoring_again_completes(
    store_with: Callable[..., Store], tmp_path: Path
) -> None:
    """The restore reads the checked body again: if it is no longer that body the morning stops
    saying so, and once the evening's snapshot is back the same restore finishes the job."""
    evening, vault = store_with(), LocalStorage(tmp_path / "vault")
    ids = [(await evening.submit(user, job())).id for user in ("ada", "bob")]
    await save_for_the_night(evening, vault)
    await evening.redis.flushall()
    loaded = await open_saved_snapshot(vault)
    assert loaded is not None
    body = tmp_path / "vault" / loaded.key
    night = body.read_bytes()
    body.write_bytes(night[: night.index(b'"bob"')])  # a copy cut after ada's job
    morning = store_with()
    with pytest.raises(SnapshotError, match="changed in the vault while it was restored"):
        await restore_snapshot(morning, loaded, resume=False)
    body.write_bytes(night)
    await restore_snapshot(morning, loaded)
    assert await morning.queued_ids() == ids
    assert [[j.id for j in await morning.list_jobs(user)] for user in ("ada", "bob")] == [[i] for i in ids]


class CutVault(LocalStorage):
    """A vault whose connection breaks once: in the middle of the snapshot's body (``cut='body'``)
    or just before the checksum file is written (``cut='checksum'``)."""

    cut = ""

    async def put(self, key: str, chunks: Any, content_type: str = "", *, create_only: bool = False) -> int:
        if self.cut == "checksum" and key == CHECKSUM_KEY:
            self.cut = ""
            raise StorageUnavailableError("the vault went away")
        if self.cut == "body" and key.startswith("snapshots/queue-"):
            self.cut = ""

            async def broken() -> Any:
                async for index, chunk in aenumerate(chunks):
                    if index == 3:
                        raise StorageUnavailableError("the vault went away midway")
                    yield chunk

            return await super().put(key, broken(), content_type, create_only=create_only)
        return await super().put(key, chunks, content_type, create_only=create_only)


async def aenumerate(chunks: Any) -> Any:
    index = 0
    async for chunk in chunks:
        yield index, chunk
        index += 1


@pytest.mark.parametrize("cut", ["body", "checksum"])
async def test_an_evening_save_cut_midway_is_never_restored_and_the_destroy_runs_again(
    store_with: Callable[..., Store], tmp_path: Path, cut: str
) -> None:
    """Last night's snapshot stays the one the vault names while tonight's is written; a save cut
    anywhere leaves it named (never a half-written one), and the destroy run again saves tonight's."""
    vault = CutVault(tmp_path / "vault")
    evening = store_with()
    night = await evening.submit("ada", job())
    await save_for_the_night(evening, vault)
    await evening.resume()  # the organizer went on with the day
    later = await evening.submit("bob", job())
    vault.cut = cut
    with pytest.raises(StorageUnavailableError):
        await save_for_the_night(evening, vault)
    before = await load_saved_snapshot(vault)
    assert before is not None and [fields["id"] for fields in before.jobs] == [night.id]
    await save_for_the_night(evening, vault)  # the destroy, run again
    await evening.redis.flushall()
    morning = store_with()
    loaded = await load_saved_snapshot(vault)
    assert loaded is not None and (await restore_snapshot(morning, loaded)).restored == 2
    assert await morning.queued_ids() == [night.id, later.id]
    assert [key for key in await vault.list("snapshots/") if key.startswith("snapshots/queue-")] == [
        f"snapshots/{(tmp_path / 'vault' / CHECKSUM_KEY).read_text().split()[1]}"
    ]


class CountingVault(LocalStorage):
    """A vault that counts the bytes read from the snapshot's body."""

    body_read = 0

    async def get(self, key: str, start: int = 0) -> Any:
        async for chunk in super().get(key, start):
            if key.startswith("snapshots/queue-"):
                self.body_read += len(chunk)
            yield chunk


async def test_the_morning_reads_the_snapshot_from_the_vault_twice_checking_and_restoring(
    store_with: Callable[..., Store], tmp_path: Path
) -> None:
    """The morning hashes and checks the body in one read, and reads it once more to restore it
    (and still finds it changed meanwhile: the test above); it read it three times."""
    evening, vault = store_with(), CountingVault(tmp_path / "vault")
    writer = bytes_client(evening.client)
    await writer.hset(evening.keys.user_data("ada"), mapping={"workflows/w.json": os.urandom(MIB)})  # type: ignore[arg-type]
    await writer.aclose()
    queued = await evening.submit("ada", job())
    saved = await save_for_the_night(evening, vault)
    await evening.redis.flushall()
    morning = store_with()
    loaded = await open_saved_snapshot(vault)
    assert loaded is not None and (await restore_snapshot(morning, loaded)).restored == 1
    assert await morning.queued_ids() == [queued.id]
    assert vault.body_read == 2 * saved.size, f"read {vault.body_read / saved.size:g} times"


async def restored_keys(store: Store) -> list[str]:
    """The Redis's keys but the admin page's samples (the app takes them as it runs)."""
    return [key for key in await store.redis.keys("*") if not key.startswith(f"{store.prefix}:admin:")]


async def file_chunks(path: Path) -> Any:
    with path.open("rb") as handle:
        while chunk := handle.read(MIB):
            yield chunk


async def seed_saved_files(store: Store, users: int, size: int = MIB) -> dict[str, dict[str, bytes]]:
    """Each of ``users`` participants with a saved file of ``size`` random bytes."""
    files = {f"p{n:02d}": {"workflows/w.json": os.urandom(size)} for n in range(users)}
    writer = bytes_client(store.client)
    for user, saved in files.items():
        await writer.hset(store.keys.user_data(user), mapping=saved)  # type: ignore[arg-type]
        await writer.hset(store.keys.user_data_meta(user), mapping={p: f"{size} 1" for p in saved})  # type: ignore[arg-type]
    await writer.aclose()
    return files


async def saved_files_of(store: Store, users: Iterable[str]) -> dict[str, dict[str, bytes]]:
    reader = bytes_client(store.client)
    back = {user: await reader.hgetall(store.keys.user_data(user)) for user in users}
    await reader.aclose()
    return {user: {p.decode(): d for p, d in saved.items()} for user, saved in back.items()}


async def test_the_admins_snapshot_download_and_restore_upload_stream_in_memory_far_under_their_size(
    live_url: str, store: Store, tmp_path: Path
) -> None:
    """The admin page's download and upload of a snapshot go the evening's and the morning's way:
    a snapshot of 48 participants' saved files (67 MB of JSON) never sits in the queue manager's
    memory, and the upload restores every byte (it was refused past QM_MAX_BODY_BYTES' 2 MB)."""
    files = await seed_saved_files(store, 48)
    queued = await store.submit("p00", job())
    night, total = tmp_path / "night.json", sum(len(d) for saved in files.values() for d in saved.values())
    tracemalloc.start()
    try:
        async with httpx.AsyncClient(base_url=live_url, timeout=60) as http:
            async with http.stream("GET", "/api/admin/snapshot", headers=ADMIN) as download:
                assert download.status_code == 200
                with night.open("wb") as handle:
                    async for chunk in download.aiter_bytes():
                        handle.write(chunk)
            await store.redis.flushall()
            reply = await http.post("/api/admin/restore", content=file_chunks(night), headers=ADMIN)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reply.status_code == 200, reply.text[:300]
    assert reply.json()["restored"] == 1 and await store.queued_ids() == [queued.id]
    assert peak < total / 6, f"the routes held {peak / MIB:.0f} MiB for {total / MIB:.0f} MiB of files"
    assert await saved_files_of(store, files) == files


@pytest.mark.parametrize(
    ("cut", "named"),
    [
        (lambda good: good[: len(good) // 2], "not JSON"),  # a download cut short
        (lambda good: good + b"{}", "not JSON"),  # two files run together
        (lambda good: b"\xff\xfe" + good, "not JSON"),  # no UTF-8
        (lambda good: b'{"hello": "world"}', "jobs"),  # another program's JSON
        (lambda good: b"[" + good + b"]", "a snapshot is a JSON object"),
        (lambda good: b'{"version": 3, "jobs": [], "keys": {"new:x": {"type": "set"}}}', "version 3"),
        (lambda good: b'{"version": "2", "jobs": []}', "version '2'"),
    ],
)  # fmt: skip
async def test_an_uploaded_snapshot_that_is_cut_foreign_or_newer_gets_a_422_naming_it_and_writes_nothing(
    client: httpx.AsyncClient, store: Store, cut: Callable[[bytes], bytes], named: str
) -> None:
    """The upload's jobs and keys are all checked before any is written: a snapshot cut short
    after its first jobs restores none of them. One from a newer release is named as such (it
    named the first key of a family this release does not know, and the admin looked for a typo)."""
    for user in ("ada", "bob"):
        await store.submit(user, job())
    good = (await client.get("/api/admin/snapshot", headers=ADMIN)).content
    await store.redis.flushall()
    reply = await client.post("/api/admin/restore", content=cut(good), headers=ADMIN)
    assert reply.status_code == 422 and named in reply.json()["detail"], reply.text[:400]
    assert await restored_keys(store) == []


async def test_the_morning_restores_one_participants_saved_files_a_few_at_a_time(
    store_with: Callable[..., Store], tmp_path: Path
) -> None:
    """A participant at the saved-file cap is one Redis key of 32 MiB: the morning checks and
    restores it a piece at a time (it built the whole key, a few times over, in memory), and
    every file comes back, her morning's save kept beside them."""
    evening, vault = store_with(), LocalStorage(tmp_path / "vault")
    files = {f"workflows/w{i:02d}.json": os.urandom(MIB // 2) for i in range(64)}
    writer = bytes_client(evening.client)
    await writer.hset(evening.keys.user_data("ada"), mapping=files)  # type: ignore[arg-type]
    await writer.aclose()
    await save_for_the_night(evening, vault)
    await evening.redis.flushall()
    morning = store_with()
    await morning.redis.hset(morning.keys.user_data("ada"), "workflows/morning.json", "{}")
    result, peak = await restored_traced(morning, vault)
    assert peak < 32 * MIB / 3, f"the restore held {peak / MIB:.0f} MiB for her 32 MiB of saved files"
    assert result.keys == 1
    back = (await saved_files_of(morning, ["ada"]))["ada"]
    assert back == {**files, "workflows/morning.json": b"{}"}


async def test_the_evening_names_each_job_still_running_that_will_run_again_in_the_morning(
    store: Store, redis_url: str, tmp_path: Path
) -> None:
    """A job still running past the drain's timeout is saved as running and runs again the next
    morning: the destroy's output names it and its owner (it said only how many ran, then that the
    snapshot was saved), so the organizer can tell her before she waits for it twice."""
    waiting = await store.submit("ada", job())
    running = await store.submit("bob", job())
    lease = await store.claim("w1", "gpu")
    assert lease is not None and lease.job.id == waiting.id
    assert (await store.claim("w2", "gpu")) is not None
    await store.complete(waiting.id, Completion(token=lease.token))
    drained = run_cli(redis_url, "drain", "--timeout", "0")
    assert drained.returncode == 1 and f"{running.id} of bob" in drained.stdout, drained.stdout
    env = {"QM_FILES_URL": f"file://{tmp_path / 'vault'}"}
    saved = run_cli(redis_url, "save", env=env)
    assert saved.returncode == 0, saved.stderr
    assert f"{running.id} of bob" in saved.stdout and "run again" in saved.stdout, saved.stdout
    assert waiting.id not in saved.stdout


async def test_an_organizers_restore_still_uploading_when_the_evening_save_closes_keeps_the_workshop_closed(
    client: httpx.AsyncClient, store: Store
) -> None:
    """The organizer's upload was checked for the evening's save only as it began: one still under
    way when the save closed the workshop restored after the snapshot and then opened the workshop
    again, so participants' saves and GPUs went on during the destroy and were lost with it."""
    queued = await store.submit("ada", job())
    night = (await client.get("/api/admin/snapshot", headers=ADMIN)).content
    await store.redis.flushall()

    async def upload_during_the_save() -> Any:
        yield night[:10]
        await store.redis.set(store.keys.closed, "1")  # the evening's save took its snapshot
        await store.redis.set(store.keys.paused, "1")
        yield night[10:]

    reply = await client.post("/api/admin/restore", content=upload_during_the_save(), headers=ADMIN)
    assert reply.status_code == 503 and "closed for the night" in reply.text, reply.text
    assert await store.redis.exists(store.keys.closed) and await store.paused()
    assert await store.get(queued.id) is None


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"jobs": [{**QUEUED, "id": "a/../b"}]}, "'a/../b'"),
        ({"jobs": [{**QUEUED, "id": "j" * 300}]}, "id"),
        ({"jobs": [{**QUEUED, "id": "j6", "user": "../evil"}]}, "'../evil'"),
        ({"jobs": [{**QUEUED, "id": "j7", "user": "ada\n"}]}, "user"),
        ({"keys": {"ws:ud:../evil": {"type": "hash", "data": {}}}}, "'../evil'"),
        ({"keys": {"ws:hidden:" + "x" * 100_000: {"type": "set", "data": []}}}, "ws:hidden:xxx"),
    ],
)  # fmt: skip
async def test_an_uploaded_snapshot_names_only_jobs_and_participants_the_api_could_have_written(
    client: httpx.AsyncClient, store: Store, body: dict[str, Any], named: str
) -> None:
    """A job id or participant name no route accepts (a path, a newline, 100 kB) is refused with a
    422 naming it: restored, such a job could be cancelled by nobody (the routes refuse its id) and
    its outputs had no folder in the vault (users/../evil/...)."""
    reply = await client.post("/api/admin/restore", json={"jobs": [], **body}, headers=ADMIN)
    assert reply.status_code == 422 and named in reply.json()["detail"], reply.text[:300]
    assert len(reply.text) < 2000 and await restored_keys(store) == []


async def test_two_queue_managers_restoring_the_same_morning_write_each_job_once(
    store_with: Callable[..., Store], tmp_path: Path
) -> None:
    """Two queue managers' restores of one snapshot at once (a second `cli load`, a replaced
    container): each job is written by one of them, the other skips it, and the queue holds each
    once, in order. Each checked that the job was absent and wrote it in two steps, so both wrote
    it: a job the first one's open workshop had handed out meanwhile could be queued again."""
    evening, vault = store_with(), LocalStorage(tmp_path / "vault")
    ids = [(await evening.submit(user, job())).id for user in ("ada", "bob", "ada", "bob")]
    await save_for_the_night(evening, vault)
    await evening.redis.flushall()
    first, second = store_with(), store_with()
    loaded = await open_saved_snapshot(vault)
    assert loaded is not None
    results = await asyncio.gather(*(restore_snapshot(store, loaded) for store in (first, second)))
    assert sum(result.restored for result in results) == len(ids), results
    assert sum(result.skipped for result in results) == len(ids)
    assert await first.queued_ids() == ids


async def unreadable_settings(store: Store) -> str:
    """A participant's settings holding a value no release of the queue manager writes (a hand edit
    in Redis, say), among other keys and jobs; the key's name."""
    for user in ("ada", "bob"):
        await store.submit(user, job())
    await store.redis.hset(store.keys.user_settings("bob"), mapping={"Comfy.Locale": '"fr"'})
    await store.redis.hset(store.keys.user_settings("ada"), mapping={"Comfy.Locale": "{not json"})
    return store.keys.user_settings("ada")


async def test_a_key_no_snapshot_can_carry_is_named_before_the_download_begins(
    live_url: str, store: Store
) -> None:
    """The admin's download refuses, with a reason she can read, before its 200: it was cut midway
    after its 200 (the restore refuses the cut file, so nothing is lost, but she got a broken file and
    no reason)."""
    key = await unreadable_settings(store)
    async with httpx.AsyncClient(base_url=live_url, timeout=60) as http:
        reply = await http.get("/api/admin/snapshot", headers=ADMIN)
    assert reply.status_code == 409, reply.text[:300]
    assert key in reply.json()["detail"] and "not JSON" in reply.json()["detail"], reply.text


async def test_the_cli_names_a_key_no_snapshot_can_carry(
    store: Store, redis_url: str, tmp_path: Path
) -> None:
    """``cli snapshot`` and the evening's ``cli save`` say which key stops them, without a traceback,
    and leave no file behind; the destroy stops there and the workshop goes on."""
    key = await unreadable_settings(store)
    out, vault = tmp_path / "queue.json", tmp_path / "vault"
    for reply in (
        run_cli(redis_url, "snapshot", "--out", str(out)),
        run_cli(redis_url, "save", env={"QM_FILES_URL": vault.as_uri()}),
    ):
        assert reply.returncode == 2 and key in reply.stderr and "Traceback" not in reply.stderr, reply.stderr
    assert not out.exists() and not (vault / "snapshots").exists()
    assert not await store.redis.exists(store.keys.closed)


async def test_a_day_resumed_after_the_evening_save_no_longer_lists_its_jobs_as_running_again(
    client: httpx.AsyncClient, store: Store, tmp_path: Path
) -> None:
    """The organizer stopped the destroy after its save and pressed Resume: the job the save held as
    running runs on today and is saved anew tonight, so the admin page no longer says it runs again
    tomorrow (nor, the next day, that it was carried over)."""
    running = await store.submit("bob", job())
    assert (await store.claim("w1", "gpu")) is not None
    await save_for_the_night(store, LocalStorage(tmp_path / "vault"))
    evening = (await client.get("/api/admin/queue", headers=ADMIN)).json()
    assert evening["closed"] and [(j["id"], j["user"], j["worker"]) for j in evening["carried"]] == [
        (running.id, "bob", "w1")
    ]
    assert (await client.post("/api/admin/resume", headers=ADMIN)).status_code == 204
    day = (await client.get("/api/admin/queue", headers=ADMIN)).json()
    assert not day["closed"] and day["carried"] == []
