"""Every environment variable the program sets is one the service actually reads (and parses)."""

from __future__ import annotations

import json

import pytest

from tests.infra.harness import StackRun, run_stack, stack_file

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
    names = _env_names(settings_module.Settings, "QM_") | _env_names(storage_module.S3Settings, "S3_")
    dispatch = pytest.importorskip("services.queue_manager.dispatch")
    return names | _env_names(dispatch.DispatchSettings, "QM_")


def _env(run: StackRun, name: str) -> dict[str, str]:
    container = run.one("docker:index/container:Container", name)
    return dict(item.split("=", 1) for item in container.inputs["envs"])


@pytest.mark.parametrize("stack", ["workshop", "local"])
def test_queue_manager_settings_are_all_read_and_valid(stack: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = _env(run_stack(stack), "platform-queue-manager")
    unknown = {n for n in set(env) - _known_qm_names() if not n.startswith("QM_PUSH_POOL_")}
    assert unknown == {"FORWARDED_ALLOW_IPS"}  # uvicorn's own: trust nginx's X-Forwarded-* headers
    participants = tmp_path / "participants.json"
    participants.write_text(json.dumps({"ada": "pw"}))
    parsed = settings_module.Settings(
        **{key.removeprefix("QM_").lower(): value for key, value in env.items() if key.startswith("QM_")}
        | {"participants_file": participants}
    )
    assert parsed.scheduling == "fair"
    upload_mb = stack_file(stack)["queue"]["maxUploadMb"]
    assert parsed.max_upload_bytes == upload_mb * 1024 * 1024, "queue.maxUploadMb, as nginx's limit"
    assert parsed.max_body_bytes == settings_module.Settings.model_fields["max_body_bytes"].default
    assert parsed.files_url == env["QM_FILES_URL"]
    assert parsed.participants["ada"].get_secret_value() == "pw"


def test_worker_settings_are_all_read() -> None:
    env = _env(run_stack("local"), "cpu-worker-0")
    assert set(env) - _env_names(worker_module.WorkerSettings, "WORKER_") == set()
