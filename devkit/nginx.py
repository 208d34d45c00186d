"""Real nginx for tests: render a site into a temporary prefix, check it with `nginx -t`, run it on
loopback ports, and a self-signed certificate for its TLS server."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

MAIN_CONF = """\
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_processes 1;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/site.conf;
}}
"""


def nginx_binary() -> str:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise RuntimeError("nginx is not installed: run `apt-get install nginx-light`")
    return binary


def self_signed(directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A throwaway certificate and key (openssl), as the origin certificate stands in."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def write_prefix(directory: Path, site: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "site.conf").write_text(site)
    conf = directory / "nginx.conf"
    conf.write_text(MAIN_CONF.format(prefix=directory))
    return conf


def nginx_test(directory: Path, site: str) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on ``site`` (an http-context file) inside a minimal main config."""
    conf = write_prefix(directory, site)
    return subprocess.run(
        [nginx_binary(), "-t", "-p", str(directory), "-c", str(conf)], capture_output=True, text=True
    )


@contextlib.contextmanager
def running_nginx(directory: Path, site: str) -> Iterator[subprocess.Popen[bytes]]:
    conf = write_prefix(directory, site)
    process = subprocess.Popen(
        [nginx_binary(), "-p", str(directory), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        yield process
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        process.kill()
        process.wait()
