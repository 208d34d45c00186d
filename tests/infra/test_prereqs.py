"""`make local` refuses to start when a prerequisite is missing, and says how to install it."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner

from infra import prereqs


def test_missing_pulumi_cli_is_named_with_its_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "infra.prereqs.shutil.which", lambda name: None if name == "pulumi" else f"/bin/{name}"
    )
    problems = dict(prereqs.failures(prereqs.checks_for(prereqs.Target.WORKSHOP, 8080)))
    assert list(problems) == ["pulumi CLI"]
    assert "get.pulumi.com" in problems["pulumi CLI"]


def test_a_taken_local_port_is_reported_with_the_config_key_to_change() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        problem = prereqs._port_free(port)()
    assert problem is not None and "httpPort" in problem and str(port) in problem


def test_the_command_exits_non_zero_and_lists_every_missing_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("infra.prereqs.shutil.which", lambda name: None)
    result = CliRunner().invoke(prereqs.app, ["local"])
    assert result.exit_code == 1
    for piece in ("pulumi CLI", "uv", "docker daemon"):
        assert piece in result.output


def test_a_running_local_stack_does_not_count_its_own_port_as_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("infra.prereqs._docker_daemon", lambda: None)
    monkeypatch.setattr("infra.prereqs.shutil.which", lambda name: f"/bin/{name}")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        fresh = CliRunner().invoke(prereqs.app, ["local", "--port", str(port)])
        running = CliRunner().invoke(prereqs.app, ["local", "--port", str(port), "--running"])
    assert fresh.exit_code == 1 and f"port {port}" in fresh.output
    assert running.exit_code == 0
