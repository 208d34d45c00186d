"""Talking to Verda's API through its SDK (``verda``): credentials, time limits and error meaning.

Credentials come from the resource's secret inputs ``client_id``/``client_secret`` or from the
environment variables the credential registry names for them; ``api_url`` or ``VERDA_API_URL`` points at
another API base (the tests' loopback double).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any

import requests
from pulumi.dynamic import CheckFailure, CheckResult
from pulumi.runtime import rpc
from verda import VerdaClient
from verda.authentication import _authentication as verda_authentication
from verda.exceptions import APIException

from infra.credential_registry import VERDA_CLIENT_ID, VERDA_CLIENT_SECRET, from_props, refused
from infra.providers.lifecycle import (
    LifecycleProvider,
    kept_failing,
    rate_limited,
    retry_after_seconds,
    until_gone,
)
from infra.providers.timing import Timing

DEFAULT_API_URL = "https://api.verda.com/v1"
TRANSIENT_CODES = frozenset({"server_error", "service_unavailable"})

ADVICE = {
    "insufficient_funds": "Top up the Verda account balance (or pick a cheaper or spot type), then run "
    "`pulumi up` again.",
    "unauthorized_request": refused(VERDA_CLIENT_ID, VERDA_CLIENT_SECRET),
    "forbidden_action": "The account may not do this (often a quota): ask Verda support to raise it, "
    "or lower the pool's size.",
    "invalid_request": "A value in the pool's config is not accepted by Verda: fix it in the stack config.",
}


class VerdaHttpError(APIException):  # type: ignore[misc]  # the SDK ships no type hints
    """The SDK's APIException with what it drops: the HTTP status, and a 429's Retry-After."""

    def __init__(self, code: str | None, message: str | None, status: int, retry_after: float | None) -> None:
        super().__init__(code, message)
        self.status = status
        self.retry_after = retry_after


# The time limit of the provider call in progress, for the SDK's token requests (see _TokenRequests).
_TOKEN_TIMEOUT_S: ContextVar[float] = ContextVar("verda_token_timeout_s", default=Timing().request_timeout_s)


# The clients of this provider process, one per account, API and time limit. The engine starts one
# provider process per `pulumi up`, `refresh` or `destroy` and calls it for every resource (check, then
# create or diff, several at once): the SDK asks for a token when a client is built, so building one
# per call asked Verda for a token two or three times per resource. The SDK renews the token it holds
# when it expires.
_CLIENTS: dict[tuple[str, str, str, float], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def verda_client(props: dict[str, Any]) -> Any:
    """This process's client for the account ``props`` name: built here, in the provider's own
    process (never at import time), once."""
    found = from_props(props, client_id=VERDA_CLIENT_ID, client_secret=VERDA_CLIENT_SECRET)
    url = props.get("api_url") or os.environ.get("VERDA_API_URL") or DEFAULT_API_URL
    seconds = Timing.of(props).request_timeout_s
    _TOKEN_TIMEOUT_S.set(seconds)
    key = (found["client_id"], found["client_secret"], url, seconds)
    with _CLIENTS_LOCK:  # resources created at once wait for the first one's token instead of asking
        if key not in _CLIENTS:
            client = VerdaClient(found["client_id"], found["client_secret"], base_url=url)
            _bound_and_classified(client._http_client, seconds)
            _CLIENTS[key] = client
        return _CLIENTS[key]


def forget_clients() -> None:
    """Drop this process's clients, as a new provider process starts without any."""
    with _CLIENTS_LOCK:
        _CLIENTS.clear()


def refusal(response: requests.Response) -> VerdaHttpError:
    """Verda's answer >= 400 as the SDK raises it (the body's code and message), with its HTTP status
    and Retry-After, which the SDK drops: none of its codes names a rate limit, and a gateway's 5xx
    carries none (nor, from a proxy, any JSON)."""
    try:
        body = response.json()
    except ValueError:
        body = {"message": response.text[:200]}
    body = body if isinstance(body, dict) else {"message": str(body)[:200]}
    wait = retry_after_seconds(response.headers.get("Retry-After"))
    return VerdaHttpError(body.get("code"), body.get("message"), response.status_code, wait)


def _bound_and_classified(http: Any, seconds: float) -> None:
    """The SDK sends requests without a timeout (a hung API call must not hang `pulumi up`), and
    raises its refusals without their HTTP status: here they carry it (``refusal``)."""
    unbounded = http._request

    def bounded(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", seconds)
        answers: list[requests.Response] = []
        kwargs["hooks"] = {"response": lambda response, *_, **__: answers.append(response)}
        try:
            return unbounded(*args, **kwargs)
        except (APIException, json.JSONDecodeError) as exc:
            refused = next((r for r in reversed(answers) if not r.ok), None)
            if refused is None or isinstance(exc, VerdaHttpError):
                raise
            raise refusal(refused) from exc

    http._request = bounded


class _TokenRequests:
    """What the SDK's authentication module calls as ``requests``: it asks for its token (when the
    client is built, and again when the token expires) with a bare ``requests.post``, without a time
    limit, and raises a 429 or a 5xx there without its status. Here the post has the limit of the
    provider call in progress, and a refusal worth retrying carries its status. 400 and 401 go back to
    the SDK as they came: its refresh answers them by authenticating again."""

    @staticmethod
    def post(url: str, **kwargs: Any) -> requests.Response:
        timeout = kwargs.pop("timeout", _TOKEN_TIMEOUT_S.get())
        response = requests.post(url, timeout=timeout, **kwargs)
        if response.status_code == 429 or response.status_code >= 500:
            raise refusal(response)
        return response


verda_authentication.requests = _TokenRequests()


def api_code(exc: BaseException) -> str | None:
    return exc.code if isinstance(exc, APIException) else None


def http_status(exc: BaseException) -> int | None:
    return exc.status if isinstance(exc, VerdaHttpError) else None


def is_not_found(exc: BaseException) -> bool:
    return api_code(exc) == "not_found"


def is_transient(exc: BaseException) -> bool:
    """5xx, a rate limit, an unparseable gateway page, a dropped connection or a timeout: worth trying
    again."""
    status = http_status(exc) or 0
    if status == 429 or status >= 500:
        return True
    if isinstance(exc, APIException):
        return exc.code in TRANSIENT_CODES
    return isinstance(exc, requests.ConnectionError | requests.Timeout | json.JSONDecodeError)


def explain(exc: BaseException, kind: str, props: dict[str, Any]) -> str:
    name = props.get("name")
    if isinstance(exc, VerdaHttpError) and exc.status == 429:
        return rate_limited("Verda", kind, name, exc.retry_after)
    if is_transient(exc):
        return kept_failing("Verda", kind, name, exc)
    if isinstance(exc, APIException):
        advice = ADVICE.get(exc.code or "", "")
        status = http_status(exc)
        code = exc.code or (f"HTTP {status}" if status else "no error code")
        return f"Verda refused {kind} {name!r}: {exc.message} ({code}). {advice}".strip()
    return f"{kind} {name!r}: {exc}"


class VerdaProvider(LifecycleProvider):
    """A dynamic provider over the Verda SDK."""

    def connect(self, props: dict[str, Any]) -> Any:
        return verda_client(props)

    def check_offered(
        self, checked: CheckResult, key: str, listing: Callable[[Any], Iterable[str]], fix: str
    ) -> CheckResult:
        """``checked``, failing ``key`` when its value is none of what Verda lists: the engine checks
        at preview, so a name Verda does not have stops the `up` before anything is made. ``fix``
        names the config key; Verda's names follow it. When Verda cannot be asked, create explains."""
        news = checked.inputs
        wanted = news.get(key)
        if isinstance(wanted, dict):
            wanted = wanted.get("name")
        if checked.failures or wanted in (None, rpc.UNKNOWN):
            return checked
        listed = self.ask(news, lambda api: set(listing(api)))
        if listed is None or wanted in listed:
            return checked
        reason = f"Verda offers no {wanted!r}; fix: {fix} to one of {', '.join(sorted(listed))}"
        return CheckResult(news, [CheckFailure(key, reason)])

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    def retry_after(self, exc: BaseException) -> float | None:
        return exc.retry_after if isinstance(exc, VerdaHttpError) else None

    def explain(self, exc: BaseException, props: dict[str, Any]) -> str:
        return explain(exc, self.kind, props)


def fetch_or_none(call: Any, *args: Any) -> Any | None:
    """``call(*args)``, or None when Verda answers not_found."""
    try:
        return call(*args)
    except APIException as exc:
        if is_not_found(exc):
            return None
        raise


def delete_confirmed(what: str, delete: Any, fetch: Any, timing: Timing) -> None:
    """Ask Verda to delete (already gone is fine), then poll ``fetch()`` until it returns None."""
    try:
        delete()
    except APIException as exc:
        if not is_not_found(exc):
            raise
    until_gone(what, lambda: fetch() is None, timing)
