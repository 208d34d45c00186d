"""Settings refuse unsafe defaults and explain bad values."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from services.queue_manager.auth import Authenticator
from services.queue_manager.settings import Settings
from tests.support.qm_api import user_auth


def test_production_refuses_to_start_without_an_admin_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QM_SESSION_SECRET", "x" * 32)
    with pytest.raises(ValidationError, match="QM_ADMIN_PASSWORD"):
        Settings()


def test_production_refuses_a_short_session_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QM_ADMIN_PASSWORD", "pw")
    monkeypatch.setenv("QM_SESSION_SECRET", "short")
    with pytest.raises(ValidationError, match="QM_SESSION_SECRET"):
        Settings()


def test_development_runs_without_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QM_ENV", "development")
    assert Settings().admin_password is not None


def test_json_settings_come_from_env_and_a_participants_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    people = tmp_path / "participants.json"
    people.write_text(json.dumps({"ada": "from-file", "bob": "bob-pw"}))
    monkeypatch.setenv("QM_ENV", "development")
    monkeypatch.setenv("QM_WORKER_TOKENS", '{"h100": "tok"}')
    monkeypatch.setenv("QM_PARTICIPANTS", '{"ada": "from-env"}')
    monkeypatch.setenv("QM_PARTICIPANTS_FILE", str(people))
    monkeypatch.setenv("QM_SCHEDULING", "priority")
    settings = Settings()
    assert settings.worker_tokens["h100"].get_secret_value() == "tok"
    auth = Authenticator(settings)
    assert auth.login("ada", "from-env") is not None and auth.login("bob", "bob-pw") is not None
    assert auth.login("ada", "from-file") is None


def test_a_malformed_json_setting_names_what_is_expected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QM_ENV", "development")
    monkeypatch.setenv("QM_WORKER_TOKENS", "h100=tok")
    with pytest.raises(ValidationError, match="JSON object"):
        Settings()


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("h100=3600", "JSON object of pool -> seconds"),
        ('{"h100": 0}', "greater than 0"),
        ('{"h100": "x"}', "number"),
    ],
)
def test_a_nonsense_maximum_job_time_is_refused_naming_what_is_expected(
    monkeypatch: pytest.MonkeyPatch, value: str, said: str
) -> None:
    monkeypatch.setenv("QM_ENV", "development")
    monkeypatch.setenv("QM_POOL_MAX_JOB_SECONDS", value)
    with pytest.raises(ValidationError, match=said):
        Settings()


def test_a_push_pool_with_its_own_job_timeout_is_pointed_at_the_one_maximum_job_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A push pool's job_timeout_seconds was its own time limit; every pool kind now has one
    setting, so an old one is refused naming it rather than ignored."""
    pool = {"name": "runpod", "style": "runpod", "url": "https://x", "api_key": "k", "capacity": 1}
    monkeypatch.setenv("QM_ENV", "development")
    monkeypatch.setenv("QM_PUSH_POOL_RUNPOD", json.dumps({**pool, "job_timeout_seconds": 60}))
    with pytest.raises(ValueError, match="QM_POOL_MAX_JOB_SECONDS"):
        Settings()
    monkeypatch.setenv("QM_PUSH_POOL_RUNPOD", json.dumps(pool))
    monkeypatch.setenv("QM_POOL_MAX_JOB_SECONDS", '{"runpod": 60}')
    assert Settings().job_limit("runpod") == 60 and Settings().job_limit("h100") == 3600


def test_a_missing_participants_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QM_ENV", "development")
    monkeypatch.setenv("QM_PARTICIPANTS_FILE", str(tmp_path / "nope.json"))
    with pytest.raises(ValidationError, match="QM_PARTICIPANTS_FILE"):
        Settings()


def test_passwords_are_kept_only_hashed() -> None:
    settings = Settings(env="development", participants={"ada": "secret-pw"})
    auth = Authenticator(settings)
    assert "secret-pw" not in repr(vars(auth.participants))


def test_participant_names_that_cannot_be_keys_or_urls_are_refused() -> None:
    with pytest.raises(ValidationError, match="participant names"):
        Settings(env="development", participants={"ada lovelace": "pw"})
    with pytest.raises(ValidationError, match="admin"):
        Settings(env="development", participants={"admin": "pw"})


@pytest.mark.parametrize("name", ["organizer jane", "../vault", "a/b", "x" * 65, ""])
def test_an_admin_name_that_cannot_be_a_key_or_url_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """The admin's name is a user's name like a participant's (her jobs, files and settings are
    kept under it, her workspace is /w/<name>/): one rule for both, said at start with the fix."""
    monkeypatch.setenv("QM_ENV", "development")
    monkeypatch.setenv("QM_ADMIN_USER", name)
    with pytest.raises(ValidationError, match=r"QM_ADMIN_USER .* must be 1-64 letters, digits"):
        Settings()


def test_a_plain_admin_name_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QM_ENV", "development")
    monkeypatch.setenv("QM_ADMIN_USER", "jane.doe@example-1")
    assert Settings().admin_user == "jane.doe@example-1"


async def test_the_running_app_keeps_no_participant_password_in_its_settings(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    assert app.state.settings.participants == {}
    assert (await client.get("/api/auth/me", headers=user_auth("ada"))).status_code == 200
