"""Model files: found on shared storage, or synced from the models vault (S3, moto), resumed, verified."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from services.storage import S3Settings, Storage, aiter_chunks, open_storage
from services.worker.models import ModelError, ensure_models, load_manifest
from services.worker.settings import WorkerSettings
from tests.support.s3 import make_bucket, moto_server

WEIGHTS = bytes(range(256)) * 4096  # 1 MiB of "weights"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
async def vault(s3_endpoint: str, tmp_path: Path) -> Storage:
    bucket = f"models-{tmp_path.name.lower().replace('_', '-')}"[:60]
    make_bucket(s3_endpoint, bucket)
    settings = S3Settings(
        endpoint_url=s3_endpoint, access_key_id="test", secret_access_key="test", region="us-east-1"
    )
    storage = open_storage(f"s3://{bucket}", settings)
    await storage.put("sd/model.safetensors", aiter_chunks(WEIGHTS))
    return storage


def manifest(
    tmp_path: Path, sha: str = hashlib.sha256(WEIGHTS).hexdigest(), size: int = len(WEIGHTS)
) -> Path:
    path = tmp_path / "models.yaml"
    entry = {
        "path": "checkpoints/model.safetensors",
        "size": size,
        "sha256": sha,
        "source": "sd/model.safetensors",
    }
    path.write_text(yaml.safe_dump({"models": [entry]}))
    return path


def settings(tmp_path: Path) -> WorkerSettings:
    return WorkerSettings(
        models_manifest=manifest(tmp_path), models_url="s3://unused", models_dir=tmp_path / "models"
    )


async def test_a_missing_model_is_synced_from_the_vault_and_verified(vault: Storage, tmp_path: Path) -> None:
    held = await ensure_models(settings(tmp_path), vault)
    assert held == ["checkpoints/model.safetensors"]
    assert (tmp_path / "models/checkpoints/model.safetensors").read_bytes() == WEIGHTS


async def test_an_interrupted_download_resumes_where_it_stopped(vault: Storage, tmp_path: Path) -> None:
    partial = tmp_path / "models/checkpoints/model.safetensors.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(WEIGHTS[:300_000])
    reads: list[int] = []
    original = vault.get

    def spy(key: str, start: int = 0):  # type: ignore[no-untyped-def]
        reads.append(start)
        return original(key, start)

    vault.get = spy  # type: ignore[method-assign]
    await ensure_models(settings(tmp_path), vault)
    assert reads == [300_000]
    assert (tmp_path / "models/checkpoints/model.safetensors").read_bytes() == WEIGHTS


async def test_a_verified_model_is_not_downloaded_again(vault: Storage, tmp_path: Path) -> None:
    await ensure_models(settings(tmp_path), vault)
    await vault.delete("sd/model.safetensors")
    assert await ensure_models(settings(tmp_path), vault) == ["checkpoints/model.safetensors"]


async def test_a_model_on_shared_storage_is_used_where_it_is(tmp_path: Path) -> None:
    shared = tmp_path / "shared/checkpoints/model.safetensors"
    shared.parent.mkdir(parents=True)
    shared.write_bytes(WEIGHTS)
    config = WorkerSettings(
        models_manifest=manifest(tmp_path),
        shared_models_dir=tmp_path / "shared",
        models_dir=tmp_path / "models",
    )
    assert await ensure_models(config) == ["checkpoints/model.safetensors"]
    assert not (tmp_path / "models").exists()


async def test_a_hash_mismatch_is_refused_and_the_bad_file_removed(vault: Storage, tmp_path: Path) -> None:
    config = settings(tmp_path)
    config.models_manifest = manifest(tmp_path, sha="0" * 64)
    with pytest.raises(ModelError, match=r"does not match the manifest.*fix the manifest or re-upload"):
        await ensure_models(config, vault)
    assert not list((tmp_path / "models/checkpoints").iterdir())


def test_a_bad_manifest_names_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - path: ../escape.bin\n    size: 1\n    sha256: nothex\n")
    with pytest.raises(ModelError, match=r"(?s)invalid.*'\.\./escape\.bin' must be a relative path"):
        load_manifest(path)
    with pytest.raises(ModelError, match="does not exist: fix WORKER_MODELS_MANIFEST"):
        load_manifest(tmp_path / "none.yaml")


def test_a_manifest_without_a_source_is_refused_at_startup(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="WORKER_MODELS_URL"):
        WorkerSettings(models_manifest=manifest(tmp_path))
