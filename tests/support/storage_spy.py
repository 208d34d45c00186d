"""Where a store's reads start: the byte each ``get`` of a Storage asked for, in order."""

from __future__ import annotations

from services.storage import Storage


def record_starts(storage: Storage) -> list[int]:
    """Make ``storage`` note the start of every read in the list returned (it reads as before)."""
    starts: list[int] = []
    original = storage.get

    def spy(key: str, start: int = 0):  # type: ignore[no-untyped-def]
        starts.append(start)
        return original(key, start)

    storage.get = spy  # type: ignore[method-assign]
    return starts
