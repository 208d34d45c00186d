"""Keeps the queue across `pulumi destroy` and `pulumi up`: restore on create, drain + snapshot on delete.

The step depends on the queue manager's container, so on destroy Pulumi deletes it first: its
`delete` runs while the queue manager, Redis and the server still exist, and a failure stops the
destroy before anything is lost. The scripts are `infra/templates/{restore,drain}.sh`, embedded
as here-documents (a command has one stdin, shared by create and delete).
"""

from __future__ import annotations

import pulumi
import pulumi_command as command

from infra.templates import read


def script_command(filename: str, *args: str) -> str:
    """`sh -s -- <args>` fed ``filename`` as a here-document: one self-contained shell command."""
    quoted = " ".join(f"'{arg}'" for arg in args)
    return f"sh -s -- {quoted} <<'COMFY_SCRIPT'\n{read(filename)}COMFY_SCRIPT\n"


class QueueKeeper(pulumi.ComponentResource):
    """On the VPS over SSH (``connection``) or, for the local stack, on this machine."""

    step: command.remote.Command | command.local.Command

    def __init__(
        self,
        name: str,
        container: str,
        drain_timeout: int,
        queue_manager: pulumi.Resource,
        connection: command.remote.ConnectionArgs | None = None,
        after: list[pulumi.Resource] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("comfy-workshop:queue:QueueKeeper", name, None, opts)
        create = script_command("restore.sh", container)
        delete = script_command("drain.sh", container, str(drain_timeout))
        # Depending on the host's readiness step too makes "before the server goes" explicit.
        after_all = pulumi.ResourceOptions(parent=self, depends_on=[queue_manager, *(after or [])])
        if connection is None:
            self.step = command.local.Command(f"{name}-step", create=create, delete=delete, opts=after_all)
        else:
            self.step = command.remote.Command(
                f"{name}-step", connection=connection, create=create, delete=delete, opts=after_all
            )
        self.register_outputs({"restored": self.step.stdout})
