"""Pure text the program generates (cloud-init, nginx, shell): plain functions, tested without mocks.

Template files mark placeholders as ``@@name@@`` so that nginx's and the shell's own ``$`` stay
untouched. Shell scripts take no placeholders at all: their parameters are positional arguments,
so the files shellcheck reads are exactly the files that run.
"""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLACEHOLDER = re.compile(r"@@([a-z_]+)@@")


def read(filename: str) -> str:
    return (HERE / filename).read_text()


def render(filename: str, **values: object) -> str:
    """Fill ``@@name@@`` placeholders; a placeholder without a value is a KeyError, not a blank."""
    return PLACEHOLDER.sub(lambda match: str(values[match.group(1)]), read(filename))
