"""User-file storage: one small interface, a local directory or an S3-compatible bucket (R2).

Shared by the queue manager (participants' uploads and outputs) and the worker (inputs in,
outputs out). Files always travel as streams of chunks, never whole in memory.

    storage = open_storage("file:///srv/files")          # local stack
    storage = open_storage("s3://comfy-files/workshop")  # R2: endpoint and keys from S3Settings / env
"""

from services.storage.base import (
    CHUNK_SIZE,
    FileMissingError,
    KeyConflictError,
    KeyTakenError,
    Storage,
    StorageError,
    StorageUnavailableError,
    aiter_chunks,
    holds,
    patiently,
)
from services.storage.open import S3Settings, open_storage

__all__ = [
    "CHUNK_SIZE",
    "FileMissingError",
    "KeyConflictError",
    "KeyTakenError",
    "S3Settings",
    "Storage",
    "StorageError",
    "StorageUnavailableError",
    "aiter_chunks",
    "holds",
    "open_storage",
    "patiently",
]
