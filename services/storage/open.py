"""``open_storage(url)``: the one way services turn a storage URL into a ``Storage``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import boto3
from botocore.config import Config
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.storage.base import Storage, StorageError
from services.storage.local import LocalStorage
from services.storage.s3 import S3Storage


class S3Settings(BaseSettings):
    """Where the S3-compatible endpoint is and how to sign in (env ``S3_ENDPOINT_URL``, ...).

    For Cloudflare R2 the endpoint is ``https://<account id>.r2.cloudflarestorage.com`` (EU
    jurisdiction buckets: ``https://<account id>.eu.r2.cloudflarestorage.com``) and region ``auto``.
    """

    model_config = SettingsConfigDict(env_prefix="S3_")

    endpoint_url: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    region: str = "auto"


def open_storage(url: str, s3: S3Settings | None = None) -> Storage:
    """``file:///path`` for a local directory, ``s3://bucket[/prefix]`` for a bucket."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStorage(Path(unquote(parsed.path)))
    if parsed.scheme == "s3" and parsed.netloc:
        settings = s3 or S3Settings()
        once = _s3_client(settings, attempts=1)
        return S3Storage(_s3_client(settings), parsed.netloc, parsed.path, once=once)
    raise StorageError(
        f"storage URL {url!r} is not supported: use file:///absolute/path for a local directory "
        "or s3://bucket[/prefix] for S3/R2 (endpoint and keys in S3_ENDPOINT_URL, "
        "S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY)"
    )


def _s3_client(settings: S3Settings, attempts: int = 6):  # type: ignore[no-untyped-def]
    """A client of the endpoint; ``attempts``: how many times in all botocore itself sends a call
    that gets no answer or a 5xx (1: once, the caller retries)."""

    def secret(value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value else None

    return boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        aws_access_key_id=secret(settings.access_key_id),
        aws_secret_access_key=secret(settings.secret_access_key),
        region_name=settings.region,
        # R2 does not take botocore's default aws-chunked CRC uploads; checksums only where required.
        config=Config(
            retries={"total_max_attempts": attempts, "mode": "standard"},
            signature_version="s3v4",
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
