"""How a models manifest may name its files: the one rule the worker's sync keeps and ``pulumi preview``
checks before any GPU starts (the Pulumi program imports this module, and nothing else of the worker).

A path is relative, written one way only, and never one of the sync's own names: a partial
download ``<name>.part``, a verified mark ``.<name>.sha256``, a rejection ``.<name>.rejected`` (the
bucket's file came down whole and failed its check), the volume's lock and its take-over lock, a
write probe, a filesystem's ``lost+found``.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from pydantic import BaseModel, Field, field_validator

from services.protocol.workers import MAX_MODEL_PATH, MAX_MODELS

LOCK_NAME = ".comfy-models.lock"
MARKS = (".sha256", ".rejected")  # ``.<name><mark>``: the file verified; the bucket's file failed its check


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot name one model file the sync keeps (None: it can). A path is written one
    way only (two spellings of one file would pass the duplicate check with two sha256s), and never
    names the sync's own files (a partial download, a verified mark, the volume's lock)."""
    parts = path.split("/")
    if len(path) > MAX_MODEL_PATH:
        return (
            f"{path[:60]!r}... is longer than {MAX_MODEL_PATH} characters; fix: give the file a shorter path"
        )
    if path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        return (
            f"{path!r} must be a relative path to a file, without '.', '..', '//' or a leading or trailing "
            "'/'; fix: write it as e.g. checkpoints/x.safetensors"
        )
    if any(not char.isprintable() for char in path):
        return f"{path!r} has control characters; fix: write it as e.g. checkpoints/x.safetensors"
    if marked_model(parts[-1]) is not None or bookkeeping(PurePosixPath(path)):
        return (
            f"{path!r} is a name the models sync keeps for itself (a partial download *.part, a verified "
            f"mark .<name>.sha256, a rejection .<name>.rejected, {LOCK_NAME}); fix: rename the model file"
        )
    return None


def source_problem(source: str) -> str | None:
    """Why ``source`` cannot be a model's key in the models bucket (None: it can): the keys the
    worker's bucket reads take (``services.storage.base.check_key``), relative and written one way."""
    if source.startswith("/") or "\\" in source or any(part in ("", ".", "..") for part in source.split("/")):
        return (
            f"{source!r} must be a relative key without '..', '.', '//', a backslash or a leading or "
            "trailing '/'; fix: write it as e.g. checkpoints/x.safetensors"
        )
    return None


def _refused(problem: str | None, value: str) -> str:
    if problem is not None:
        raise ValueError(problem)
    return value


class ModelFile(BaseModel):
    """One file of the manifest: where workers keep it (``path``, under their models folder), its
    size and sha256, and its key in the models bucket (``source``, default: ``path``)."""

    path: str = Field(min_length=1, examples=["checkpoints/sdxl.safetensors"])
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    source: str | None = Field(default=None, description="key in the models bucket (default: path)")

    @field_validator("path")
    @classmethod
    def _one_spelling(cls, value: str) -> str:
        return _refused(path_problem(value), value)

    @field_validator("source")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        return value if value is None else _refused(source_problem(value), value)

    @property
    def key(self) -> str:
        return self.source or self.path


def manifest_problem(paths: list[str]) -> str | None:
    """Why these paths cannot all be kept side by side: one listed twice, or one that is another's
    folder. None when they can."""
    if len(paths) > MAX_MODELS:
        return (
            f"{len(paths)} model files, more than the {MAX_MODELS} a worker reports; fix: list fewer models"
        )
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            return f"duplicate model path {path}; fix: list each model file once"
        seen.add(path)
    for path in paths:
        folders = ("/".join(path.split("/")[:end]) for end in range(1, path.count("/") + 1))
        clash = next((folder for folder in folders if folder in seen), None)
        if clash is not None:
            return f"{clash} is a file and a folder ({path}); fix: rename one of the two models"
    return None


def own_names(path: str) -> list[str]:
    """Every name on the volume the sync uses for the model at ``path``: its folders, the file, its
    partial download and its marks (verified, rejected)."""
    parts = path.split("/")
    folders = ["/".join(parts[:end]) for end in range(1, len(parts))]
    marks = ["/".join([*parts[:-1], f".{parts[-1]}{mark}"]) for mark in MARKS]
    return [*folders, path, f"{path}.part", *marks]


def marked_model(name: str) -> str | None:
    """The model a file name belongs to when the sync wrote it: one of its marks or its partial download."""
    mark = next((mark for mark in MARKS if name.startswith(".") and name.endswith(mark)), None)
    if mark is not None:
        return name[1 : -len(mark)]
    return name.removesuffix(".part") if name.endswith(".part") else None


def bookkeeping(relative: PurePosixPath) -> bool:
    """The lock, its take-over lock, a write probe, a filesystem's lost+found: never models."""
    top = relative.parts[0]
    return top.startswith((LOCK_NAME, ".comfy-write-probe-")) or top == "lost+found"
