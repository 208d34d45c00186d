"""Every environment variable the program sets is one the service actually reads (and parses)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from devkit.harness import StackRun, run_stack, stack_file

settings_module = pytest.importorskip("services.queue_manager.settings")
storage_module = pytest.importorskip("services.storage.open")
worker_module = pytest.importorskip("services.worker.settings")


def _env_names(model: type, prefix: str) -> set[str]:
    names = {prefix + name.upper() for name in model.model_fields}  # type: ignore[attr-defined]
    for field in model.model_fields.values():  # type: ignore[attr-defined]
        choices = getattr(field.validation_alias, "choices", ())
        names |= {choice for choice in choices if isinstance(choice, str) and choice.isupper()}
    return names


def _known_qm_names() -> set[str]:
    return _env_names(settings_module.Settings, "QM_") | _env_names(storage_module.S3Settings, "S3_")


def _env(run: StackRun, name: str) -> dict[str, str]:
    container = run.one("docker:index/container:Container", name)
    return dict(item.split("=", 1) for item in container.inputs["envs"])


def _as_environment(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], prefixes: tuple[str, ...]) -> None:
    """The process environment a container gets: only what the program wrote, under these prefixes."""
    for name in [n for n in os.environ if n.startswith(prefixes)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("stack", ["workshop", "local"])
def test_queue_manager_settings_are_all_read_and_valid(
    stack: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _env(run_stack(stack), "platform-queue-manager")
    unknown = {n for n in set(env) - _known_qm_names() if not n.startswith("QM_PUSH_POOL_")}
    assert unknown == {"FORWARDED_ALLOW_IPS"}  # uvicorn's own: trust nginx's X-Forwarded-* headers
    participants = tmp_path / "participants.json"
    participants.write_text(json.dumps({"ada": "pw"}))
    _as_environment(monkeypatch, env | {"QM_PARTICIPANTS_FILE": str(participants)}, ("QM_", "S3_"))

    parsed = settings_module.Settings()

    assert parsed.scheduling == "fair"
    upload_mb = stack_file(stack)["queue"]["maxUploadMb"]
    assert parsed.max_upload_bytes == upload_mb * 1024 * 1024, "queue.maxUploadMb, as nginx's limit"
    assert parsed.max_body_bytes == settings_module.Settings.model_fields["max_body_bytes"].default
    assert parsed.files_url == env["QM_FILES_URL"]
    models = [model["path"] for model in stack_file(stack).get("models", [])]
    assert parsed.models == (models or None), "the workspaces offer the models every GPU holds"
    assert parsed.participants["ada"].get_secret_value() == "pw"
    push = [p["name"] for p in stack_file(stack).get("pools", []) if p["kind"].endswith("-serverless")]
    assert sorted(pool.name for pool in parsed.push_pools) == sorted(push)
    assert set(parsed.worker_tokens) == {p["name"] for p in stack_file(stack).get("pools", [])} | (
        {"cpu"} if stack == "local" else set()
    )


def test_the_queue_policy_defaults_are_the_same_on_both_sides() -> None:
    """A key left out of the stack config means the same limit as the service's own default."""
    from infra.config import QueuePolicy

    program, service = QueuePolicy(), settings_module.Settings.model_fields
    assert program.max_queued_per_user == service["max_queued_per_user"].default
    assert program.max_running_per_user == service["max_running_per_user"].default
    assert program.lease_seconds == service["lease_seconds"].default
    assert program.max_attempts == service["max_attempts"].default
    assert program.retention_hours == service["retention_hours"].default
    assert program.max_upload_mb * 1024 * 1024 == service["max_upload_bytes"].default
    assert program.scheduling == service["scheduling"].default


def test_every_pools_worker_settings_parse_as_the_worker_reads_them(monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_stack("workshop")
    deployment = run.named("burst-deployment").inputs
    env = {**deployment["env"], **deployment["secret_env"]}
    _as_environment(monkeypatch, env, ("WORKER_", "S3_"))

    parsed = worker_module.WorkerSettings()

    assert (parsed.pool, parsed.provider, parsed.token.get_secret_value()) == (
        "burst",
        "verda-serverless",
        env["WORKER_TOKEN"],
    )
    script = run.named("baseline-startup").inputs["script"]
    named = set(re.findall(r"\bWORKER_[A-Z_]+\b", script))
    assert named and named <= _env_names(worker_module.WorkerSettings, "WORKER_"), named


def test_worker_settings_are_all_read() -> None:
    env = _env(run_stack("local"), "cpu-worker-0")
    assert set(env) - _env_names(worker_module.WorkerSettings, "WORKER_") == set()
