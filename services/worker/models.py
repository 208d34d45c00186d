"""Model files the worker must hold before it reports ready: a manifest, a sync, a verification.

The manifest (YAML or JSON, kept in config or the vault) lists each file::

    models:
      - path: checkpoints/sd_xl_base_1.0.safetensors   # under ComfyUI's model folders
        size: 6938078334
        sha256: 31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b
        source: sdxl/sd_xl_base_1.0.safetensors        # key in the models vault (default: path)

A file found on the shared model storage (``WORKER_SHARED_MODELS_DIR``, a network volume or
shared filesystem wired into ComfyUI by ``extra_model_paths.yaml``) with the right size is used
where it is. Otherwise it is synced from the models vault (``WORKER_MODELS_URL``) to local disk:
resumed from a partial download with a ranged read, hashed while it streams, and verified
against the manifest's sha256 before it is renamed into place.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from services.storage import Storage, open_storage
from services.worker.settings import WorkerSettings

log = logging.getLogger(__name__)
HASH_CHUNK = 8 * 1024 * 1024


class ModelError(Exception):
    """A manifest problem or a model that could not be obtained or verified."""


class ModelFile(BaseModel):
    path: str = Field(min_length=1)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    source: str | None = None

    @field_validator("path", "source")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("/") or ".." in PurePosixPath(value).parts):
            raise ValueError(f"{value!r} must be a relative path without '..'")
        return value

    @property
    def key(self) -> str:
        return self.source or self.path


class Manifest(BaseModel):
    models: list[ModelFile] = Field(default_factory=list)


def load_manifest(path: Path) -> Manifest:
    try:
        text = path.read_text()
        data: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        return Manifest.model_validate(data or {})
    except FileNotFoundError as exc:
        raise ModelError(f"models manifest {path} does not exist: fix WORKER_MODELS_MANIFEST") from exc
    except (ValueError, yaml.YAMLError, ValidationError) as exc:
        raise ModelError(f"models manifest {path} is invalid: {exc}") from exc


def _hash_file(path: Path, digest: Any) -> None:
    with path.open("rb") as handle:
        while block := handle.read(HASH_CHUNK):
            digest.update(block)


class ModelSync:
    def __init__(self, settings: WorkerSettings, vault: Storage | None, progress: Progress) -> None:
        self.settings, self.vault, self.progress = settings, vault, progress

    async def ensure(self, model: ModelFile) -> Path:
        shared = self.settings.shared_models_dir
        if shared is not None and self._sized(shared / model.path, model):
            return shared / model.path
        local = self.settings.models_dir / model.path
        marker = local.with_name(f".{local.name}.sha256")
        if self._sized(local, model) and marker.is_file() and marker.read_text().strip() == model.sha256:
            return local
        await self._download(model, local)
        marker.write_text(model.sha256)
        return local

    @staticmethod
    def _sized(path: Path, model: ModelFile) -> bool:
        return path.is_file() and path.stat().st_size == model.size

    async def _download(self, model: ModelFile, target: Path) -> None:
        if self.vault is None:
            raise ModelError(
                f"model {model.path} is not on the shared storage and WORKER_MODELS_URL is not set: "
                "put the file there or set WORKER_MODELS_URL to the models vault"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.part")
        digest = hashlib.sha256()
        start = partial.stat().st_size if partial.is_file() else 0
        if start > model.size:
            partial.unlink()
            start = 0
        if start:
            await asyncio.to_thread(_hash_file, partial, digest)
        task = self.progress.add_task(model.path, total=model.size, completed=start)
        with partial.open("ab") as handle:
            async for chunk in self.vault.get(model.key, start=start):
                handle.write(chunk)
                digest.update(chunk)
                self.progress.advance(task, len(chunk))
        self._verify(model, partial, digest.hexdigest())
        partial.replace(target)

    @staticmethod
    def _verify(model: ModelFile, partial: Path, actual: str) -> None:
        size = partial.stat().st_size
        if size != model.size or actual != model.sha256:
            partial.unlink()
            raise ModelError(
                f"model {model.path} from the vault does not match the manifest (size {size} vs "
                f"{model.size}, sha256 {actual} vs {model.sha256}): fix the manifest or re-upload the file"
            )


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )


async def ensure_models(settings: WorkerSettings, vault: Storage | None = None) -> list[str]:
    """Make every manifest file present and verified; return their paths (what the worker advertises)."""
    assert settings.models_manifest is not None
    manifest = load_manifest(settings.models_manifest)
    if vault is None and settings.models_url:
        vault = open_storage(settings.models_url)
    with progress_bar() as progress:
        sync = ModelSync(settings, vault, progress)
        for model in manifest.models:
            where = await sync.ensure(model)
            log.info("model %s ready at %s", model.path, where)
    return [model.path for model in manifest.models]
