"""The life cycle every dynamic provider here shares, written once.

A cloud call can fail after the cloud already acted (a 5xx or a timeout on a create that went
through). So every remote object has a deterministic name, and creating always means: look the
name up, adopt what is there if it matches, otherwise make it; retry transient failures the same
way; and when creating finally fails, delete whatever carries the name and confirm it is gone.
After any error nothing billable is left that Pulumi does not know about.

Subclasses provide the remote verbs (``find``, ``make``, ``settle``, ``remove``, ``fetch``,
``change``) and ``describe``; this class turns them into Pulumi's check/diff/create/read/update/delete.
The provider object is pickled into another process, so it holds no clients: ``connect`` builds one
inside each method from the resource's own (secret) inputs or the environment.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import Any, ClassVar, TypeVar

from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    ResourceProvider,
    UpdateResult,
)
from pulumi.runtime import rpc
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from infra.providers.timing import Timing

T = TypeVar("T")

# The worker env that names the queue manager a pool's workers call: an object under our name whose
# workers call another one serves another workshop.
QUEUE_URL = "WORKER_QUEUE_URL"

# Inputs that tune how we talk to the API, not what exists: never a reason to replace or to change
# the remote object.
CONNECTION_KEYS = frozenset({"client_id", "client_secret", "api_key", "api_url", "timing", "__provider"})
# Yet a new API key must reach the state: `pulumi destroy` and `refresh` call the provider with the
# stored outputs, so a revoked key kept there would leave a destroy that fails while the GPUs bill on.
# So must the pickled provider (a reference to its module and class), which they unpickle from the
# stored outputs too: once the code moved the class, the old reference no longer imports.
# A change of these alone is an update that calls nothing remote.
STORED_FOR_DESTROY = frozenset({"client_id", "client_secret", "api_key", "__provider"})


# The engine runs every dynamic resource of a stack in one provider process, several at once: two
# resources naming one remote object (two pools, one models volume) must not both find nothing and
# both make it. Creates of one name take turns here, so the second finds and adopts the first's.
_NAMES_LOCK = threading.Lock()
_NAME_LOCKS: dict[tuple[str, str], threading.Lock] = {}


# The command the organizer is running, for the messages that tell her to run it again: a `pulumi up`
# told to be run again in the evening kept the GPUs it was to delete. The engine calls Delete in a
# `pulumi destroy` and in an `up` that removes or replaces an object, Read in a `pulumi refresh` and in
# `pulumi up --refresh`; no request says which (Delete carries the id, the URN and the stored
# properties alone). One thing tells: only an `up` replaces, after its Diff answered a replacement of
# that very object, in the same provider process (``_REPLACING``).
_COMMAND: ContextVar[str] = ContextVar("pulumi_command", default="`pulumi up`")
DELETING = "`pulumi destroy` (or the `pulumi up` that was deleting it)"
REPLACING = "`pulumi up`"
READING = "`pulumi refresh` (or `pulumi up --refresh`)"
# The ids of the objects this provider process's Diffs answered a replacement of.
_REPLACING: set[str] = set()


def forget_replacements() -> None:
    """What a new provider process knows of replacements: nothing (for tests that run many in one)."""
    _REPLACING.clear()


def command() -> str:
    """The Pulumi command the provider call in progress is part of, as a message names it."""
    return _COMMAND.get()


@contextmanager
def running(name: str) -> Iterator[None]:
    """Provider calls made inside are part of ``name`` (``DELETING``, ``READING``)."""
    token = _COMMAND.set(name)
    try:
        yield
    finally:
        _COMMAND.reset(token)


def _turn_for(kind: str, name: Any) -> threading.Lock:
    with _NAMES_LOCK:
        return _NAME_LOCKS.setdefault((kind, str(name)), threading.Lock())


class Ownership(Enum):
    """What an object found under our name shows of the stack that made it: the rule of when it may be
    adopted (or deleted to make ours), the same for every kind (``LifecycleProvider.whose``).

    Names are deterministic per stack and pool, not per account: a second workshop in the same account
    with the same stack and pool names finds the first's objects under its own names."""

    SHOWN = "shown"
    """``foreign`` reads another stack's mark off it (an instance's SSH keys, a deployment's queue URL)."""
    UNSHOWN = "unshown"
    """Nothing on it names its stack (a secret or a login whose value is never shown back): it is this
    stack's only when the stack's state holds it, when this very create made it, or when it holds
    exactly what this stack would write (``matches``). Anything else is another's."""
    SHARED = "shared"
    """It outlives the stack on purpose and whoever names it uses it (the models volumes)."""
    NAMED = "named"
    """Nothing on it names its stack, but its name does: the pools name it with a tag of the workshop
    (``infra.pools.base.owned_name``), which no other workshop writes. What is found under it is this
    workshop's (a failed create's, or a leftover of a lost state): adopted when it ``matches``, else
    deleted and made anew."""


@dataclass
class _Attempt:
    """One create: whether it has asked the provider to make the object yet (a found object of our
    name is then what that request made, although it answered with an error)."""

    made: bool = False


class ProviderError(Exception):
    """A failure explained for the organizer: what went wrong and what to do about it."""


class ForeignObject(ProviderError):
    """An object under our name that someone else made (another stack sharing the account)."""


class LifecycleProvider(ResourceProvider, ABC):
    """check/diff/create/read/update/delete over a few remote verbs, idempotent and orphan-free."""

    serialize_as_secret_always = True
    kind: ClassVar[str] = "resource"
    required: ClassVar[tuple[str, ...]] = ("name",)
    replace_keys: ClassVar[frozenset[str]] = frozenset({"name"})
    # What ``describe`` adds to the inputs: stored as outputs, never sent back as inputs, so never
    # compared with them (the engine's Diff gets the stored outputs as ``olds``).
    outputs: ClassVar[tuple[str, ...]] = ()
    # False where a leftover is cheap and precious (a models volume): the next create adopts it.
    discard_on_failure: ClassVar[bool] = True
    ownership: ClassVar[Ownership] = Ownership.UNSHOWN
    # Inputs only the check reads (what the rest of the stack declares): never a change to make.
    checked_only: ClassVar[frozenset[str]] = frozenset()
    # Names are deterministic, so the old object must go before its successor takes the name; a kind
    # whose every replacement has a name of its own is made first, and the old one deleted after the
    # objects naming it have moved to the new one (one still in use may not be deletable).
    delete_before_replace: ClassVar[bool] = True

    # --- remote verbs, provided by each resource kind -------------------------------------
    @abstractmethod
    def connect(self, props: dict[str, Any]) -> Any: ...

    @abstractmethod
    def is_transient(self, exc: BaseException) -> bool: ...

    @abstractmethod
    def explain(self, exc: BaseException, props: dict[str, Any]) -> str: ...

    def retry_after(self, exc: BaseException) -> float | None:
        """The seconds the API asked us to wait before calling again (a 429's Retry-After), if it did."""
        return None

    @abstractmethod
    def find(self, api: Any, props: dict[str, Any]) -> Any | None: ...

    @abstractmethod
    def make(self, api: Any, props: dict[str, Any]) -> Any: ...

    def matches(self, obj: Any, props: dict[str, Any]) -> bool:
        return True

    def foreign(self, obj: Any, props: dict[str, Any]) -> str | None:
        """For a kind whose objects show their stack (``Ownership.SHOWN``): why ``obj``, found under our
        name, is another stack's, or None when it may be ours."""
        return None

    def whose(self, obj: Any, props: dict[str, Any], made_here: bool = False) -> str | None:
        """Why ``obj``, found under our name, is not this stack's, or None when it is ours to adopt or
        to delete (``made_here``: this create asked for it). Another's is neither adopted nor deleted:
        the check at preview, and the create, stop with this reason."""
        if made_here or self.ownership in (Ownership.SHARED, Ownership.NAMED):
            return None
        if self.ownership is Ownership.SHOWN:
            return self.foreign(obj, props)
        if self.matches(obj, props):
            return None
        return foreign_object(self.kind, props.get("name"), "nothing on it names the workshop that made it")

    def adopt(self, api: Any, props: dict[str, Any], obj: Any) -> Any:
        """An object found under our name that ``matches``: bring it to ``props`` if needed."""
        return obj

    def settle(self, api: Any, props: dict[str, Any], obj: Any) -> Any:
        """Wait until a created or adopted object is usable."""
        return obj

    @abstractmethod
    def remove(self, api: Any, props: dict[str, Any], obj: Any) -> None:
        """Delete ``obj`` and return only once the provider confirms it is gone."""

    @abstractmethod
    def fetch(self, api: Any, id_: str, props: dict[str, Any]) -> Any | None: ...

    def change(self, api: Any, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> Any:
        raise ProviderError(f"{self.kind} {news.get('name')!r} cannot be changed in place")

    @abstractmethod
    def describe(self, obj: Any, props: dict[str, Any]) -> tuple[str, dict[str, Any]]: ...

    def can_replace(self, news: dict[str, Any], replaces: list[str]) -> None:
        """Raise when the provider cannot make the replacement ``news``: the engine deletes the old
        object before it creates the new one, so a failure found here (at preview too) costs nothing,
        found in ``create`` it leaves the stack without the object."""

    def drifted(self, obj: Any, props: dict[str, Any]) -> dict[str, Any]:
        """The inputs whose value at the provider is no longer what ``props`` asked for (someone changed
        the object in the provider's console), with the value the provider has now. A refresh stores
        them, so the next `up`'s diff sees the change and updates the object back to the stack config."""
        return {}

    def check_not_foreign(self, olds: dict[str, Any], checked: CheckResult) -> CheckResult:
        """``checked``, failing ``name`` when the provider holds an object of our name that is not this
        stack's (``whose``). The engine checks every resource at preview, and each again just before it
        creates it (with `--skip-preview` too), so the `up` stops before this object, or any made after
        it, is written over another workshop's. Only for an object this stack is about to create: one
        in its state (``olds``, of the same name) is its own, whatever its provider holds now (a new
        domain changes its queue URL). When the provider cannot be asked, create decides."""
        news = checked.inputs
        shared = self.ownership in (Ownership.SHARED, Ownership.NAMED)
        if shared or checked.failures or (olds and olds.get("name") == news.get("name")):
            return checked
        found = self.ask(news, lambda api: self.find(api, news))
        reason = None if found is None else self.whose(found, news)
        return CheckResult(news, [CheckFailure("name", reason)]) if reason else checked

    def ask(self, props: dict[str, Any], call: Callable[[Any], T]) -> T | None:
        """``call(api)`` for a check, or None when the provider cannot be asked now: the create that
        follows asks again, and explains."""
        try:
            api = self.guarded(props, lambda: self.connect(props))
            return self.guarded(props, lambda: call(api))
        except ProviderError:
            return None

    # --- Pulumi's verbs ---------------------------------------------------------------------
    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        """The required inputs are there, and no object of our name is another stack's."""
        failures = [
            CheckFailure(key, f"{self.kind} needs '{key}'")
            for key in self.required
            if news.get(key) in (None, "")
        ]
        return self.check_not_foreign(_olds, CheckResult(news, failures))

    def diff(self, _id: str, _olds: dict[str, Any], _news: dict[str, Any]) -> DiffResult:
        """``_olds`` are the stored OUTPUTS (inputs plus what ``describe`` added), ``_news`` the inputs."""
        changed = self._changed(_olds, _news)
        replaces = [k for k in changed if k in self.replace_keys]
        if replaces:
            self.can_replace(_news, replaces)
        new_key = any(_olds.get(k) != _news.get(k) for k in STORED_FOR_DESTROY)
        if replaces:
            _REPLACING.add(_id)
        return DiffResult(
            changes=bool(changed) or new_key,
            replaces=replaces,
            delete_before_replace=self.delete_before_replace,
        )

    def _changed(self, olds: dict[str, Any], news: dict[str, Any]) -> list[str]:
        """The inputs that differ, connection and outputs aside: what the remote object must follow."""
        keys = (set(olds) | set(news)) - CONNECTION_KEYS - set(self.outputs) - self.checked_only
        return sorted(k for k in keys if olds.get(k) != news.get(k))

    def create(self, props: dict[str, Any]) -> CreateResult:
        api = self.guarded(props, lambda: self.connect(props))
        attempt = _Attempt()
        try:
            with _turn_for(self.kind, props.get("name")):
                obj = self.retrying(props, lambda: self._settled(api, props, attempt))
        except ForeignObject:
            raise  # nothing was made, and what carries our name is not ours to delete
        except Exception as exc:
            if not self.discard_on_failure and isinstance(exc, ProviderError):
                raise  # explained already (a volume that cannot shrink); what was found is kept
            if not self.discard_on_failure:
                raise ProviderError(self.explain(exc, props)) from exc
            self._clean_up(api, props, exc, attempt)
            raise ProviderError(f"{self.explain(exc, props)} Nothing was left behind.") from exc
        id_, outs = self.describe(obj, props)
        return CreateResult(id_, {**props, **outs})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with running(READING):
            return self._read(id_, props)

    def _read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        api = self.guarded(props, lambda: self.connect(props))
        obj = self.guarded(props, lambda: self.fetch(api, id_, props))
        if obj is None:
            return ReadResult(None, {})
        new_id, outs = self.describe(obj, props)
        return ReadResult(new_id, {**props, **self.drifted(obj, props), **outs})

    def update(self, _id: str, _olds: dict[str, Any], _news: dict[str, Any]) -> UpdateResult:
        if not self._changed(_olds, _news):  # a new API key or provider only: into the state, nothing remote
            return UpdateResult({**_news, **{k: _olds[k] for k in self.outputs if k in _olds}})
        api = self.guarded(_news, lambda: self.connect(_news))
        obj = self.guarded(_news, lambda: self.change(api, _id, _olds, _news))
        _, outs = self.describe(obj, _news)
        return UpdateResult({**_news, **outs})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        with running(REPLACING if _id in _REPLACING else DELETING):
            api = self.guarded(_props, lambda: self.connect(_props))
            self.guarded(_props, lambda: self._remove_if_there(api, _id, _props))

    # --- the shared mechanics ---------------------------------------------------------------
    def _settled(self, api: Any, props: dict[str, Any], attempt: _Attempt) -> Any:
        return self.settle(api, props, self._adopt_or_make(api, props, attempt))

    def _adopt_or_make(self, api: Any, props: dict[str, Any], attempt: _Attempt) -> Any:
        found = self.find(api, props)
        if found is not None and (reason := self.whose(found, props, attempt.made)):
            raise ForeignObject(reason)
        if found is not None and self.matches(found, props):
            return self.adopt(api, props, found)
        if found is not None:
            self.remove(api, props, found)
        attempt.made = True  # before the request: it may act and still answer with an error
        return self.make(api, props)

    def _remove_if_there(self, api: Any, id_: str, props: dict[str, Any]) -> None:
        obj = self.fetch(api, id_, props)
        if obj is not None:
            self.remove(api, props, obj)

    def _clean_up(self, api: Any, props: dict[str, Any], cause: BaseException, attempt: _Attempt) -> None:
        """After a failed create: delete whatever carries our name, confirmed, or say so loudly."""
        try:
            self.retrying(props, lambda: self._remove_found(api, props, attempt))
        except Exception as exc:
            if self.retry_after(exc) is not None:  # the API's rate limiter refuses every call for now
                raise ProviderError(f"{self.explain(cause, props)} {self._left_over()}") from cause
            raise ProviderError(
                f"{self.kind} {props.get('name')!r} failed to create AND the clean-up failed: "
                f"{self.explain(exc, props)} Delete it in the provider's console before retrying."
            ) from exc

    def _left_over(self) -> str:
        """What becomes of a object an attempt may have made under our name and could not delete."""
        if self.ownership is Ownership.UNSHOWN:
            return (
                f"A {self.kind} an earlier attempt may have made under that name shows nothing that tells "
                "it from another workshop's, so the next `pulumi up` stops at it: delete it in the "
                "provider's console first."
            )
        return f"A {self.kind} an earlier attempt may have made under that name is adopted by the next `up`."

    def _remove_found(self, api: Any, props: dict[str, Any], attempt: _Attempt) -> None:
        found = self.find(api, props)
        if found is not None and self.whose(found, props, attempt.made) is None:
            self.remove(api, props, found)

    def retrying(self, props: dict[str, Any], call: Callable[[], T]) -> T:
        """Run ``call``, retrying transient failures with backoff (the call must be idempotent). A rate
        limit's Retry-After is waited out: a call inside its window is refused anyway. One longer than
        ``max_retry_after_s`` is not waited for: the error says when to run `pulumi up` again."""
        timing = Timing.of(props)
        backoff = wait_exponential(multiplier=timing.retry_wait_s, max=timing.retry_wait_s * 8)

        def wait(state: RetryCallState) -> float:
            failure = state.outcome.exception() if state.outcome else None
            asked = self.retry_after(failure) if failure else None
            return max(backoff(state), asked or 0.0)

        def worth_retrying(exc: BaseException) -> bool:
            return self.is_transient(exc) and (self.retry_after(exc) or 0.0) <= timing.max_retry_after_s

        retryer = Retrying(
            stop=stop_after_attempt(timing.attempts),
            wait=wait,
            retry=retry_if_exception(worth_retrying),
            reraise=True,
        )
        return retryer(call)

    def guarded(self, props: dict[str, Any], call: Callable[[], T]) -> T:
        """``retrying``, with any final failure explained."""
        try:
            return self.retrying(props, call)
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(self.explain(exc, props)) from exc


class GrowOnly(LifecycleProvider):
    """A models volume: it outlives the stack (`retain_on_delete`, unless ``keep`` is false), is used
    by whoever names it, grows in place when the config asks for more and never shrinks. Inputs:
    ``size`` (GB), its place (``place_key``), ``keep``, and ``also_at``: the other places the stack
    config puts a volume of this name."""

    ownership = Ownership.SHARED
    discard_on_failure = False  # a leftover may hold models: the next create adopts it
    checked_only = frozenset({"keep", "also_at"})
    place_key: ClassVar[str]

    @abstractmethod
    def size_of(self, obj: Any) -> int:
        """The volume's size at the provider, in GB."""

    @abstractmethod
    def elsewhere(self, api: Any, props: dict[str, Any]) -> list[tuple[str, int]]:
        """The places and sizes (GB) of the provider's volumes of our name in other places."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        """Also, at preview: the volume the stack would use (kept from an earlier day, grown in the
        console, or configured larger before) is not larger than the config says; and a volume the
        stack is about to make is no move that leaves a kept one billed elsewhere."""
        checked = super().check(_olds, news)
        if checked.failures:
            return checked
        failure = self._shrinking(_olds, news) or self._moving(_olds, news)
        return CheckResult(news, [failure]) if failure else checked

    def _shrinking(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckFailure | None:
        wanted = news.get("size")
        have = self._size_now(olds, news) if isinstance(wanted, int | float) else None
        if have is None or have <= int(wanted or 0):
            return None
        return CheckFailure("size", self.cannot_shrink(news, have))

    def _moving(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckFailure | None:
        """A kept volume of our name in a place the config no longer names: the pools moved (a new
        location or data center), and `pulumi up` would make a second volume here while the engine
        drops the old one from the state without deleting it (``retain_on_delete``)."""
        here = news.get(self.place_key)
        if news.get("keep") is False or here == rpc.UNKNOWN or self._same_volume(olds, news):
            return None
        found = self.ask(news, lambda api: self.elsewhere(api, news)) or []
        left = [(place, size) for place, size in found if place not in (news.get("also_at") or [])]
        if not left:
            return None
        place, size = left[0]
        return CheckFailure(
            self.place_key,
            f"{self.kind} {news.get('name')!r} is also kept in {place} ({size} GB), where no pool of this "
            f"stack puts it now: `pulumi destroy` keeps models volumes, so making one in {here} would "
            f"leave that one billed beside it. Fix: delete the one in {place} in the provider's console "
            f"(its models are downloaded again into the new one), or put the pools back in {place}; to "
            "keep both on purpose, give the new one another modelsVolume.name",
        )

    def _same_volume(self, olds: dict[str, Any], news: dict[str, Any]) -> bool:
        """Whether the stack's state holds this very volume (same name and place)."""
        return bool(olds) and all(olds.get(key) == news.get(key) for key in self.replace_keys | {"name"})

    def _size_now(self, olds: dict[str, Any], news: dict[str, Any]) -> int | None:
        """The size of the volume of our name and place at the provider; when it cannot be asked, the
        size the stack last asked for it; None when there is none."""
        try:
            api = self.guarded(news, lambda: self.connect(news))
            found = self.guarded(news, lambda: self.find(api, news))
        except ProviderError:
            same = self._same_volume(olds, news)
            return int(olds["size"]) if same and isinstance(olds.get("size"), int | float) else None
        return None if found is None else self.size_of(found)

    def cannot_shrink(self, props: dict[str, Any], have: int) -> str:
        return (
            f"{self.kind} {props.get('name')!r} is {have} GB and a volume cannot shrink: set "
            f"modelsVolume.sizeGb to {have} (or more) for the pools naming it in comfy-workshop:pools "
            f"(it is {props.get('size')} now), then run `pulumi up` again"
        )

    def kept_size(self, props: dict[str, Any], have: int) -> int:
        """The size to give a volume of ``have`` GB: the config's, refused when smaller."""
        wanted = int(props["size"])
        if wanted < have:
            raise ProviderError(self.cannot_shrink(props, have))
        return wanted


def retry_after_seconds(header: str | None) -> float | None:
    """A Retry-After header's wait in seconds: a number of seconds, or an HTTP date; None without one."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds()) if when.tzinfo else None


def rate_limited(cloud: str, kind: str, name: Any, retry_after: float | None) -> str:
    """What to tell the organizer when ``cloud`` keeps refusing calls for their rate (HTTP 429)."""
    wait = f" and asks to wait {retry_after:.0f} s" if retry_after is not None else ""
    return (
        f"{cloud} refused {kind} {name!r} for now: too many API calls (HTTP 429){wait}. "
        f"Nothing is wrong with the config: run {command()} again after that."
    )


def kept_failing(cloud: str, kind: str, name: Any, exc: BaseException) -> str:
    """What to tell the organizer when ``cloud`` kept failing (5xx, timeouts) through every retry."""
    return f"{cloud} kept failing for {kind} {name!r} ({exc}); try {command()} again later."


def foreign_object(kind: str, name: Any, evidence: str) -> str:
    """What to tell the organizer when an object under our name is another stack's (``evidence``)."""
    return (
        f"There is already a {kind} named {name!r} that this stack did not make ({evidence}): another "
        "workshop in the same account may use the name, so it is neither taken over nor deleted. Fix: "
        "`pulumi stack rename` this stack or rename the pool (objects are named cw-<stack>-<pool>); if it "
        "is a leftover of this workshop, delete it in the provider's console."
    )


def other_workshop(kind: str, name: Any, their_env: Any, our_env: Any) -> str | None:
    """Why an object under our name serves another workshop (the workers of its env ``their_env``
    call another queue manager than ours do), or None when it may be ours (either unknown)."""
    theirs, ours = (env.get(QUEUE_URL) if isinstance(env, dict) else None for env in (their_env, our_env))
    if not isinstance(theirs, str) or not isinstance(ours, str) or ours == rpc.UNKNOWN or theirs == ours:
        return None
    return foreign_object(kind, name, f"its workers call {theirs}, this workshop's call {ours}")


def poll(what: str, check: Callable[[], T | None], timeout_s: float, interval_s: float) -> T:
    """Call ``check`` until it returns something other than None; TimeoutError names ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:g} s")
        time.sleep(interval_s)


def until_gone(what: str, gone: Callable[[], bool], timing: Timing) -> None:
    """After a delete the provider took: poll until ``gone()``. One still there when the wait ends may
    still bill: the error says so, and to run the command again (it asks again) or use the console."""
    try:
        poll(
            f"deletion of {what}",
            lambda: True if gone() else None,
            timing.delete_timeout_s,
            timing.poll_interval_s,
        )
    except TimeoutError as exc:
        raise ProviderError(
            f"{what} was asked to be deleted and is still there after {timing.delete_timeout_s:g} s, so it "
            f"may still bill: run {command()} again, which asks again, or delete it in the provider's "
            "console"
        ) from exc
