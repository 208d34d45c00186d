"""An S3 double for tests and benchmarks: moto's S3 on a loopback port, in its own process.

moto's own ``python -m moto.server`` answers every request with ``Connection: close`` (werkzeug's
development server), so each call of a client connects again: R2 and S3 keep connections open,
and a client that reuses them spends a fraction of that. Here moto's application is served by
waitress instead, a production WSGI server that keeps HTTP/1.1 connections alive, so what a
benchmark measures of storage is what a real bucket costs the client, not reconnects. (waitress
drops request headers with an underscore in their name; nothing here sends S3 metadata keys.)

``python -m devkit.s3 PORT`` runs the server in the foreground.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import boto3

from devkit.servers import free_port, http_get, wait_until
from services.storage import S3Settings


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Yield the endpoint URL of a fresh S3 double; stop it afterwards."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "devkit.s3", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_get(endpoint).status_code < 500, timeout=90, what="moto S3 server")
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


def s3_settings(endpoint: str) -> S3Settings:
    """How the services reach the moto server at ``endpoint`` (moto takes any credentials)."""
    return S3Settings(
        endpoint_url=endpoint, access_key_id="test", secret_access_key="test", region="us-east-1"
    )


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


def serve(port: int) -> None:
    """Serve moto's S3 on ``127.0.0.1:port`` until terminated, keeping connections alive."""
    import waitress
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    app = DomainDispatcherApplication(create_backend_app)
    waitress.serve(app, host="127.0.0.1", port=port, threads=8, _quiet=True)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
