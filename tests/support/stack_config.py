"""A stack's configuration as the infra tests load it: the committed stack file with overrides, and
the error a bad one must raise."""

from __future__ import annotations

from typing import Any

import pytest

from devkit.harness import set_config, stack_values
from infra.errors import ConfigError
from infra.loading import load_config


def problems(stack: str, overrides: dict[str, Any] | None = None, **kwargs: Any) -> str:
    """The rendered ConfigError for ``stack`` with ``overrides`` applied (fails if none is raised).
    ``drop``: keys to remove; ``without``: secrets to leave unset; ``stack_name``: load as this stack."""
    set_config(stack_values(stack, overrides, kwargs.get("drop", ())), kwargs.get("without", ()))
    with pytest.raises(ConfigError) as raised:
        load_config(kwargs.get("stack_name", stack))
    return str(raised.value)
