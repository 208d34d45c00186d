"""The vault stack: everything that outlives a workshop day, exported for the workshop stack."""

from __future__ import annotations

from typing import Any

import pulumi

from infra.config import VaultConfig
from infra.credentials import Credentials
from infra.origin_cert import DeployKey, OriginCertificate
from infra.r2 import Buckets, Grant, ScopedCredentials


def build_vault(config: VaultConfig) -> dict[str, Any]:
    """Declare the vault and return its stack outputs (secrets wrapped as secrets)."""
    r2 = config.r2
    buckets = Buckets("vault", config.cloudflare_account_id, r2)
    after_buckets = pulumi.ResourceOptions(depends_on=list(buckets.buckets.values()))
    models_read = ScopedCredentials(
        "models-read", config.cloudflare_account_id, Grant((r2.models,), write=False), after_buckets
    )
    files_write = ScopedCredentials(
        "files-write",
        config.cloudflare_account_id,
        Grant((r2.user_files, r2.cache), write=True),
        after_buckets,
    )
    credentials = Credentials("credentials", config.participants)
    cert = OriginCertificate("origin", config.domain, config.certificate_days)
    deploy_key = DeployKey("deploy")
    return {
        "domain": config.domain,
        "adminUser": config.admin_user,
        "participantNames": list(config.participants),
        "participantPasswords": credentials.participants,
        "adminPassword": credentials.admin_password,
        "sessionSecret": credentials.session_secret,
        "r2": buckets.summary(),
        "modelsReadCredentials": models_read.as_output(),
        "userFilesCredentials": files_write.as_output(),
        "originCertificate": cert.certificate,
        "originPrivateKey": cert.private_key,
        "deployPublicKey": deploy_key.public_key,
        "deployPrivateKey": deploy_key.private_key,
    }
