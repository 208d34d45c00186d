"""``python -m devkit.comfyui_suite``: the parts that run without a real ComfyUI.

The run itself needs ComfyUI's checkout and venv (not on the package registries, so not in CI);
what is checked here is what decides its answer: the suite's requests reach the participant's
workspace with her session and nothing else moves, the fresh server per class gets the suite's
own arguments with the worker's folders, the report's passed and failed ids, and the refusals of
a wrong checkout or Python.
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

import devkit.comfyui_suite as suite
from devkit.suite_plugin.comfy_workshop_shim import (
    SuiteConfig,
    comfyui_command,
    is_server_start,
    with_session,
    workspace_url,
)

SUITE_SERVER = "127.0.0.1:8188"


class Recorder(BaseHTTPRequestHandler):
    """A stand-in workspace: answers every call with what it received."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        seen = {"method": self.command, "path": self.path, "cookie": self.headers.get("Cookie"), "body": body}
        data = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def workspace() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/w/alice"
    finally:
        server.shutdown()
        server.server_close()


def config_for(workspace: str) -> SuiteConfig:
    return SuiteConfig(
        workspace=workspace,
        cookie="qm_session=abc",
        admin="Basic x",
        queue_url=workspace.rsplit("/w/", 1)[0],
        worker_python=sys.executable,
        worker_cwd=".",
        worker_env={},
        logs=".",
    )


def sent(request: urllib.request.Request) -> dict[str, str]:
    with urllib.request.urlopen(request, timeout=5) as reply:
        answer: dict[str, str] = json.loads(reply.read())
    return answer


def test_the_suites_requests_reach_the_participants_workspace_with_her_session(workspace: str) -> None:
    config = config_for(workspace)
    prompt = urllib.request.Request(f"http://{SUITE_SERVER}/prompt", data=json.dumps({"prompt": {}}).encode())
    posted = sent(with_session(prompt, SUITE_SERVER, config))
    assert posted == {
        "method": "POST",
        "path": "/w/alice/prompt",
        "cookie": "qm_session=abc",
        "body": '{"prompt": {}}',
    }
    viewed = sent(
        with_session(f"http://{SUITE_SERVER}/view?filename=a.png&type=output", SUITE_SERVER, config)
    )
    assert viewed["path"] == "/w/alice/view?filename=a.png&type=output"
    assert viewed["cookie"] == "qm_session=abc"


def test_other_addresses_are_left_alone_and_get_no_session(workspace: str) -> None:
    config = config_for(workspace)
    elsewhere = workspace.replace("/w/alice", "") + "/history"
    request = with_session(elsewhere, SUITE_SERVER, config)
    assert sent(request) == {"method": "GET", "path": "/history", "cookie": None, "body": ""}


def test_the_socket_moves_to_the_workspaces_socket() -> None:
    moved = workspace_url(f"ws://{SUITE_SERVER}/ws?clientId=c1", SUITE_SERVER, "https://ws.example/w/bob")
    assert moved == "wss://ws.example/w/bob/ws?clientId=c1"
    assert workspace_url("ws://127.0.0.1:9/ws", SUITE_SERVER, "http://x/w/bob") == "ws://127.0.0.1:9/ws"


def test_each_class_server_keeps_the_suites_arguments_with_the_workers_folders(tmp_path: Path) -> None:
    args = ["python", "main.py", "--output-directory", "tests/inference/samples", "--port", "8188", "--cpu"]
    args += ["--cache-lru", "100"]
    assert is_server_start(args)
    assert not is_server_start(["git", "status"])
    assert comfyui_command(args, "/venv/bin/python", tmp_path, tmp_path / "ext.yaml") == [
        "/venv/bin/python",
        "main.py",
        "--port",
        "8188",
        "--cpu",
        "--cache-lru",
        "100",
        "--output-directory",
        str(tmp_path / "output"),
        "--input-directory",
        str(tmp_path / "input"),
        "--temp-directory",
        str(tmp_path),
        "--extra-model-paths-config",
        str(tmp_path / "ext.yaml"),
    ]


REPORT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.execution.test_execution.TestExecution" name="test_lazy_input[_server0]"/>
<testcase classname="tests.execution.test_execution.TestExecution" name="test_error[_server0]"/>
<testcase classname="tests.execution.test_execution.TestExecution"
 name="test_validation_error_kwargs[_server0-0.0-7.0-True]">
<failure message="Failed: DID NOT RAISE">...</failure></testcase>
<testcase classname="tests.execution.test_async_nodes.TestAsyncNodes" name="test_async_timeout[_server0]">
<error message="setup failed">...</error></testcase>
<testcase classname="tests.execution.test_async_nodes.TestAsyncNodes" name="test_gpu[_server0]">
<skipped message="no GPU"/></testcase>
</testsuite></testsuites>"""


def test_the_summary_names_each_test_that_did_not_pass() -> None:
    result = suite.parse_junit(REPORT)
    assert result.passed == 2
    assert result.failed == [
        "test_execution.py::TestExecution::test_validation_error_kwargs[_server0-0.0-7.0-True]",
        "test_async_nodes.py::TestAsyncNodes::test_async_timeout[_server0]",
    ]
    assert result.skipped == ["test_async_nodes.py::TestAsyncNodes::test_gpu[_server0]"]
    figures = suite.summary("before", {"test_execution.py": result}, Path("/logs"))
    assert (figures["passed"], figures["failed"], figures["total"]) == (2, 2, 4)


def test_a_wrong_checkout_or_python_is_refused_naming_the_option(tmp_path: Path) -> None:
    runner = CliRunner()
    app = suite.app
    wrong_dir = runner.invoke(app, ["--comfyui-dir", str(tmp_path), "--python", sys.executable])
    assert wrong_dir.exit_code == 2
    assert "--comfyui-dir" in wrong_dir.output
    assert "main.py" in wrong_dir.output
    (tmp_path / "main.py").write_text("")
    (tmp_path / "tests" / "execution").mkdir(parents=True)
    wrong_python = runner.invoke(app, ["--comfyui-dir", str(tmp_path), "--python", str(tmp_path / "nope")])
    assert wrong_python.exit_code == 2
    assert "--python" in wrong_python.output
