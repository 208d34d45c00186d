"""The vault's storage: R2 buckets with lifecycle rules, and bucket-scoped S3 credentials.

R2 speaks S3 with credentials derived from a Cloudflare API token: the access key id is the
token's id and the secret access key is the SHA-256 hex digest of the token's value.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pulumi
import pulumi_cloudflare as cloudflare

from infra.config import Bucket, R2Config

READ = "Workers R2 Storage Bucket Item Read"
WRITE = "Workers R2 Storage Bucket Item Write"
BUCKET_SCOPE = "com.cloudflare.edge.r2.bucket"
DAY_SECONDS = 86_400


def endpoint(account_id: str, jurisdiction: str) -> str:
    """The S3 endpoint of an account's buckets in ``jurisdiction`` (EU buckets have their own)."""
    region = "" if jurisdiction == "default" else f".{jurisdiction}"
    return f"https://{account_id}{region}.r2.cloudflarestorage.com"


def bucket_resource_key(account_id: str, bucket: Bucket) -> str:
    return f"com.cloudflare.edge.r2.bucket.{account_id}_{bucket.jurisdiction}_{bucket.name}"


def s3_secret(token_value: str) -> str:
    return hashlib.sha256(token_value.encode()).hexdigest()


def _whole_bucket_rule(rule_id: str, **transition: Any) -> cloudflare.R2BucketLifecycleRuleArgs:
    """An enabled lifecycle rule over every object in the bucket (an empty prefix)."""
    return cloudflare.R2BucketLifecycleRuleArgs(
        id=rule_id,
        enabled=True,
        conditions=cloudflare.R2BucketLifecycleRuleConditionsArgs(prefix=""),
        **transition,
    )


class Buckets(pulumi.ComponentResource):
    """Models (read by GPU workers), cache, and user files (participants' inputs and outputs)."""

    buckets: dict[str, cloudflare.R2Bucket]

    def __init__(
        self, name: str, account_id: str, config: R2Config, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("comfy-workshop:r2:Buckets", name, None, opts)
        self.account_id = account_id
        self.config = config
        roles = {"models": config.models, "cache": config.cache, "user-files": config.user_files}
        self.buckets = {role: self._bucket(name, role, bucket) for role, bucket in roles.items()}
        self._lifecycle(name, "models", config.models, None)
        self._lifecycle(name, "cache", config.cache, config.cache_expiry_days)
        self._lifecycle(name, "user-files", config.user_files, None)
        self.register_outputs({"summary": self.summary()})

    def _bucket(self, name: str, role: str, bucket: Bucket) -> cloudflare.R2Bucket:
        # Models are served to GPUs wherever they run (location hint); user data stays in the EU.
        # Buckets are kept when the stack is destroyed: they hold what the vault exists for.
        return cloudflare.R2Bucket(
            f"{name}-{role}",
            account_id=self.account_id,
            name=bucket.name,
            location=bucket.location_hint,
            jurisdiction=bucket.jurisdiction,
            opts=pulumi.ResourceOptions(parent=self, protect=True),
        )

    def _lifecycle(self, name: str, role: str, bucket: Bucket, expire_days: int | None) -> None:
        abort = cloudflare.R2BucketLifecycleRuleAbortMultipartUploadsTransitionArgs(
            condition=cloudflare.R2BucketLifecycleRuleAbortMultipartUploadsTransitionConditionArgs(
                max_age=self.config.abort_multipart_days * DAY_SECONDS, type="Age"
            )
        )
        rules = [
            _whole_bucket_rule("abort-incomplete-multipart-uploads", abort_multipart_uploads_transition=abort)
        ]
        if expire_days is not None:
            delete = cloudflare.R2BucketLifecycleRuleDeleteObjectsTransitionArgs(
                condition=cloudflare.R2BucketLifecycleRuleDeleteObjectsTransitionConditionArgs(
                    max_age=expire_days * DAY_SECONDS, type="Age"
                )
            )
            rules.append(_whole_bucket_rule("expire-cache", delete_objects_transition=delete))
        cloudflare.R2BucketLifecycle(
            f"{name}-{role}-lifecycle",
            account_id=self.account_id,
            bucket_name=self.buckets[role].name,
            jurisdiction=bucket.jurisdiction,
            rules=rules,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def summary(self) -> dict[str, dict[str, str]]:
        """Bucket name and S3 endpoint per role (not secret)."""
        roles = {
            "models": self.config.models,
            "cache": self.config.cache,
            "userFiles": self.config.user_files,
        }
        return {
            role: {"bucket": bucket.name, "endpoint": endpoint(self.account_id, bucket.jurisdiction)}
            for role, bucket in roles.items()
        }


@dataclass(frozen=True)
class Grant:
    """Which buckets a credential may touch, and whether it may write."""

    buckets: tuple[Bucket, ...]
    write: bool


class ScopedCredentials(pulumi.ComponentResource):
    """An API token limited to ``grant`` and the S3 key pair derived from it (both secret)."""

    access_key_id: pulumi.Output[str]
    secret_access_key: pulumi.Output[str]

    def __init__(
        self, name: str, account_id: str, grant: Grant, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("comfy-workshop:r2:ScopedCredentials", name, None, opts)
        groups = [READ, WRITE] if grant.write else [READ]
        resources = {bucket_resource_key(account_id, bucket): "*" for bucket in grant.buckets}
        self.token = cloudflare.ApiToken(
            f"{name}-token",
            name=f"comfy-workshop {name}",
            policies=[
                cloudflare.ApiTokenPolicyArgs(
                    effect="allow",
                    permission_groups=[
                        cloudflare.ApiTokenPolicyPermissionGroupArgs(id=_permission_group_id(group, self))
                        for group in groups
                    ],
                    resources=json.dumps(resources),
                )
            ],
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["value"]),
        )
        self.access_key_id = pulumi.Output.secret(self.token.id)
        self.secret_access_key = pulumi.Output.secret(self.token.value.apply(s3_secret))
        self.register_outputs({"accessKeyId": self.access_key_id, "secretAccessKey": self.secret_access_key})

    def as_output(self) -> pulumi.Output[dict[str, str]]:
        return pulumi.Output.secret(
            pulumi.Output.all(accessKeyId=self.access_key_id, secretAccessKey=self.secret_access_key)
        )


def _permission_group_id(group: str, parent: pulumi.Resource) -> pulumi.Output[str]:
    """Permission group ids differ per account era: look them up by name rather than hard-coding.
    The API takes the filters URL-encoded (the SDK says so): a name with plain spaces finds nothing."""
    found = cloudflare.get_api_token_permission_groups_list_output(
        name=quote(group, safe=""),
        scope=quote(BUCKET_SCOPE, safe=""),
        opts=pulumi.InvokeOptions(parent=parent),
    )

    def pick(result: cloudflare.GetApiTokenPermissionGroupsListResult) -> str:
        for item in result.results:
            if item.name == group:
                return item.id
        raise pulumi.RunError(
            f"Cloudflare has no API token permission group named {group!r}: the token in "
            "cloudflare:apiToken must be allowed to read and create API tokens (User > API Tokens: Edit)"
        )

    return found.apply(pick)
