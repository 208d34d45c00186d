"""The Pulumi harness leaves the process as it found it, however many programs a session runs."""

from __future__ import annotations

import pickle

from pulumi.dynamic import ResourceProvider
from pulumi.dynamic.dynamic import serialize_provider

from devkit.harness import pickle_as_found


def test_pickling_providers_as_pulumi_does_leaves_pickle_as_it_found_it() -> None:
    """Pulumi wraps pickle's dict writer once more on each dynamic resource and never unwraps it;
    about a thousand in one test session made every later program fail with RecursionError (a
    program that failed there hung, its pools waiting for a restore step never declared)."""
    found = pickle._Pickler._batch_setitems  # type: ignore[attr-defined]
    with pickle_as_found():
        for _ in range(3):
            serialize_provider(ResourceProvider())
        assert pickle._Pickler._batch_setitems is not found  # type: ignore[attr-defined]  # the SDK wraps it
    assert pickle._Pickler._batch_setitems is found  # type: ignore[attr-defined]
