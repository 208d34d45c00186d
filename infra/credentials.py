"""Participants' and the admin's passwords, generated once in the vault and the same every day."""

from __future__ import annotations

import pulumi
import pulumi_random as random


def _password(name: str, length: int, parent: pulumi.Resource) -> random.RandomPassword:
    # Letters and digits only: participants type these from a printed card.
    return random.RandomPassword(
        name, length=length, special=False, opts=pulumi.ResourceOptions(parent=parent)
    )


class Credentials(pulumi.ComponentResource):
    """One password per participant, the admin's, and the queue manager's session secret."""

    participants: pulumi.Output[dict[str, str]]
    admin_password: pulumi.Output[str]
    session_secret: pulumi.Output[str]

    def __init__(
        self, name: str, participants: list[str], opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("comfy-workshop:credentials:Credentials", name, None, opts)
        passwords = {user: _password(f"{name}-user-{user}", 14, self).result for user in participants}
        self.participants = pulumi.Output.secret(pulumi.Output.all(**passwords))
        self.admin_password = pulumi.Output.secret(_password(f"{name}-admin", 24, self).result)
        self.session_secret = pulumi.Output.secret(_password(f"{name}-session", 48, self).result)
        self.register_outputs(
            {
                "participants": self.participants,
                "adminPassword": self.admin_password,
                "sessionSecret": self.session_secret,
            }
        )
