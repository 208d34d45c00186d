"""The infra tests run the program under Pulumi mocks; provider credentials in the environment
would hide a missing-secret error, so they are removed for every test. Pulumi's mocks run on the
thread's current event loop, which async tests elsewhere in the session leave unset.

A program that fails under the mocks leaves its outputs' futures holding the error, never
retrieved; when they are collected, asyncio logs each with its traceback, and formatting a
traceback on Python 3.11 calls ``ast.parse``. Collected in the middle of another ``ast.parse``
(a later test reading the repository's sources), that re-entry corrupts the parser's recursion
count and the outer parse fails with "AST constructor recursion depth mismatch" (CPython
gh-106905). So each module's futures are collected when the module ends, where nothing parses,
and quietly: the tests that made those programs fail asserted the error already."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from devkit.harness import ENV_SECRETS, pickle_as_found


@pytest.fixture(autouse=True)
def _no_credentials_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_SECRETS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _pickle_as_found() -> Iterator[None]:
    """Each test leaves pickle as it found it, whatever it pickled as Pulumi does (``pickle_as_found``)."""
    with pickle_as_found():
        yield


@pytest.fixture(autouse=True, scope="module")
def _event_loop_for_pulumi() -> Iterator[None]:
    """Async tests elsewhere in the session leave the thread without a current loop; give it one,
    and collect what the module's programs left on it before the next module runs."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    loop.set_exception_handler(lambda _loop, _context: None)
    gc.collect()
