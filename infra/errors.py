"""The one error a bad stack configuration raises, rendered as a short list in `pulumi up` output.

`pulumi.RunError` is the SDK's "clean exit" exception: the CLI prints its message without the
program's stack trace, which is what an organizer fixing a typo wants to read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

PROJECT = "comfy-workshop"
SHOWN = 300  # characters of a bad value shown before its reason


class _Hidden:
    """Stands for a secret's value in a Problem: the value is never shown."""

    def __repr__(self) -> str:
        return "(secret, not shown)"


HIDDEN = _Hidden()


@dataclass(frozen=True)
class Problem:
    """One bad configuration value: where it is, what it was, and how to fix it."""

    key: str
    value: object
    message: str
    fix: str

    def render(self) -> str:
        shown = "(not set)" if self.value is None else repr(self.value)
        if len(shown) > SHOWN:  # a long list: its start, so the reason and the fix stay on the screen
            shown = f"{shown[:SHOWN]}... ({len(shown):,} characters)"
        return f"  - {self.key} = {shown}: {self.message}\n    fix: {self.fix}"


class ConfigError(pulumi.RunError):
    """The stack configuration is invalid; raised before any resource is declared."""

    def __init__(self, stack: str, problems: Sequence[Problem]) -> None:
        self.stack = stack
        self.problems = tuple(problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = [f"stack '{stack}' has {count} configuration {noun}:"]
        lines += [problem.render() for problem in self.problems]
        super().__init__("\n".join(lines))


def config_key(path: Sequence[str | int]) -> str:
    """`("pools", 1, "kind")` -> `comfy-workshop:pools[1].kind` (the form `pulumi config --path` takes)."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return f"{PROJECT}:{text}"


def set_command(key: str, placeholder: str = "<value>") -> str:
    """The command that sets ``key``; ``--path`` whenever the key reaches into a structured value."""
    path = " --path" if "." in key.split(":", 1)[1] or "[" in key else ""
    return f"pulumi config set{path} '{key}' {placeholder}"
