"""The queue manager's `QM_*` (and its storage's `S3_*`) environment, from the stack config.

The names are the fields of `services.queue_manager.settings.Settings` (and
`services.storage.open.S3Settings`); a test checks every name here is one the service reads.
"""

from __future__ import annotations

import json

import pulumi

from infra.config import ModelFile, QueuePolicy
from infra.secret import secret

MB = 1024 * 1024


def policy_settings(policy: QueuePolicy) -> dict[str, str]:
    """The queue policy as plain settings."""
    return {
        "QM_SCHEDULING": policy.scheduling,
        "QM_MAX_QUEUED_PER_USER": str(policy.max_queued_per_user),
        "QM_MAX_RUNNING_PER_USER": str(policy.max_running_per_user),
        "QM_LEASE_SECONDS": str(policy.lease_seconds),
        "QM_MAX_ATTEMPTS": str(policy.max_attempts),
        "QM_RETENTION_HOURS": str(policy.retention_hours),
        # Uploads only, as nginx's client_max_body_size; JSON bodies keep QM_MAX_BODY_BYTES's 2 MB.
        "QM_MAX_UPLOAD_BYTES": str(policy.max_upload_mb * MB),
        "QM_MAX_USER_FILES_BYTES": str(policy.max_files_mb_per_user * MB),
    }


def queue_manager_settings(
    policy: QueuePolicy,
    public_url: pulumi.Input[str],
    admin_user: pulumi.Input[str],
    admin_password: pulumi.Input[str],
    session_secret: pulumi.Input[str],
    worker_tokens_json: pulumi.Input[str],
    files_url: pulumi.Input[str],
    models: list[ModelFile],
) -> dict[str, pulumi.Input[str]]:
    """Everything but Redis's URL and the participants file (the platform adds those)."""
    # The workspaces offer and accept only the model files every GPU holds: the manifest's.
    held = {"QM_MODELS": json.dumps([model.path for model in models])} if models else {}
    return {
        **held,
        **policy_settings(policy),
        "QM_ENV": "production",
        "QM_PUBLIC_URL": public_url,
        "QM_ADMIN_USER": admin_user,
        "QM_ADMIN_PASSWORD": secret(admin_password),
        "QM_SESSION_SECRET": secret(session_secret),
        "QM_WORKER_TOKENS": secret(worker_tokens_json),
        "QM_FILES_URL": files_url,
        # The pools start beside the queue keeper's restore step: nothing is leased before it ran.
        "QM_RESTORE_FIRST": "1",
    }


def s3_settings(
    endpoint: pulumi.Input[str], credentials: pulumi.Output[dict[str, str]]
) -> dict[str, pulumi.Input[str]]:
    """`S3_*` for R2: endpoint, bucket-scoped key pair (secret), region `auto`."""
    return {
        "S3_ENDPOINT_URL": endpoint,
        "S3_ACCESS_KEY_ID": secret(credentials.apply(lambda c: c["accessKeyId"])),
        "S3_SECRET_ACCESS_KEY": secret(credentials.apply(lambda c: c["secretAccessKey"])),
        "S3_REGION": "auto",
    }
