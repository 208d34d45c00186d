"""Talking to RunPod's REST API (``https://rest.runpod.io/v1``) with httpx.

The ``runpod`` SDK speaks GraphQL and cannot delete endpoints, templates or network volumes, and
the ``runpodinfra`` Pulumi package lacks GPU count and flashboot, so the providers use REST directly.
The key comes from the resource's secret input ``api_key`` or the registry's variable (RUNPOD_API_KEY).
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from infra.credential_registry import RUNPOD_API_KEY, from_props, refused
from infra.providers.lifecycle import LifecycleProvider, kept_failing, rate_limited, retry_after_seconds
from infra.providers.timing import Timing

DEFAULT_API_URL = "https://rest.runpod.io/v1"


class RunPodError(Exception):
    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after  # a 429's Retry-After, in seconds


def advice(error: RunPodError) -> str:
    text = error.message.lower()
    if error.status == 401:
        return refused(RUNPOD_API_KEY)
    if error.status == 402 or "balance" in text or "insufficient" in text:
        return "Add credit to the RunPod account, then run `pulumi up` again."
    if error.status == 403 or "quota" in text or "limit" in text:
        return "The account hit a RunPod limit: lower the pool's max workers or ask RunPod to raise it."
    return "Fix the pool's values in the stack config."


class RunPodApi:
    """A thin JSON client: raises RunPodError for any answer >= 400."""

    def __init__(self, props: dict[str, Any], transport: httpx.BaseTransport | None) -> None:
        key = from_props(props, api_key=RUNPOD_API_KEY)["api_key"]
        self.http = httpx.Client(
            base_url=props.get("api_url") or os.environ.get("RUNPOD_API_URL") or DEFAULT_API_URL,
            headers={"Authorization": f"Bearer {key}"},
            timeout=Timing.of(props).request_timeout_s,
            transport=transport,
        )

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.http.request(method, path, json=body)
        if response.status_code >= 400:
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            raise RunPodError(response.status_code, _message(response), wait)
        return response.json() if response.content else None

    def get_or_none(self, path: str) -> Any | None:
        try:
            return self.call("GET", path)
        except RunPodError as exc:
            if exc.status == 404:
                return None
            raise


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)
    return str(body)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, RunPodError):
        return exc.status >= 500 or exc.status == 429
    return isinstance(exc, httpx.TransportError)


class RunPodProvider(LifecycleProvider):
    """A dynamic provider over RunPod's REST API. ``transport`` lets tests fake HTTP (None in use)."""

    def __init__(self, transport: httpx.BaseTransport | None = None) -> None:
        super().__init__()
        self.transport = transport

    def connect(self, props: dict[str, Any]) -> RunPodApi:
        return RunPodApi(props, self.transport)

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    def retry_after(self, exc: BaseException) -> float | None:
        return exc.retry_after if isinstance(exc, RunPodError) else None

    def explain(self, exc: BaseException, props: dict[str, Any]) -> str:
        name = props.get("name")
        if isinstance(exc, RunPodError) and exc.status == 429:
            return rate_limited("RunPod", self.kind, name, exc.retry_after)
        if is_transient(exc):
            return kept_failing("RunPod", self.kind, name, exc)
        if isinstance(exc, RunPodError):
            return f"RunPod refused {self.kind} {name!r}: {exc.message} (HTTP {exc.status}). {advice(exc)}"
        return f"{self.kind} {name!r}: {exc}"
