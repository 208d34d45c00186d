"""Building blocks of the stack configuration: the base model and the small validated types.

Stack files use camelCase keys (Pulumi's convention); the models use snake_case attributes.
Every validator's message ends in a fix, because `infra.config` shows it to the organizer verbatim.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

DOMAIN_RE = re.compile(r"^(?=.{4,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
LABEL_RE = re.compile(r"^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$")
TAG_RE = re.compile(r"^tag:[a-z0-9][a-z0-9-]{0,62}$")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


class Model(BaseModel):
    """Base of every config model: camelCase keys, unknown keys refused, values immutable."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


def _domain(value: str) -> str:
    if not DOMAIN_RE.match(value):
        raise ValueError(
            "not a DNS name the platform can serve; fix: use a lower-case host name such as "
            "'workshop.example.org' (no scheme, no path, no trailing dot)"
        )
    return value


def _label(value: str) -> str:
    if not LABEL_RE.match(value):
        raise ValueError(
            "not a valid name; fix: use 1-32 lower-case letters, digits or '-', starting with a letter"
        )
    return value


def _tag(value: str) -> str:
    if not TAG_RE.match(value):
        raise ValueError("not a Tailscale tag; fix: write it as 'tag:<name>', e.g. 'tag:comfy-gpu'")
    return value


def _bucket(value: str) -> str:
    if not BUCKET_RE.match(value):
        raise ValueError(
            "not a valid R2 bucket name; fix: use 3-63 lower-case letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return value


Domain = Annotated[str, AfterValidator(_domain)]
Label = Annotated[str, AfterValidator(_label)]
TailscaleTag = Annotated[str, AfterValidator(_tag)]
BucketName = Annotated[str, AfterValidator(_bucket)]


def one_of(value: str, known: tuple[str, ...], what: str) -> str:
    """Accept ``value`` when it is one of ``known``; otherwise name them all."""
    if value not in known:
        raise ValueError(f"unknown {what}; fix: use one of {', '.join(known)}")
    return value


def unique_names(names: list[str], what: str) -> None:
    """Refuse duplicates: resource names and URLs derive from these names."""
    dupes = sorted(name for name, count in Counter(names).items() if count > 1)
    if dupes:
        raise ValueError(f"duplicate {what} {', '.join(dupes)}; fix: give every {what} a distinct name")
