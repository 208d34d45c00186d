"""`secret(value)`: `pulumi.Output.secret` with a type mypy can follow.

Mocks do not apply `additional_secret_outputs`, and neither does a value copied into another
resource's inputs: wrapping explicitly is what keeps a password secret wherever it travels.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast, overload

import pulumi

T = TypeVar("T")


@overload
def secret(value: pulumi.Input[str]) -> pulumi.Output[str]: ...
@overload
def secret(value: pulumi.Output[T]) -> pulumi.Output[T]: ...
@overload
def secret(value: T) -> pulumi.Output[T]: ...
def secret(value: Any) -> Any:
    return cast(Any, pulumi.Output).secret(value)
