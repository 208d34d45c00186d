"""The program as a function: `build(config)` declares a stack's resources and returns its outputs.

`infra/__main__.py` calls `main()`; tests call `build()` afresh under Pulumi mocks.
"""

from __future__ import annotations

from typing import Any

import pulumi

from infra.config import LocalConfig, StackConfig, VaultConfig, WorkshopConfig
from infra.loading import load_config


def build(config: StackConfig) -> dict[str, Any]:
    """Declare the stack ``config`` describes; the role picks which tier is built.

    Each tier is imported only when built: the local stack never pays for importing the
    Cloudflare SDK (seconds), which only the vault and the workshop use.
    """
    if isinstance(config, VaultConfig):
        from infra.vault import build_vault

        return build_vault(config)
    if isinstance(config, WorkshopConfig):
        from infra.workshop import build_workshop

        return build_workshop(config, pulumi.get_stack())
    if isinstance(config, LocalConfig):
        from infra.local import build_local

        return build_local(config, pulumi.get_stack())
    raise TypeError(f"no program for {type(config).__name__}")


def main() -> None:
    """Validate the whole config first (nothing is declared on error), then build and export."""
    outputs = build(load_config())
    for key, value in outputs.items():
        pulumi.export(key, value)
