"""Keeps the queue across `pulumi destroy` and `pulumi up`: restore on create, drain + snapshot on delete.

Two commands. ``<name>-step`` restores the snapshot when it is created (the morning's `up`), as soon
as the queue manager runs; a later change of its inputs runs its ``update``, which does nothing:
pulumi-command would otherwise run ``create`` again and load last evening's snapshot into the live
queue. ``<name>-drain`` drains and snapshots when it is deleted (the evening's `destroy`): it depends
on the queue manager's container, the server and every GPU pool, so Pulumi deletes it before any of
them, running jobs finish on their GPUs, and a failure stops the destroy before anything is lost.
The scripts are `infra/templates/{restore,drain}.sh`, embedded as here-documents (a command has one
stdin, shared by its commands).
"""

from __future__ import annotations

import asyncio

import pulumi
import pulumi_command as command

from infra.templates import read

# What a changed restore step runs: nothing (the queue is live; the restore is the morning's alone).
KEEP = "true"


def script_command(filename: str, *args: str) -> str:
    """`sh -s -- <args>` fed ``filename`` as a here-document: one self-contained shell command."""
    quoted = " ".join(f"'{arg}'" for arg in args)
    return f"sh -s -- {quoted} <<'COMFY_SCRIPT'\n{read(filename)}COMFY_SCRIPT\n"


class AfterRestore:
    """The morning's restore step, for what is declared before it yet must start after it: the pull
    pools' machines, whose workers claim jobs as soon as they run (a job taken before the restore
    would run ahead of last night's queue, or twice). They are declared first because the queue
    manager's settings name every pool's token, and the restore step needs the queue manager.
    ``dependency`` goes in their ``depends_on``; the ``QueueKeeper`` given this object resolves it
    with its restore step. (Push pools cannot wait so: the queue manager's settings name their
    endpoints. The queue manager leases nothing before the restore, ``QM_RESTORE_FIRST``.)"""

    def __init__(self) -> None:
        self._step: asyncio.Future[pulumi.Resource] = asyncio.get_event_loop().create_future()

    def __enter__(self) -> AfterRestore:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _: object) -> None:
        """Declare the pools and the queue keeper inside ``with AfterRestore() as restore:``. A program
        that fails before the restore step exists fails the pools waiting for it too: left pending, they
        kept the engine waiting for ever, and ``pulumi up`` hung instead of naming the error."""
        if not self._step.done():
            self._step.set_exception(
                error
                if isinstance(error, Exception)
                else RuntimeError("the queue keeper's restore step was never declared: the pools wait for it")
            )

    @property
    def dependency(self) -> pulumi.Input[pulumi.Resource]:
        return self._step

    def resolve(self, step: pulumi.Resource) -> None:
        self._step.set_result(step)


class QueueKeeper(pulumi.ComponentResource):
    """On the VPS over SSH (``connection``) or, for the local stack, on this machine. ``after``: what
    must exist before the restore and still exist while the queue drains (the host's readiness step);
    ``workers``: what runs the jobs the drain waits for (the pools), also kept until it is done;
    ``gate``: resolved with the restore step, for the pools that start after it."""

    step: command.remote.Command | command.local.Command
    drain: command.remote.Command | command.local.Command

    def __init__(
        self,
        name: str,
        container: str,
        drain_timeout: int,
        queue_manager: pulumi.Resource,
        connection: command.remote.ConnectionArgs | None = None,
        after: list[pulumi.Resource] | None = None,
        workers: list[pulumi.Resource] | None = None,
        gate: AfterRestore | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("comfy-workshop:queue:QueueKeeper", name, None, opts)
        before = [queue_manager, *(after or [])]
        self.step = self._command(
            f"{name}-step",
            connection,
            pulumi.ResourceOptions(parent=self, depends_on=before),
            create=script_command("restore.sh", container),
            update=KEEP,
        )
        if gate is not None:
            gate.resolve(self.step)
        self.drain = self._command(
            f"{name}-drain",
            connection,
            pulumi.ResourceOptions(parent=self, depends_on=[*before, *(workers or [])]),
            delete=script_command("drain.sh", container, str(drain_timeout)),
        )
        self.register_outputs({"restored": self.step.stdout})

    @staticmethod
    def _command(
        name: str,
        connection: command.remote.ConnectionArgs | None,
        opts: pulumi.ResourceOptions,
        create: str | None = None,
        update: str | None = None,
        delete: str | None = None,
    ) -> command.remote.Command | command.local.Command:
        if connection is None:
            return command.local.Command(name, opts=opts, create=create, update=update, delete=delete)
        return command.remote.Command(
            name, opts=opts, connection=connection, create=create, update=update, delete=delete
        )
