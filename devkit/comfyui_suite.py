"""Run the real ComfyUI's own ``tests/execution`` through a workspace of this checkout.

``python -m devkit.comfyui_suite --comfyui-dir <checkout> --python <its venv>/bin/python`` starts
Redis and the queue manager from this checkout, logs Alice in, and runs each test file in its own
pytest process in ComfyUI's checkout and venv with ``devkit/suite_plugin`` loaded: the suite's client
then talks to ``/w/alice`` (her session on every request and on the socket) and each test class's
fresh server is the real ComfyUI with a pull worker of this checkout attached to it. It prints one
JSON object (passed and failed test ids per file) and keeps every log under ``--logs``.

It cannot run in CI (ComfyUI is not on the package registries); ``docs/comfyui-protocol.md`` says
how to get a ComfyUI to run it against and what its failures meant last time.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import httpx
import typer

from devkit.dev import Logins, qm_environment, running, worker_environment
from devkit.qm_server import QueueManagerProcess
from devkit.servers import RedisServer, free_port
from devkit.suite_plugin.comfy_workshop_shim import CONFIG_VARIABLE, SuiteConfig

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = Path(__file__).resolve().parent / "suite_plugin"
SUITE_FILES = ("test_execution.py", "test_async_nodes.py", "test_progress_isolation.py")
USER = "alice"


@dataclass
class FileResult:
    """One test file's outcome: counts and the ids of the tests that did not pass."""

    passed: int = 0
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.passed + len(self.failed)


def test_id(case: ET.Element) -> str:
    """``file.py::Class::test[param]`` from a junit ``testcase`` (``classname`` is dotted)."""
    dotted = case.get("classname", "").split(".")
    name = case.get("name", "")
    classes = [part for part in dotted if part[:1].isupper()]
    modules = [part for part in dotted if not part[:1].isupper()]
    module = (modules[-1] + ".py") if modules else ""
    return "::".join([module, *classes, name])


def parse_junit(xml: str) -> FileResult:
    """Passed, failed (a failure or an error) and skipped tests of one pytest junit report."""
    result = FileResult()
    for case in ET.fromstring(xml).iter("testcase"):  # noqa: S314 - pytest's own report
        if case.find("failure") is not None or case.find("error") is not None:
            result.failed.append(test_id(case))
        elif case.find("skipped") is not None:
            result.skipped.append(test_id(case))
        else:
            result.passed += 1
    return result


def summary(label: str, results: dict[str, FileResult], logs: Path) -> dict[str, object]:
    files = {
        name: {"passed": r.passed, "failed": len(r.failed), "total": r.total, **asdict(r)}
        for name, r in results.items()
    }
    for entry in files.values():
        entry["failed_ids"] = entry.pop("failed")
        entry["failed"] = len(entry["failed_ids"])
    return {
        "label": label,
        "passed": sum(r.passed for r in results.values()),
        "failed": sum(len(r.failed) for r in results.values()),
        "total": sum(r.total for r in results.values()),
        "files": files,
        "logs": str(logs),
    }


def pytest_command(
    python: Path, test_file: str, port: int, report: Path, skip_timing: bool, select: str
) -> list[str]:
    """One test file in its own pytest process (the suite expects a fresh server per class)."""
    command = [
        str(python),
        "-m",
        "pytest",
        f"tests/execution/{test_file}",
        "-p",
        "comfy_workshop_shim",
        "--port",
        str(port),
        "--junitxml",
        str(report),
        "-v",
    ]
    if skip_timing:
        command.append("--skip-timing-checks")
    if select:
        command += ["-k", select]
    return command


def log_in(qm_url: str, logins: Logins) -> str:
    reply = httpx.post(f"{qm_url}/api/auth/login", json={"user": USER, "password": logins.password(USER)})
    reply.raise_for_status()
    return f"qm_session={reply.cookies['qm_session']}"


def suite_config(qm_url: str, logs: Path, logins: Logins) -> SuiteConfig:
    admin = "Basic " + base64.b64encode(f"admin:{logins.admin_password}".encode()).decode()
    return SuiteConfig(
        workspace=f"{qm_url}/w/{USER}",
        cookie=log_in(qm_url, logins),
        admin=admin,
        queue_url=qm_url,
        worker_python=sys.executable,
        worker_cwd=str(ROOT),
        worker_env=worker_environment(qm_url, "", logs, logins),
        logs=str(logs),
    )


def run_file(
    comfyui_dir: Path, python: Path, test_file: str, config: SuiteConfig, skip_timing: bool, select: str
) -> FileResult:
    logs = Path(config.logs) / Path(test_file).stem
    logs.mkdir(parents=True, exist_ok=True)
    report = logs / "junit.xml"
    report.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(PLUGIN_DIR),
        CONFIG_VARIABLE: json.dumps(asdict(SuiteConfig(**{**asdict(config), "logs": str(logs)}))),
    }
    command = pytest_command(python, test_file, free_port(), report, skip_timing, select)
    with (logs / "pytest.log").open("wb") as log:
        subprocess.run(command, cwd=comfyui_dir, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if not report.exists():
        raise RuntimeError(f"pytest wrote no report for {test_file}: see {logs / 'pytest.log'}")
    return parse_junit(report.read_text())


def check_paths(comfyui_dir: Path, python: Path) -> None:
    """Refuse, naming the fix, a ComfyUI checkout or Python that cannot run the suite."""
    if not (comfyui_dir / "main.py").is_file() or not (comfyui_dir / "tests" / "execution").is_dir():
        raise typer.BadParameter(
            f"{comfyui_dir} is no ComfyUI checkout with its tests (main.py, tests/execution/): "
            "check out ComfyUI there (docs/comfyui-protocol.md says how)",
            param_hint="--comfyui-dir",
        )
    if not python.is_file() or not os.access(python, os.X_OK):
        raise typer.BadParameter(
            f"{python} is not an executable Python: give ComfyUI's venv's bin/python", param_hint="--python"
        )


def main(
    comfyui_dir: Annotated[Path, typer.Option(help="a ComfyUI checkout with its tests/execution")],
    python: Annotated[
        Path, typer.Option(help="the Python of ComfyUI's venv (with pytest, websocket-client)")
    ],
    label: Annotated[
        str, typer.Option(help="a name for this run, kept in the summary and the logs' folder")
    ] = "run",
    logs: Annotated[
        Path | None, typer.Option(help="where the logs go (default .dev/comfyui-suite/<label>)")
    ] = None,
    test_file: Annotated[
        list[str] | None,
        typer.Option("--file", help="a file of tests/execution (repeatable; default all three)"),
    ] = None,
    skip_timing_checks: Annotated[bool, typer.Option(help="pass --skip-timing-checks to the suite")] = False,
    select: Annotated[str, typer.Option("-k", help="only tests matching this pytest -k expression")] = "",
) -> None:
    """Run ComfyUI's own execution tests through a workspace; print a JSON summary."""
    comfyui_dir, python = comfyui_dir.resolve(), python.absolute()
    check_paths(comfyui_dir, python)
    logs = (logs or ROOT / ".dev" / "comfyui-suite" / label).resolve()
    logs.mkdir(parents=True, exist_ok=True)
    logins = Logins()
    results: dict[str, FileResult] = {}
    with contextlib.ExitStack() as stack:
        redis = RedisServer(logs / "redis").start()
        stack.enter_context(running(redis))
        env = {**qm_environment(redis.url, logs / "files", logins), "QM_LOG_LEVEL": "WARNING"}
        qm = QueueManagerProcess(env, log_path=logs / "queue-manager.log")
        stack.enter_context(running(qm.start()))
        config = suite_config(qm.url, logs, logins)
        for name in test_file or SUITE_FILES:
            results[name] = run_file(comfyui_dir, python, name, config, skip_timing_checks, select)
            typer.echo(f"{name}: {results[name].passed}/{results[name].total} passed", err=True)
    typer.echo(json.dumps(summary(label, results, logs), indent=2))


app = typer.Typer(add_completion=False)
app.command()(main)

if __name__ == "__main__":
    app()
