"""The addresses participants and the admin use, and the logins they use there; one place so the
stack outputs and nginx agree."""

from __future__ import annotations

import operator

import pulumi

from infra.secret import secret

URL_KEYS = ("platformUrl", "adminUrl", "participantUrls")


def participant_path(user: str) -> str:
    return f"/w/{user}/"


def urls(base: str, users: list[str]) -> dict[str, object]:
    """Platform, admin and per-participant URLs under ``base`` (no trailing slash)."""
    return {
        "platformUrl": f"{base}/",
        "adminUrl": f"{base}/admin/",
        "participantUrls": {user: f"{base}{participant_path(user)}" for user in users},
    }


def url_outputs(base: pulumi.Input[str], users: pulumi.Input[list[str]]) -> dict[str, pulumi.Output[object]]:
    """The same URLs as stack outputs, for a base or user list only known at deploy time."""

    def compute(args: list[object]) -> dict[str, object]:
        return urls(str(args[0]), [str(user) for user in args[1]])  # type: ignore[attr-defined]

    computed = pulumi.Output.all(base, users).apply(compute)
    return {key: computed.apply(operator.itemgetter(key)) for key in URL_KEYS}


def logins_output(
    admin_user: pulumi.Input[str],
    admin_password: pulumi.Input[str],
    participants: pulumi.Input[dict[str, str]],
) -> pulumi.Output[dict[str, object]]:
    """The ``credentials`` stack output (secret): the admin's login and each participant's password."""
    admin = {"user": admin_user, "password": admin_password}
    return secret(pulumi.Output.all(admin=admin, participants=participants))
