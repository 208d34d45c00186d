"""Check what `make local` (and a workshop deploy) needs before Pulumi starts, and say how to fix it.

Run as ``python -m infra.prereqs local`` or ``python -m infra.prereqs workshop``. Exit code 0 when every
check passes, 1 otherwise; every failed check prints what is missing and the command that installs it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)
app = typer.Typer(add_completion=False)


class Target(StrEnum):
    LOCAL = "local"
    WORKSHOP = "workshop"


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[], str | None]
    """Returns None when fine, else what is wrong and how to fix it."""


def _binary(name: str, fix: str) -> Callable[[], str | None]:
    def run() -> str | None:
        return None if shutil.which(name) else f"`{name}` is not on PATH. Install it: {fix}"

    return run


def _docker_daemon() -> str | None:
    if shutil.which("docker") is None:
        return "the Docker CLI is missing. Install Docker Engine: https://docs.docker.com/engine/install/"
    try:
        done = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer in 15 s: is the Docker daemon hung? Restart it."
    if done.returncode != 0:
        return (
            "the Docker daemon is not reachable (`docker info` failed: "
            f"{done.stderr.strip()[:200]}). Start it (`sudo systemctl start docker`) and make sure "
            "your user may use it (`sudo usermod -aG docker $USER`, then log in again)."
        )
    return None


def _port_free(port: int) -> Callable[[], str | None]:
    def run() -> str | None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return (
                    f"port {port} on localhost is taken, and the local platform publishes there. "
                    f"Stop what uses it (`sudo lsof -i :{port}`) or set `comfy-workshop:httpPort` "
                    "in Pulumi.local.yaml to another port."
                )
        return None

    return run


PULUMI_FIX = "curl -fsSL https://get.pulumi.com | sh  (then open a new shell)"
UV_FIX = "python3 -m pip install --user uv  (or: curl -LsSf https://astral.sh/uv/install.sh | sh)"


def checks_for(target: Target, port: int | None) -> list[Check]:
    """The checks for ``target``; ``port`` None skips the free-port check (the stack already runs)."""
    common = [Check("pulumi CLI", _binary("pulumi", PULUMI_FIX)), Check("uv", _binary("uv", UV_FIX))]
    if target is Target.LOCAL:
        local = [*common, Check("docker daemon", _docker_daemon)]
        return local if port is None else [*local, Check(f"port {port}", _port_free(port))]
    return [
        *common,
        Check("ssh client", _binary("ssh", "sudo apt-get install openssh-client")),
        Check("docker CLI", _binary("docker", "https://docs.docker.com/engine/install/")),
    ]


def failures(checks: list[Check]) -> list[tuple[str, str]]:
    found = ((check.name, check.run()) for check in checks)
    return [(name, problem) for name, problem in found if problem is not None]


@app.command()
def main(
    target: Annotated[Target, typer.Argument()] = Target.LOCAL,
    port: Annotated[int, typer.Option(help="localhost port the local stack publishes")] = 8080,
    running: Annotated[
        bool, typer.Option(help="the stack is already up: its own port is not a conflict")
    ] = False,
) -> None:
    """Check prerequisites for TARGET and explain how to fix anything missing."""
    problems = failures(checks_for(target, None if running else port))
    for name, problem in problems:
        console.print(f"[red]✗ {name}[/red]: {problem}")
    if problems:
        console.print(f"[yellow]{len(problems)} prerequisite(s) missing for the {target} stack.[/yellow]")
        raise typer.Exit(1)
    console.print(f"[green]✓ all prerequisites for the {target} stack are here[/green]")


if __name__ == "__main__":
    app()
