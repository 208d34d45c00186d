"""A long-lived Cloudflare origin CA certificate for nginx, and the VPS's SSH deploy key.

A proxied DNS record plus an origin CA certificate gives end-to-end TLS without certbot: browsers
see Cloudflare's certificate, Cloudflare trusts ours. The private keys never leave Pulumi secrets.
"""

from __future__ import annotations

import pulumi
import pulumi_cloudflare as cloudflare
import pulumi_tls as tls


class OriginCertificate(pulumi.ComponentResource):
    """Key, CSR and the certificate Cloudflare signs for ``domain``."""

    certificate: pulumi.Output[str]
    private_key: pulumi.Output[str]

    def __init__(
        self, name: str, domain: str, validity_days: int, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("comfy-workshop:tls:OriginCertificate", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        key = tls.PrivateKey(f"{name}-key", algorithm="RSA", rsa_bits=2048, opts=child)
        csr = tls.CertRequest(
            f"{name}-csr",
            private_key_pem=key.private_key_pem,
            subject=tls.CertRequestSubjectArgs(common_name=domain, organization="comfy-workshop"),
            dns_names=[domain],
            opts=child,
        )
        cert = cloudflare.OriginCaCertificate(
            f"{name}-cert",
            csr=csr.cert_request_pem,
            hostnames=[domain],
            request_type="origin-rsa",
            requested_validity=validity_days,
            opts=child,
        )
        self.certificate = cert.certificate
        self.private_key = pulumi.Output.secret(key.private_key_pem)
        self.register_outputs({"certificate": self.certificate, "privateKey": self.private_key})


class DeployKey(pulumi.ComponentResource):
    """The SSH key Pulumi uses to reach the VPS (Docker over SSH, drain and restore steps)."""

    public_key: pulumi.Output[str]
    private_key: pulumi.Output[str]

    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("comfy-workshop:tls:DeployKey", name, None, opts)
        key = tls.PrivateKey(f"{name}-key", algorithm="ED25519", opts=pulumi.ResourceOptions(parent=self))
        self.public_key = key.public_key_openssh
        self.private_key = pulumi.Output.secret(key.private_key_openssh)
        self.register_outputs({"publicKey": self.public_key, "privateKey": self.private_key})
