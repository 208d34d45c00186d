"""Snapshot and restore of everything participants see, for the evening ``pulumi destroy`` and the
morning ``up``.

A snapshot is JSON: every job record (waiting, running, finished within retention, dead letters)
as its Redis hash fields, plus every key of the families ``keys.py`` marks ``COPIED`` (saved
workflows, templates, settings, hidden history, priorities, the fair scheduler's rounds, the submit
counter, the node catalogue). Restoring puts waiting jobs back in line at their old place; jobs that
were running when the snapshot was taken are requeued without counting the interrupted attempt
(their workers are gone); finished records keep what is left of their retention. Restore skips jobs
that already exist and merges keys into what is there (a participant's save before the restore
keeps last evening's files next to it), so restoring the same file twice changes nothing. Jobs
queued before the restore ran (the workspaces answer first) then wait behind the snapshot's queue,
as if queued just after it: their fresh Redis had given them round 0 and queue number 1.

In the vault (user-file storage) the snapshot sits at ``snapshots/queue-<time taken>.json``, and
``snapshots/queue.json.sha256`` holds its sha256 and names it; ``snapshots/started`` says the
workshop ran before. The evening streams the snapshot (a few records and saved files at a time,
never all of it in memory) and writes the checksum file last, so a save cut midway leaves the last
complete snapshot named, never a half-written one. A restore refuses a snapshot whose checksum
does not match, and a missing one once the workshop has started: the morning fails loudly instead
of opening on an empty queue. The morning streams too (``open_saved_snapshot``): in one read it
hashes the body and parses it with ijson, checking every job and key as the ``Snapshot`` model
does, before writing anything; then it reads it once more to restore it job by job and key by key
(hashing it again: a body changed in the vault meanwhile stops the restore, naming it), so a
corrupt or foreign snapshot restores nothing. A key is read, checked and restored a piece at a time
(``_KeyPieces``: a participant's saved files a few at a time), so memory stays near a few saved
files, never one participant's all (32 MiB at the cap).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import math
import re
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import ijson
from ijson.common import ObjectBuilder
from pydantic import BaseModel, Field, TypeAdapter, field_validator
from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import WatchError

from services.protocol.jobs import PROMPT_ID
from services.queue_manager.errors import QueueError, WorkshopClosed
from services.queue_manager.keys import ANY_POOL, Carried, Family, family_of
from services.queue_manager.queue_admin import CarriedJob
from services.queue_manager.records import job_from_hash, now_ms
from services.queue_manager.scripts import OpenDayArgs, RejoinArgs
from services.queue_manager.store import Store
from services.storage.base import Storage, aiter_chunks
from services.storage.local import LocalStorage

log = logging.getLogger(__name__)
REQUIRED_FIELDS = ("id", "user", "state", "scope", "score", "queued_at")
RUNNING = ("leased", "running")
SNAPSHOTS = "snapshots/"
SNAPSHOT_KEY = "snapshots/queue.json"  # the body's name before it carried the time (and version 1's)
CHECKSUM_KEY = "snapshots/queue.json.sha256"  # "<sha256>  <body's name>": names the current snapshot
STARTED_KEY = "snapshots/started"
UPLOADED = "snapshot.json"  # the admin's upload on disk while it is checked and restored
BODY_NAME = re.compile(r"queue(?:-([0-9]{8}T[0-9]{12}Z))?\.json")
KeyType = Literal["hash", "set", "zset", "string", "list"]


class SnapshotError(Exception):
    """A snapshot that cannot be restored; the message says what is wrong and how to go on."""


class StoredKey(BaseModel):
    """One Redis key of a copied family; names, members and values base64 (they may be bytes)."""

    type: KeyType
    data: Any


# A user's name as the queue manager may have written it: a participant's or the admin's (USER_NAME;
# wider here, as releases before the admin's name was checked took QM_ADMIN_USER as it was): never a
# folder of the vault's paths (users/<name>/...) nor a line of its own
SAVED_USER = re.compile(r"(?!\.\.?\Z)[^/\\\x00-\x1f\x7f]{1,128}")
# What a copied key's name may hold in place of its family's placeholder
NAMES: dict[str, re.Pattern[str]] = {"u": SAVED_USER, "hash": re.compile(r"(?s).{1,128}")}


def _copied_name(name: str) -> str:
    family = family_of(f"p:{name}", "p")
    if family is None or family.carried is not Carried.COPIED:
        raise ValueError(f"{name[:80]!r} is not a key of a family the snapshot carries (keys.py)")
    literal = re.split(r"\{[a-z]+\}", family.pattern)[0]
    placeholder = re.search(r"\{([a-z]+)\}", family.pattern)
    named = name.removeprefix(literal)
    if placeholder is not None and not NAMES[placeholder.group(1)].fullmatch(named):
        raise ValueError(
            f"{name[:80]!r} names {named[:80]!r}, no {placeholder.group(0)} the queue manager writes"
        )
    return name


MAX_COUNTER = 10**18 - 1  # a counter Redis can still INCR (a signed 64-bit integer), with room


def _integer(raw: bytes) -> None:
    if not re.fullmatch(rb"-?[0-9]{1,18}", raw):
        raise ValueError("not an integer")


def _number(raw: bytes) -> None:
    """A number as Lua's ``tonumber`` reads it (and writes it: ``2.5``, ``1e+15``)."""
    if not re.fullmatch(rb"-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,3})?", raw):
        raise ValueError("not a number")


def _json(raw: bytes) -> None:
    try:
        json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError too
        raise ValueError(f"not JSON ({exc})") from None


def _size_and_time(raw: bytes) -> None:
    if not re.fullmatch(rb"[0-9]{1,18} [0-9]{1,18}", raw):
        raise ValueError('not "<size> <modified ms>"')


# What the queue manager reads back from a copied family's values (string: the value; hash: each
# field's value), so a restored key can never make a later read or script fail.
VALUES: dict[str, Callable[[bytes], None]] = {
    "seq": _integer,
    "fair:round": _number,
    "fair:queue_round": _number,
    "user_priority": _integer,
    "fair:user_round": _number,
    "fair:user_served": _number,
    "catalogue:{hash}": _json,
    "catalogue_pending": _json,
    "ws:settings:{u}": _json,
    "ws:udmeta:{u}": _size_and_time,
}


def _raw_strict(data: Any) -> bytes:
    if not isinstance(data, str):
        raise ValueError("a name, member or value must be a base64 string")
    return _raw(data)


def _values(stored: StoredKey) -> list[bytes]:
    """The key's values in the shape its type has (members, scores and values checked on the way)."""
    data = stored.data
    if stored.type == "string":
        return [_raw_strict(data)]
    if stored.type == "hash" and isinstance(data, dict):
        for field in data:
            _raw_strict(field)
        return [_raw_strict(value) for value in data.values()]
    if stored.type in ("set", "list") and isinstance(data, list):
        return [_raw_strict(item) for item in data]
    if stored.type == "zset" and isinstance(data, list):
        for pair in data:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], int | float)):
                raise ValueError("a sorted set is a list of [member, score]")
            if not math.isfinite(pair[1]):
                raise ValueError("a score must be a finite number")
            _raw_strict(pair[0])
        return []
    raise ValueError(f"data does not have the shape of a {stored.type}")


def _check_values(name: str, family: Family, values: Iterable[bytes]) -> None:
    """Each value as the family's reader accepts it (``VALUES``); ``ValueError`` naming the key."""
    check = VALUES.get(family.pattern)
    try:
        for value in values:
            if check is not None:
                check(value)
    except (ValueError, binascii.Error) as exc:  # json's and base64's errors are ValueErrors
        raise ValueError(f"{name[:80]!r} holds a value the queue manager cannot read: {exc}") from None


def _check_key(name: str, stored: StoredKey) -> None:
    """A copied key as the queue manager itself would have written it: its family's type and a
    value each reader accepts. Raises ``ValueError`` naming the key and what is wrong."""
    family = family_of(f"p:{_copied_name(name)}", "p")
    assert family is not None
    if stored.type != family.type:
        raise ValueError(f"{name[:80]!r} is a {family.type} in keys.py, not a {stored.type}")
    try:
        values = _values(stored)
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"{name[:80]!r} holds a value the queue manager cannot read: {exc}") from None
    _check_values(name, family, values)


def _check_job(fields: dict[str, str]) -> None:
    """A job record the queue manager can read back (``records.job_from_hash``) and restore (which
    reads ``queued_at`` and ``finished_at`` as integers and ``score`` as a number)."""
    try:
        if not PROMPT_ID.fullmatch(fields["id"]):
            raise ValueError(f"its id is not a prompt_id the API accepts ({PROMPT_ID.pattern})")
        if not SAVED_USER.fullmatch(fields["user"]):
            raise ValueError(f"its user {fields['user'][:80]!r} is no name (1-128 characters, no '/')")
        job_from_hash(fields)
        int(fields["queued_at"]), int(fields.get("finished_at") or "0")
        if not math.isfinite(float(fields["score"])):
            raise ValueError("score is not a finite number")
    except (ValueError, TypeError, KeyError, OverflowError, OSError) as exc:  # a time out of range too
        job_id = str(fields.get("id", "?"))[:80]
        raise ValueError(f"job {job_id!r} is not a job record the queue manager wrote: {exc}") from None


class Snapshot(BaseModel):
    version: Literal[1, 2] = 2  # VERSIONS
    taken_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    jobs: list[dict[str, str]] = Field(description="job hash fields as stored in Redis (keys.py)")
    keys: dict[str, StoredKey] = Field(
        default_factory=dict, description="keys of the COPIED families (keys.py), named without the prefix"
    )
    # Bounded as the queue manager writes them (the admin route's priorities, Redis's 64-bit INCR)
    user_priorities: dict[str, Annotated[int, Field(ge=-100, le=100)]] = Field(
        default_factory=dict, description="version 1 only"
    )
    seq: int = Field(default=0, ge=0, le=MAX_COUNTER, description="version 1 only")

    @field_validator("keys")
    @classmethod
    def _only_copied_families(cls, keys: dict[str, StoredKey]) -> dict[str, StoredKey]:
        for name, stored in keys.items():
            _check_key(name, stored)
        return keys

    @field_validator("jobs")
    @classmethod
    def _only_readable_jobs(cls, jobs: list[dict[str, str]]) -> list[dict[str, str]]:
        for fields in jobs:
            if all(fields.get(name) for name in REQUIRED_FIELDS):  # the others are skipped at restore
                _check_job(fields)
        return jobs


class RestoreResult(BaseModel):
    restored: int
    requeued: int
    skipped: int
    keys: int = 0


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _raw(data: str) -> bytes:
    return base64.b64decode(data, validate=True)


def bytes_client(redis: Redis) -> Redis:
    """A client on the same server that answers bytes (saved files need not be UTF-8)."""
    pool = redis.connection_pool
    kwargs = {**pool.connection_kwargs, "decode_responses": False}
    return Redis(connection_pool=ConnectionPool(connection_class=pool.connection_class, **kwargs))


FIELDS_AT_ONCE = 8  # a hash's fields read per call: saved files may be MBs each
JOBS_AT_ONCE = 16  # job records read per call: a workflow may be MBs


async def _hash_data(redis: Redis, key: bytes, family: Family, name: str) -> AsyncIterator[bytes]:
    """A hash as the JSON object ``{field: value}`` (base64), a few fields at a time."""
    fields: list[Any] = sorted(await redis.hkeys(key))
    yield b"{"
    for start in range(0, len(fields), FIELDS_AT_ONCE):
        batch = fields[start : start + FIELDS_AT_ONCE]
        values: list[Any] = await redis.hmget(key, batch)
        _check_values(name, family, [value for value in values if value is not None])
        yield (b"," if start else b"") + b",".join(
            f'"{_b64(field)}":"{_b64(value)}"'.encode()
            for field, value in zip(batch, values, strict=True)
            if value is not None
        )
    yield b"}"


async def _set_data(redis: Redis, key: bytes, family: Family, name: str) -> AsyncIterator[bytes]:
    members: list[Any] = sorted(await redis.smembers(key))
    _check_values(name, family, members)
    yield json.dumps([_b64(member) for member in members]).encode()


async def _zset_data(redis: Redis, key: bytes, family: Family, name: str) -> AsyncIterator[bytes]:
    pairs: list[Any] = await redis.zrange(key, 0, -1, withscores=True)
    yield json.dumps([[_b64(member), score] for member, score in pairs]).encode()


async def _string_data(redis: Redis, key: bytes, family: Family, name: str) -> AsyncIterator[bytes]:
    value: Any = await redis.get(key) or b""
    _check_values(name, family, [value])
    yield f'"{_b64(value)}"'.encode()


async def _list_data(redis: Redis, key: bytes, family: Family, name: str) -> AsyncIterator[bytes]:
    items: list[Any] = await redis.lrange(key, 0, -1)
    _check_values(name, family, items)
    yield json.dumps([_b64(item) for item in items]).encode()


# Each copied family's type as the snapshot's JSON, streamed (``snapshot_json``), values checked as
# the restore will check them, so an unreadable key stops the evening's save, not the morning.
READERS: dict[str, Callable[[Redis, bytes, Family, str], AsyncIterator[bytes]]] = {
    "hash": _hash_data,
    "set": _set_data,
    "zset": _zset_data,
    "string": _string_data,
    "list": _list_data,
}


async def _merge(redis: Redis, key: str, stored: StoredKey) -> bool:
    """Add what the key held in the snapshot to what it holds now, what is there now winning (a
    participant may have saved a setting or a workflow before the restore ran): a hash's missing
    fields, a set's missing members, a string or list only when the key is absent. True when
    anything was written."""
    data = stored.data
    if stored.type == "hash":
        async with redis.pipeline(transaction=True) as pipe:
            for field, value in data.items():
                pipe.hsetnx(key, _raw(field), _raw(value))
            return any(await pipe.execute())
    if stored.type == "set":
        return bool(data) and bool(await redis.sadd(key, *[_raw(m) for m in data]))
    if stored.type == "zset":
        return bool(data) and bool(await redis.zadd(key, {_raw(m): float(s) for m, s in data}, nx=True))
    if stored.type == "string":
        return bool(await redis.set(key, _raw(data), nx=True))
    if await redis.exists(key) or not data:
        return False
    return bool(await redis.rpush(key, *[_raw(item) for item in data]))


async def _copied_names(redis: Redis, prefix: str) -> list[tuple[bytes, Family]]:
    found = []
    async for raw_key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        family = family_of(raw_key.decode(), prefix)
        if family is not None and family.carried is Carried.COPIED and family.type in READERS:
            found.append((raw_key, family))
    return sorted(found, key=lambda pair: pair[0])


async def _keys_json(store: Store) -> AsyncIterator[bytes]:
    """The ``keys`` object: every key of a ``COPIED`` family, named without the prefix."""
    prefix, redis = store.keys.prefix, bytes_client(store.client)
    try:
        for index, (raw_key, family) in enumerate(await _copied_names(redis, prefix)):
            name = _copied_name(raw_key.decode().removeprefix(f"{prefix}:"))  # as the morning checks it
            yield f'{"," if index else ""}{json.dumps(name)}:{{"type":"{family.type}","data":'.encode()
            async for piece in READERS[family.type](redis, raw_key, family, name):
                yield piece
            yield b"}"
    finally:
        await redis.aclose()


async def check_carried(store: Store) -> None:
    """Every job and key the snapshot would carry, checked as its stream checks them (and the restore
    will), before any of it is sent or saved: ``SnapshotError`` naming the first the queue manager
    cannot carry (a value no release writes: a hand edit in Redis, say) and how to go on. Only the
    families whose values are checked are read (``VALUES``), never the saved files."""
    prefix, redis = store.keys.prefix, bytes_client(store.client)
    try:
        for raw_key, family in await _copied_names(redis, prefix):
            where = raw_key.decode(errors="replace")
            try:
                name = _copied_name(where.removeprefix(f"{prefix}:"))
                found: Any = await redis.type(raw_key)  # bytes, from this client
                found = found.decode()
                if found != family.type:
                    raise ValueError(f"{name[:80]!r} is a {found} in Redis, a {family.type} in keys.py")
                if family.pattern in VALUES:
                    async for _ in READERS[family.type](redis, raw_key, family, name):
                        pass
            except ValueError as exc:
                raise _uncarried(where, exc) from None
    finally:
        await redis.aclose()
    async for fields in _job_records(store):
        if all(fields.get(name) for name in REQUIRED_FIELDS):
            try:
                _check_job(fields)
            except ValueError as exc:
                raise _uncarried(store.keys.job(fields["id"]), exc) from None


def _uncarried(key: str, exc: ValueError) -> SnapshotError:
    return SnapshotError(
        f"no snapshot was taken: Redis key {key[:120]!r} is not one the queue manager wrote, and no "
        f"restore would take it ({exc}). Delete it (redis-cli DEL) or write it back as the queue manager "
        "writes it, then take the snapshot again"
    )


async def _job_ids(store: Store) -> list[str]:
    keys, redis = store.keys, store.redis
    scopes = await redis.smembers(keys.scopes)
    async with redis.pipeline(transaction=True) as pipe:
        for key in [keys.queue(scope) for scope in scopes] + [
            keys.delayed,
            keys.leases,
            keys.finished,
            keys.dead,
        ]:
            pipe.zrange(key, 0, -1)
        id_lists = await pipe.execute()
    return list(dict.fromkeys(job_id for ids in id_lists for job_id in ids))


async def _job_records(store: Store) -> AsyncIterator[dict[str, str]]:
    """Every job record the snapshot carries, read a few at a time."""
    ids = await _job_ids(store)
    for start in range(0, len(ids), JOBS_AT_ONCE):
        async with store.redis.pipeline(transaction=False) as pipe:
            for job_id in ids[start : start + JOBS_AT_ONCE]:
                pipe.hgetall(store.keys.job(job_id))
            records = await pipe.execute()
        for fields in records:
            if fields:
                yield fields


async def _jobs_json(store: Store, running: list[CarriedJob]) -> AsyncIterator[bytes]:
    """The ``jobs`` list's items, a few records at a time (each checked as the restore reads it);
    each job still running goes into ``running``."""
    first = True
    async for fields in _job_records(store):
        if all(fields.get(name) for name in REQUIRED_FIELDS):
            _check_job(fields)
        if fields.get("state") in RUNNING:
            running.append(CarriedJob.of(fields))
        yield (b"" if first else b",") + json.dumps(fields).encode()
        first = False


async def still_running(store: Store) -> list[str]:
    """The jobs running now as the organizer is told of them (``CarriedJob``), oldest lease first."""
    ids = await store.redis.zrange(store.keys.leases, 0, -1)
    async with store.redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(store.keys.job(job_id), ["user", "worker_id"])
        found = await pipe.execute()
    return [
        str(CarriedJob.of({"id": i, "user": u or "?", "worker_id": w}))
        for i, (u, w) in zip(ids, found, strict=True)
    ]


async def snapshot_json(
    store: Store, taken_at: datetime, running: list[CarriedJob] | None = None
) -> AsyncIterator[bytes]:
    """The snapshot (a ``Snapshot``'s JSON) as a stream, built a few records and saved files at a
    time: a hundred participants' saved files are GBs, which the save never holds at once. The
    evening's save runs it on a closed workshop, where nothing it reads changes meanwhile. The jobs
    it holds as running (they run again once restored) go into ``running``."""
    yield f'{{"version":2,"taken_at":{json.dumps(taken_at.isoformat())},"jobs":['.encode()
    async for piece in _jobs_json(store, [] if running is None else running):
        yield piece
    yield b'],"keys":{'
    async for piece in _keys_json(store):
        yield piece
    yield b"}}"


async def take_snapshot(store: Store) -> Snapshot:
    """The snapshot in memory, for tests (the admin's download, the CLI's file and the evening
    stream ``snapshot_json``)."""
    data = b"".join([piece async for piece in snapshot_json(store, datetime.now(UTC))])
    return Snapshot.model_validate_json(data)


async def restore_snapshot(
    store: Store, snapshot: Snapshot | StoredSnapshot, resume: bool = True
) -> RestoreResult:
    """Write the snapshot back (see the module's docstring); ``resume`` dispatch when done. A
    snapshot in the vault is read from it again, one job and one key at a time."""
    head = snapshot.head if isinstance(snapshot, StoredSnapshot) else snapshot
    result = RestoreResult(restored=0, requeued=0, skipped=0)
    now, redis, written = now_ms(), bytes_client(store.client), set()
    try:
        async for fields, key in _entries_of(snapshot):
            if key is not None:
                if await _merge(redis, f"{store.keys.prefix}:{key[0]}", key[1]):
                    written.add(key[0])  # a large key comes in pieces
            elif await _restore_if_new(store, fields, now, result):
                result.requeued += 1
    finally:
        await redis.aclose()
    result.keys = len(written)
    carried = [CarriedJob.of(fields) for fields in head.jobs if fields.get("state") in RUNNING]
    if carried:  # shown on the admin page: they run again, first in line
        await store.carry(carried)
    await _restore_globals(store, head)
    await store.scripts.run(_rejoin(store, head))
    if resume:
        await store.resume()
    return result


async def _restore_if_new(store: Store, fields: dict[str, str], now: int, result: RestoreResult) -> bool:
    """Write a job back unless it is incomplete or already there (counted skipped), in one step
    with that check (a second restore of the same snapshot at once writes it once: the other skips
    it); True when it waits in a queue again."""
    key = store.keys.job(fields.get("id", ""))
    if not all(fields.get(name) for name in REQUIRED_FIELDS):
        result.skipped += 1
        return False
    transaction: Any = store.redis.pipeline(transaction=True)  # redis-py's stubs lack WATCH on it
    async with transaction as pipe:
        await pipe.watch(key)
        if await pipe.exists(key):
            result.skipped += 1
            return False
        pipe.multi()
        waiting = _restore_job(pipe, store, dict(fields), now)
        try:
            await pipe.execute()
        except WatchError:  # another restore wrote it meanwhile
            result.skipped += 1
            return False
    result.restored += 1
    return waiting


def _restore_job(pipe: Any, store: Store, fields: dict[str, str], now: int) -> bool:
    """Queue the writes of one job on ``pipe``; True when it will be waiting in a queue again."""
    keys, job_id, user = store.keys, fields["id"], fields["user"]
    waiting = fields["state"] == "queued" or fields["state"] in RUNNING
    if fields["state"] in RUNNING:
        fields.update(
            state="queued",
            attempts=str(max(0, int(fields.get("attempts") or 1) - 1)),
            token="",
            worker_id="",
            lease_expires="",
        )
    pipe.hset(keys.job(job_id), mapping=fields)
    pipe.zadd(keys.user_jobs(user), {job_id: int(fields["queued_at"])})
    pipe.sadd(keys.users, user)
    if waiting:
        scope = fields["scope"] or ANY_POOL
        pipe.zadd(keys.queue(scope), {job_id: float(fields["score"])})
        pipe.sadd(keys.scopes, scope)
        pipe.sadd(keys.user_queued(user), job_id)
    else:
        _restore_finished(pipe, store, fields, now)
    return waiting


class UncarriedQueue(QueueError):
    """The admin's download of a snapshot, refused before its 200: the queue holds a key or job no
    snapshot can carry (``check_carried``). A stream cut midway gave her a broken file and no reason."""

    status = 409


async def snapshot_download(store: Store) -> AsyncIterator[bytes]:
    """The admin's download: checked whole first (``check_carried``: 409 naming what stops it), then
    streamed as the evening's save streams it. A key changed into an unreadable one between the two
    (only a hand edit in Redis does that) still cuts the stream, which no restore takes."""
    try:
        await check_carried(store)
    except SnapshotError as exc:
        raise UncarriedQueue(str(exc)) from None
    return snapshot_json(store, datetime.now(UTC))


class UnreadableSnapshot(QueueError):
    """The admin's upload is not a snapshot this queue manager can restore (malformed, cut short,
    from another program or a newer release): nothing was written."""

    status = 422


async def restore_by_organizer(store: Store, chunks: AsyncIterable[bytes]) -> RestoreResult:
    """The admin page's restore of an uploaded snapshot: spooled to a file on disk, checked in one
    read and restored in a second (the morning's path: memory stays near one saved file); 422
    naming the fault, writing nothing, when it is no snapshot. Refused after the evening's snapshot
    (503: what it restores would vanish with the Redis, and dispatch would go on during the
    destroy), even one taken while the upload came or the restore ran (``lua/open_day.lua``: the
    workshop stays closed); dispatch goes on after it (it opens a queue manager that waited for the
    morning's restore)."""
    if await store.redis.exists(store.keys.closed):
        raise WorkshopClosed()
    with tempfile.TemporaryDirectory(prefix="qm-restore-") as folder:
        await LocalStorage(Path(folder)).put(UPLOADED, chunks)
        try:
            loaded = await open_snapshot_file(Path(folder) / UPLOADED, "the uploaded snapshot")
        except SnapshotError as exc:
            raise UnreadableSnapshot(str(exc)) from None
        if await store.redis.exists(store.keys.closed):  # the evening's save began during the upload
            raise WorkshopClosed()
        result = await restore_snapshot(store, loaded, resume=False)
    if not await store.scripts.run(OpenDayArgs(store.prefix)):  # the save began during the restore
        raise WorkshopClosed()
    return result


def _restore_finished(pipe: Any, store: Store, fields: dict[str, str], now: int) -> None:
    keys, job_id = store.keys, fields["id"]
    finished_at = int(fields.get("finished_at") or now)
    left_ms = max(1000, finished_at + store.retention_ms - now)
    pipe.pexpire(keys.job(job_id), left_ms)
    pipe.zadd(keys.finished, {job_id: finished_at})
    if fields.get("dead") == "1":
        pipe.zadd(keys.dead, {job_id: finished_at})


async def _restore_globals(store: Store, snapshot: Snapshot) -> None:
    keys = store.keys
    if snapshot.user_priorities:
        await store.redis.hset(keys.user_priority, mapping=snapshot.user_priorities)
    # The counter goes on after the snapshot's, even past submits made before the restore ran
    saved = snapshot.keys.get("seq")
    counter = max(snapshot.seq, int(_raw(saved.data)) if saved is not None else 0)
    if counter > int(await store.redis.get(keys.seq) or 0):
        await store.redis.set(keys.seq, counter)


def _rejoin(store: Store, snapshot: Snapshot) -> RejoinArgs:
    """Jobs queued before the restore ran wait behind the snapshot's queue, once per Redis and
    snapshot (``lua/rejoin.lua``, which notes it in ``{p}:holds``)."""

    def text(name: str) -> Any:
        stored = snapshot.keys.get(name)
        if stored is None:
            return {} if name != "fair:round" else ""
        if stored.type == "string":
            return _raw(stored.data).decode(errors="replace")
        return {
            _raw(f).decode(errors="replace"): _raw(v).decode(errors="replace") for f, v in stored.data.items()
        }

    night = {name: text(f"fair:{name}") for name in ("round", "queue_round", "user_round", "user_served")}
    return RejoinArgs(
        store.prefix,
        store.settings.scheduling.value,
        snapshot.taken_at.isoformat(),
        json.dumps(night),
        tuple(fields["id"] for fields in snapshot.jobs if fields.get("state") in ("queued", *RUNNING)),
    )


def _strays(snapshot: Snapshot, field: str, known: set[str]) -> dict[str, int]:
    """The snapshot's waiting or interrupted jobs whose ``field`` names nothing in ``known``, counted
    by that name."""
    counts: dict[str, int] = {}
    for fields in snapshot.jobs:
        name = fields.get(field, "")
        if fields.get("state") in ("queued", *RUNNING) and name not in known:
            counts[name] = counts.get(name, 0) + 1
    return counts


def absent_owners(snapshot: Snapshot, users: set[str]) -> dict[str, int]:
    """Who owns the snapshot's waiting or interrupted jobs but is no user now (a participant
    removed or renamed in the config overnight), with how many such jobs each."""
    return _strays(snapshot, "user", users)


def stranded_pools(snapshot: Snapshot, pools: set[str]) -> dict[str, int]:
    """Pools the snapshot's waiting or interrupted jobs are pinned to that the config no longer has
    (no worker could take them: a submit naming such a pool is refused), with how many jobs each."""
    return _strays(snapshot, "pool", {"", *pools})


class SavedSnapshot(BaseModel):
    """What the evening's save put in the vault: its body's key, when it was taken, its size, and
    the jobs it holds as running: they run again once it is restored."""

    key: str
    taken_at: datetime
    size: int
    running: list[CarriedJob] = Field(default_factory=list)


def _body_key(taken_at: datetime) -> str:
    return f"{SNAPSHOTS}queue-{taken_at.astimezone(UTC):%Y%m%dT%H%M%S%fZ}.json"


async def _pointer(storage: Storage) -> tuple[str, str] | None:
    """The vault's current snapshot as its checksum file names it: (sha256, body key); None when
    there is no checksum file. The body is the file beside it that it names (``queue.json`` for
    snapshots saved before the name carried the time)."""
    if not await storage.exists(CHECKSUM_KEY):
        return None
    text = (await _read_all(storage, CHECKSUM_KEY)).decode(errors="replace").split()
    name = text[1] if len(text) > 1 else "queue.json"
    if not BODY_NAME.fullmatch(name):
        raise SnapshotError(
            f"{CHECKSUM_KEY} names {name[:80]!r}, not a snapshot of this workshop (queue-<time>.json): put "
            "back the checksum file the evening's save wrote"
        )
    return (text[0] if text else ""), SNAPSHOTS + name


def _taken_at_of(key: str) -> datetime | None:
    """When the snapshot in ``key`` was taken, from its name (None for a name without the time)."""
    stamp = BODY_NAME.fullmatch(key.removeprefix(SNAPSHOTS))
    if stamp is None or stamp.group(1) is None:
        return None
    return datetime.strptime(stamp.group(1), "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)


async def _started_at(storage: Storage) -> datetime | None:
    if not await storage.exists(STARTED_KEY):
        return None
    try:
        return datetime.fromisoformat((await _read_all(storage, STARTED_KEY)).decode().strip())
    except (UnicodeDecodeError, ValueError):
        return None


async def unrestored_snapshot(storage: Storage, held: str | None = None) -> StoredSnapshot | None:
    """The vault's snapshot when no morning restored it (the up's restore failed or never ran:
    ``mark_started`` follows every restore) and it is not the one ``held`` names (``{p}:holds``:
    the snapshot this Redis saved or restored, ``taken_at``), else None. Raises ``SnapshotError``
    as ``open_saved_snapshot`` does when it is corrupt."""
    pointer = await _pointer(storage)
    if pointer is None and not await storage.exists(SNAPSHOT_KEY):
        return None
    taken_at = _taken_at_of(pointer[1]) if pointer is not None else None
    started = await _started_at(storage)
    if taken_at is not None and (
        (started is not None and started >= taken_at) or (held is not None and held == taken_at.isoformat())
    ):
        return None  # known from its name: the (maybe GBs) snapshot itself is not read
    saved = await open_saved_snapshot(storage)
    if saved is None or (started is not None and started >= saved.taken_at):
        return None
    if held is not None and held == saved.taken_at.isoformat():
        return None
    return saved


async def save_for_the_night(store: Store, storage: Storage) -> SavedSnapshot:
    """The evening: snapshot the queue into the vault. Every change of what participants have (a
    save, a submit, a cancel, a deletion, the organizer's priority, requeue or catalogue approval)
    is refused from just before (``{p}:closed``, checked in the scripts that make them): none can
    land after the snapshot and vanish with the Redis. A save that fails stops the destroy, and the
    workshop goes on as before the drain (``resume``: dispatching, taking saves), as after the
    morning's restore or the organizer's Resume. A snapshot there that no morning restored is
    merged into the queue first (dispatch stays paused), so today's save never writes over it;
    unless this Redis holds it (``{p}:holds``: it took it, and a day was resumed after a destroy
    that stopped past its save). Returns what was saved."""
    await store.redis.set(store.keys.closed, "1")
    try:
        unrestored = await unrestored_snapshot(storage, await store.redis.get(store.keys.holds))
        if unrestored is not None:
            merged = await restore_snapshot(store, unrestored, resume=False)
            log.warning("merged %d jobs of a snapshot no morning restored into tonight's", merged.restored)
        saved = await save_snapshot(store, storage)
        await store.redis.set(store.keys.holds, saved.taken_at.isoformat())
        await store.carry(saved.running)  # the admin page names them until the destroy ends
        return saved
    except BaseException:
        await store.resume()  # the destroy stops here: the workshop goes on as before its drain
        raise


async def _hashed(chunks: AsyncIterator[bytes], digest: Any) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        digest.update(chunk)
        yield chunk


async def save_snapshot(store: Store, storage: Storage) -> SavedSnapshot:
    """Stream the snapshot into the vault under a new name (``queue-<time>.json``), then its
    sha256 into the checksum file, which names it: that one small write is the switch. A save cut
    anywhere before it (a drain stopped, the vault gone midway) leaves the checksum file naming
    the last complete snapshot, never a half-written one. Older snapshots (and pieces of cut
    saves) are deleted after."""
    await check_carried(store)
    taken_at, running = datetime.now(UTC), list[CarriedJob]()
    key, digest = _body_key(taken_at), hashlib.sha256()
    body = _hashed(snapshot_json(store, taken_at, running), digest)
    size = await storage.put(key, body, "application/json")
    line = f"{digest.hexdigest()}  {key.removeprefix(SNAPSHOTS)}\n".encode()
    await storage.put(CHECKSUM_KEY, aiter_chunks(line), "text/plain")
    for old in await storage.list(f"{SNAPSHOTS}queue"):
        if old != key and BODY_NAME.fullmatch(old.removeprefix(SNAPSHOTS)):
            await storage.delete(old)
    return SavedSnapshot(key=key, taken_at=taken_at, size=size, running=running)


async def _read_all(storage: Storage, key: str) -> bytes:
    return b"".join([chunk async for chunk in storage.get(key)])


Entry = tuple[dict[str, str], tuple[str, StoredKey] | None]  # a job's fields, or ({}, (name, key))
JOB_FIELDS: TypeAdapter[dict[str, str]] = TypeAdapter(dict[str, str])
OPENS, CLOSES = ("start_map", "start_array"), ("end_map", "end_array")
OPENED = object()  # the item ``_Items`` gives for ``jobs`` or ``keys`` as it goes into it
KEY_END = object()  # the item ``_Items`` gives at the end of a key's object
STREAMED = {"hash": "start_map", "set": "start_array", "zset": "start_array"}  # data read a piece at a time
PIECE_BYTES = 1024 * 1024  # about how much of a key's values (base64) one restored piece holds


@dataclass
class KeyPart:
    """A field of a key's object (``type``, or ``data`` whole), ``items`` as its data (a hash's
    or a set's) is gone into, or one ``item`` of it: (hash field or None, value)."""

    field: str
    value: Any


class _Items:
    """Cuts a snapshot's JSON events (ijson's) into its items: each job of ``jobs``, each other
    top-level field, and each key of ``keys`` in parts (``KeyPart``: a hash's fields and a set's
    members one by one, never the whole key), as (section, key name or None, value)."""

    def __init__(self) -> None:
        self.level, self.nest, self.section, self.name, self.field, self.member = 0, 0, "", "", "", ""
        self.key_type: Any = None
        self.builder: Any = None

    def feed(self, event: str, value: Any) -> tuple[str, str | None, Any] | None:
        if self.builder is not None:
            return self._build(event, value)
        if event == "map_key":
            self._named(value)
            return None
        if event in CLOSES:
            self.level -= 1
            return (self.section, self.name, KEY_END) if self.level == 2 and self.section == "keys" else None
        if self._descends(event):
            self.level += 1
            if self.level == 3:
                self.key_type, self.field = None, ""
            if self.level == 4:
                return self.section, self.name, KeyPart("items", None)
            return (self.section, None, OPENED) if self.level == 2 else None
        if self.level == 0:
            raise ValueError("a snapshot is a JSON object")
        self.builder, self.nest = ObjectBuilder(), 0
        return self._build(event, value)

    def _named(self, value: str) -> None:
        if self.level == 1:
            self.section, self.name = value, ""
        elif self.level == 2:
            self.name = value
        elif self.level == 3:
            self.field = value
        else:
            self.member = value

    def _descends(self, event: str) -> bool:
        if self.level == 0:
            return event == "start_map"
        if self.level == 1:
            return (self.section, event) in (("jobs", "start_array"), ("keys", "start_map"))
        if self.section != "keys":
            return False
        if self.level == 2:
            return event == "start_map"
        # a key's data, when its type came first (as the save writes it) and is one read in pieces
        return self.level == 3 and self.field == "data" and STREAMED.get(self.key_type) == event

    def _build(self, event: str, value: Any) -> tuple[str, str | None, Any] | None:
        self.builder.event(event, value)
        self.nest += (event in OPENS) - (event in CLOSES)
        if self.nest:
            return None
        built, self.builder = self.builder.value, None
        if self.level == 3:
            self.key_type = built if self.field == "type" else self.key_type
            return self.section, self.name, KeyPart(self.field, built)
        if self.level == 4:
            return (
                self.section,
                self.name,
                KeyPart("item", (self.member if self.key_type == "hash" else None, built)),
            )
        return self.section, (self.name if self.level == 2 else None), built


class _KeyPieces:
    """A key's parts (``_Items``) as ``StoredKey`` pieces of about ``PIECE_BYTES`` of values each,
    each checked as ``Snapshot`` checks a key (``ValueError`` naming the key)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.type: Any = None
        self.whole: Any = KEY_END  # the data, read whole (KEY_END: none)
        self.batch: Any = None
        self.size, self.pieces = 0, 0

    def feed(self, name: str, part: Any) -> list[StoredKey]:
        if part is KEY_END:
            pieces = self._end(name)
            self._reset()
            return pieces
        if not isinstance(part, KeyPart):  # a key that is no object: StoredKey says so
            return [_stored_key(name, part)]
        if part.field == "type":
            self.type = part.value
        elif part.field == "data":
            self.whole = part.value
        elif part.field == "items":
            self.batch = {} if self.type == "hash" else []
        elif part.field == "item":
            member, item = part.value
            if member is None:
                self.batch.append(item)
            else:
                self.batch[member] = item
            self.size += len(item) if isinstance(item, str) else len(str(item))
            if self.size >= PIECE_BYTES:
                return [self._piece(name)]
        return []

    def _piece(self, name: str) -> StoredKey:
        stored = _stored_key(name, {"type": self.type, "data": self.batch})
        self.batch, self.size, self.pieces = {} if self.type == "hash" else [], 0, self.pieces + 1
        return stored

    def _end(self, name: str) -> list[StoredKey]:
        if self.whole is not KEY_END:
            return [_stored_key(name, {"type": self.type, "data": self.whole})]
        if self.batch is None:  # no data at all: StoredKey says so
            return [_stored_key(name, {"type": self.type})]
        return [self._piece(name)] if self.batch or not self.pieces else []


def _stored_key(name: str, value: Any) -> StoredKey:
    stored = StoredKey.model_validate(value)
    _check_key(name, stored)
    return stored


async def _json_items(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[str, str | None, Any]]:
    """The snapshot's items (``_Items``) parsed as the chunks come: one item in memory at a time."""
    events, items = ijson.sendable_list(), _Items()
    parser = ijson.parse_coro(events, use_float=True)
    try:
        async for chunk in chunks:
            parser.send(chunk)
            for _, event, value in events:
                if (item := items.feed(event, value)) is not None:
                    yield item
            del events[:]
        parser.close()
    except ijson.JSONError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    for _, event, value in events:
        if (item := items.feed(event, value)) is not None:
            yield item


async def _entries(chunks: AsyncIterator[bytes], top: dict[str, Any]) -> AsyncIterator[Entry]:
    """The snapshot's jobs and keys, each checked as ``Snapshot`` checks it (``ValueError`` naming
    what is wrong); a large key in pieces (``_KeyPieces``), one after the other; its other
    top-level fields go into ``top``."""
    pieces = _KeyPieces()
    async for section, name, value in _json_items(chunks):
        if section == "jobs" and value is not OPENED:
            fields = JOB_FIELDS.validate_python(value)
            if all(fields.get(field) for field in REQUIRED_FIELDS):  # the others are skipped at restore
                _check_job(fields)
            yield fields, None
        elif section == "keys" and name is not None and value is not OPENED:
            for stored in pieces.feed(name, value):
                yield {}, (name, stored)
        else:
            if section == "version":
                _check_version(value)
            top[section] = value


VERSIONS = (1, 2)  # the snapshot versions this release reads (it writes the last)


def _check_version(value: Any) -> None:
    """The snapshot's version, as soon as it is read: one from a newer release is named as such,
    before any of its jobs or keys (which this release may not know) is."""
    if type(value) is int and value > VERSIONS[-1]:
        raise ValueError(
            f"version {value} was written by a newer release of the queue manager (this one reads versions "
            f"{VERSIONS[0]} to {VERSIONS[-1]}): restore it with that release, or snapshot with this one"
        )
    if type(value) is not int or value not in VERSIONS:
        raise ValueError(f"version {value!r} is not a snapshot version (this release reads 1 and 2)")


async def _entries_of(snapshot: Snapshot | StoredSnapshot) -> AsyncIterator[Entry]:
    if isinstance(snapshot, StoredSnapshot):
        async for entry in snapshot.entries():
            yield entry
        return
    for fields in snapshot.jobs:
        yield fields, None
    for item in snapshot.keys.items():
        yield {}, item


def _waiting_summary(fields: dict[str, str]) -> dict[str, str] | None:
    """What the rejoin and the strays read of a job: a waiting or interrupted job's names."""
    if fields.get("state") not in ("queued", *RUNNING):
        return None
    return {name: fields[name] for name in ("id", "user", "pool", "state", "worker_id") if name in fields}


def _small_key(name: str) -> bool:
    """The keys the restore's globals and rejoin read (the counter, the fair scheduler's rounds)."""
    return name == "seq" or name.startswith("fair:")


def _joined(before: StoredKey | None, piece: StoredKey) -> StoredKey:
    """A key's pieces (``_KeyPieces``) as one."""
    if before is None or piece.type not in STREAMED:
        return piece
    if piece.type == "hash":
        return StoredKey(type=piece.type, data={**before.data, **piece.data})
    return StoredKey(type=piece.type, data=[*before.data, *piece.data])


async def _collected(chunks: AsyncIterator[bytes], whole: bool) -> Snapshot:
    """The snapshot, checked item by item: ``whole``, or only what the restore needs besides its
    jobs and keys (``StoredSnapshot.head``). ``ValueError`` when it is not a snapshot."""
    top: dict[str, Any] = {}
    jobs: list[dict[str, str]] = []
    keys: dict[str, StoredKey] = {}
    async for fields, key in _entries(chunks, top):
        kept = fields if whole or key is not None else _waiting_summary(fields)
        if key is None and kept is not None:
            jobs.append(kept)
        elif key is not None and (whole or _small_key(key[0])):
            keys[key[0]] = _joined(keys.get(key[0]), key[1])
    for section, items in (("jobs", jobs), ("keys", keys)):
        if top.get(section) is OPENED:
            top[section] = items
    return Snapshot.model_validate(top)


@dataclass
class StoredSnapshot:
    """A snapshot in the vault that passed its checksum and every check, read again from the vault
    to restore it (one job and one key in memory at a time). ``head`` holds the rest: when it was
    taken, version 1's globals, the counter and the fair scheduler's keys, and each waiting job's
    id, owner, pool, state and worker."""

    storage: Storage
    key: str
    head: Snapshot
    sha256: str  # of the body as it was checked
    place: str = "in the vault"  # where the body is, as its message says it

    @property
    def taken_at(self) -> datetime:
        return self.head.taken_at

    async def entries(self) -> AsyncIterator[Entry]:
        """Its jobs and keys read again from the vault; ``SnapshotError`` when the body is no
        longer the one checked (changed in the vault meanwhile): what was written stays, and the
        restore is safe to run again (it skips jobs that exist and merges keys)."""
        digest, changed = hashlib.sha256(), ""
        try:
            async for entry in _entries(_hashed(self.storage.get(self.key), digest), {}):
                yield entry
        except ValueError as exc:
            changed = f": {exc}"
        if changed or digest.hexdigest() != self.sha256:
            raise SnapshotError(
                f"{self.key} changed {self.place} while it was restored{changed}. Put back the checked "
                "snapshot and run the restore again: it skips the jobs and keeps the keys already restored"
            )


async def _saved_body(storage: Storage) -> tuple[str, str | None] | None:
    """The vault's snapshot body and its sha256 (None for version 1's, saved without one); None on
    the workshop's first day. ``SnapshotError`` when it should be there and is not."""
    pointer = await _pointer(storage)
    if pointer is None:
        if await storage.exists(SNAPSHOT_KEY):
            return SNAPSHOT_KEY, None
        if await storage.exists(STARTED_KEY):
            raise SnapshotError(
                f"no queue snapshot at {getattr(storage, 'url', 'the vault')} {SNAPSHOTS}, but the workshop "
                f"ran before ({STARTED_KEY} exists): the evening's drain did not save one. Nothing was "
                f"restored. Find the snapshot and put it back with its {CHECKSUM_KEY}, or, to start with an "
                f"empty queue on purpose, delete {STARTED_KEY} from the bucket and run `pulumi up` again"
            )
        return None
    expected, key = pointer
    if not await storage.exists(key):
        where = f"{getattr(storage, 'url', 'the vault')} {key}"
        raise SnapshotError(f"{key} is missing next to its {CHECKSUM_KEY} at {where}")
    return key, expected


NO_CHECKSUM = f"has no {CHECKSUM_KEY} and is not a"


async def _checked(
    storage: Storage,
    key: str,
    expected: str | None,
    where: str,
    unchecked: str = NO_CHECKSUM,
    place: str = "in the vault",
) -> StoredSnapshot:
    """One read of the body: its sha256 (against ``expected``, the checksum file's, when given) and
    each job and key parsed and checked as they come. ``SnapshotError`` naming ``where`` and what
    is wrong (``unchecked``: how a body without a checksum is named in it; ``place``: where it is,
    for ``StoredSnapshot``'s message)."""
    digest = hashlib.sha256()
    chunks = _hashed(storage.get(key), digest)
    try:
        head = await _collected(chunks, whole=False)
    except ValueError as exc:  # pydantic's ValidationError too
        if expected is not None:
            async for _ in chunks:  # the rest, hashed: a body that is not the one saved is named corrupt
                pass
            _verify(digest.hexdigest(), expected, where)
        said = "matches its checksum but is not a" if expected is not None else unchecked
        raise SnapshotError(f"{where} {said} queue snapshot: {exc}") from exc
    if expected is not None:
        _verify(digest.hexdigest(), expected, where)
    return StoredSnapshot(storage, key, head, digest.hexdigest(), place)


async def open_snapshot_file(path: Path, where: str) -> StoredSnapshot:
    """A snapshot file (``cli restore --in``, or the admin's upload once on disk) checked in one
    read as the morning checks the vault's, before anything is written; the restore reads it once
    more. ``SnapshotError`` naming ``where`` and what is wrong."""
    if not await asyncio.to_thread(path.is_file):
        raise SnapshotError(f"{where} is not a readable queue snapshot: there is no file {path}")
    folder = LocalStorage(path.parent)
    return await _checked(folder, path.name, None, where, "is not a readable", place="on disk")


def _verify(actual: str, expected: str, where: str) -> None:
    if actual != expected:
        raise SnapshotError(
            f"{where} is corrupt: its sha256 is {actual}, {CHECKSUM_KEY} says {expected}. Nothing was "
            "restored; put back an intact copy (or delete both files and snapshots/started to start empty)"
        )


async def open_saved_snapshot(storage: Storage) -> StoredSnapshot | None:
    """The vault's snapshot, checked in bounded memory before anything is written, in one read of
    its body: its sha256 and each job and key parsed and checked as they come; None on the
    workshop's first day. (The restore reads it once more, ``StoredSnapshot.entries``.)

    Raises ``SnapshotError`` when the workshop ran before but no snapshot is there, when only one
    of the snapshot and its checksum exists, when they disagree, or when the file is not a snapshot.
    """
    found = await _saved_body(storage)
    if found is None:
        return None
    key, expected = found
    where = f"{getattr(storage, 'url', 'the vault')} {key}"
    opened = await _checked(storage, key, expected, where)
    if expected is None:
        _unchecked_version_1(opened.head, where)
    return opened


async def load_saved_snapshot(storage: Storage) -> Snapshot | None:
    """The vault's snapshot in memory (``open_saved_snapshot``'s checks); the morning streams it."""
    opened = await open_saved_snapshot(storage)
    return None if opened is None else await _collected(storage.get(opened.key), whole=True)


def _unchecked_version_1(snapshot: Snapshot, where: str) -> None:
    """Snapshots saved before checksums existed (version 1) are taken as they are; any later one
    without its checksum is refused."""
    if snapshot.version != 1:
        raise SnapshotError(f"{CHECKSUM_KEY} is missing next to {where}: the snapshot cannot be checked")
    log.warning("restoring %s without a checksum: it was saved before snapshots had one", where)


async def mark_started(storage: Storage) -> None:
    """From now on a morning without a snapshot is an error, not a first day."""
    stamp = datetime.now(UTC).isoformat().encode()
    await storage.put(STARTED_KEY, aiter_chunks(stamp), "text/plain")
