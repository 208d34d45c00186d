"""nginx in front of the queue manager: TLS with the origin certificate, routes, headers, limits."""

from __future__ import annotations

from dataclasses import dataclass

from infra.templates import render

TLS_DIR = "/etc/nginx/tls"


@dataclass(frozen=True)
class Tls:
    certificate: str = f"{TLS_DIR}/origin.pem"
    private_key: str = f"{TLS_DIR}/origin.key"


@dataclass(frozen=True)
class NginxSpec:
    """``tls`` None serves plain HTTP on ``http_port`` (the local stack); else HTTPS plus a redirect.
    ``trusted_proxies`` (Cloudflare's ranges) may name the client in `CF-Connecting-IP`."""

    server_name: str
    upstream: str = "queue-manager:8000"
    max_upload_mb: int = 100
    tls: Tls | None = None
    http_port: int = 8080
    https_port: int = 443
    worker_port: int | None = None
    trusted_proxies: tuple[str, ...] = ()


def _public(spec: NginxSpec) -> str:
    if spec.tls is None:
        listen, tls, hsts = f"listen {spec.http_port};", "", ""
    else:
        # `listen ... http2` rather than `http2 on`: valid on Debian's nginx 1.22 (tests) and 1.27 (image).
        listen = f"listen {spec.https_port} ssl http2;"
        tls = (
            f"ssl_certificate {spec.tls.certificate};\n    ssl_certificate_key {spec.tls.private_key};\n"
            "    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_cache shared:SSL:10m;"
        )
        hsts = 'add_header Strict-Transport-Security "max-age=31536000" always;'
    real_ip = "".join(f"set_real_ip_from {source};\n    " for source in spec.trusted_proxies)
    if real_ip:
        real_ip += "real_ip_header CF-Connecting-IP;"
    return render(
        "nginx-public.conf",
        real_ip=real_ip,
        listen=listen,
        server_name=spec.server_name,
        max_upload_mb=spec.max_upload_mb,
        tls=tls,
        hsts=hsts,
    )


def _redirect(spec: NginxSpec) -> str:
    return render("nginx-redirect.conf", http_port=spec.http_port)


def nginx_site(spec: NginxSpec) -> str:
    """The whole `conf.d/default.conf` (http context) for ``spec``."""
    servers = [_public(spec)]
    if spec.tls is not None:
        servers.append(_redirect(spec))
    if spec.worker_port is not None:
        servers.append(
            render("nginx-workers.conf", worker_port=spec.worker_port, max_upload_mb=spec.max_upload_mb)
        )
    return render("nginx-site.conf", upstream=spec.upstream, servers="\n".join(servers))
