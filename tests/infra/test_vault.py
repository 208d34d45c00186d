"""The vault stack under mocks: buckets where they belong, scoped credentials, everything secret."""

from __future__ import annotations

import json

import pytest

from devkit.harness import REPO, StackRun, run_stack
from infra.r2 import s3_secret

ACCOUNT = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def vault() -> StackRun:
    return run_stack("vault")


def test_models_are_hinted_to_oceania_and_user_data_stays_in_the_eu(vault: StackRun) -> None:
    buckets = {r.inputs["name"]: r for r in vault.resources_of("cloudflare:index/r2Bucket:R2Bucket")}
    assert buckets["comfy-models"].inputs["location"] == "oc"
    assert buckets["comfy-models"].inputs["jurisdiction"] == "default"
    assert buckets["comfy-cache"].inputs["jurisdiction"] == "eu"
    assert buckets["comfy-user-files"].inputs["jurisdiction"] == "eu"
    assert all(bucket.protect for bucket in buckets.values()), "a bucket is never deleted by accident"


def test_every_bucket_aborts_abandoned_multipart_uploads_and_the_cache_expires(vault: StackRun) -> None:
    lifecycles = {
        r.name: r.inputs["rules"]
        for r in vault.resources_of("cloudflare:index/r2BucketLifecycle:R2BucketLifecycle")
    }
    assert len(lifecycles) == 3
    for rules in lifecycles.values():
        abort = rules[0]["abortMultipartUploadsTransition"]["condition"]
        assert abort == {"maxAge": 7 * 86_400, "type": "Age"}
    cache = lifecycles["vault-cache-lifecycle"][1]["deleteObjectsTransition"]["condition"]
    assert cache["maxAge"] == 30 * 86_400
    assert lifecycles["vault-user-files-lifecycle"][0]["id"] == "abort-incomplete-multipart-uploads"
    assert len(lifecycles["vault-user-files-lifecycle"]) == 1, "user files never expire"


def test_workers_get_read_only_models_and_the_queue_manager_read_write_user_files(vault: StackRun) -> None:
    tokens = {
        r.name: r.inputs["policies"][0] for r in vault.resources_of("cloudflare:index/apiToken:ApiToken")
    }
    models, files = tokens["models-read-token"], tokens["files-write-token"]
    assert json.loads(models["resources"]) == {
        f"com.cloudflare.edge.r2.bucket.{ACCOUNT}_default_comfy-models": "*"
    }
    assert [g["id"] for g in models["permissionGroups"]] == ["pg-Workers R2 Storage Bucket Item Read"]
    assert set(json.loads(files["resources"])) == {
        f"com.cloudflare.edge.r2.bucket.{ACCOUNT}_eu_comfy-user-files",
        f"com.cloudflare.edge.r2.bucket.{ACCOUNT}_eu_comfy-cache",
    }
    assert {g["id"] for g in files["permissionGroups"]} == {
        "pg-Workers R2 Storage Bucket Item Read", "pg-Workers R2 Storage Bucket Item Write",
    }  # fmt: skip


def test_r2_keys_derive_from_the_token_as_cloudflare_documents(vault: StackRun) -> None:
    assert vault.outputs["modelsReadCredentials"] == {
        "accessKeyId": "models-read-token-id",
        "secretAccessKey": s3_secret("token-value"),
    }
    assert len(s3_secret("token-value")) == 64


def test_credentials_and_keys_are_secret_outputs_and_passwords_are_generated(vault: StackRun) -> None:
    assert {
        "participantPasswords", "adminPassword", "sessionSecret", "modelsReadCredentials",
        "userFilesCredentials", "originPrivateKey", "deployPrivateKey",
    } <= vault.secret_outputs  # fmt: skip
    passwords = vault.resources_of("random:index/randomPassword:RandomPassword")
    assert len(passwords) == 20 + 2, "one per participant, the admin and the session secret"
    assert all(p.inputs["special"] is False and p.inputs["length"] >= 14 for p in passwords)


def test_the_origin_certificate_is_long_lived_for_the_domain(vault: StackRun) -> None:
    cert = vault.one("cloudflare:index/originCaCertificate:OriginCaCertificate").inputs
    assert (cert["hostnames"], cert["requestType"], cert["requestedValidity"]) == (
        ["workshop.example.org"], "origin-rsa", 5475,
    )  # fmt: skip
    assert "privateKeyPem" in vault.one("tls:index/certRequest:CertRequest").secret_inputs


def test_participant_names_are_public_and_urls_can_be_built_from_them(vault: StackRun) -> None:
    assert vault.outputs["participantNames"][:2] == ["user01", "user02"]
    assert vault.outputs["r2"]["userFiles"] == {
        "bucket": "comfy-user-files", "endpoint": f"https://{ACCOUNT}.eu.r2.cloudflarestorage.com",
    }  # fmt: skip


def test_permission_groups_are_looked_up_with_url_encoded_filters(vault: StackRun) -> None:
    lookups = [args for token, args in vault.invokes if token.endswith("getApiTokenPermissionGroupsList")]

    assert lookups and all(" " not in args["name"] and "%20" in args["name"] for args in lookups)
    assert {args["scope"] for args in lookups} == {"com.cloudflare.edge.r2.bucket"}


def test_the_vault_asks_for_a_token_that_may_create_user_api_tokens() -> None:
    text = (REPO / "Pulumi.vault.yaml").read_text()

    # cloudflare.ApiToken makes user tokens (/user/tokens): an account-level permission is not it.
    assert "User > API Tokens: Edit" in text and "Account > API Tokens" not in text
