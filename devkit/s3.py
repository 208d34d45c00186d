"""An S3 double for tests: moto in server mode on a loopback port, in its own process."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import boto3
import httpx

from devkit.servers import free_port, wait_until


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Yield the endpoint URL of a fresh moto S3 server; stop it afterwards."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(endpoint).status_code < 500, timeout=90, what="moto S3 server")
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


def s3_client(endpoint: str) -> Any:
    """A boto3 S3 client of the moto server at ``endpoint`` (moto takes any credentials)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )


def make_bucket(endpoint: str, bucket: str) -> None:
    s3_client(endpoint).create_bucket(Bucket=bucket)
