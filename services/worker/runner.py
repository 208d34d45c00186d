"""One job on ComfyUI, from its inputs to an outcome the front door reports.

Only the job owner's files are in ComfyUI's folders while it runs (``job_files``); the graph is
submitted with ``prompt_id`` = job id and the agent's ``client_id``; the job is followed on the
agent's socket (``/history`` polled when the socket goes silent); on success every output is
streamed to storage, the outputs taken from the ``executed`` events when the whole run was heard on
the socket (``Follower.heard_entry``), from ``/history`` otherwise. Cancel is a targeted interrupt,
or a queue delete when the job has not started. A ComfyUI that dies, restarts or stops answering
makes the job ``lost``: not the job's failure, so the front door gives it back (``Outcome.lost``)
instead of failing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from services.protocol.jobs import Job, JobError, OutputFile
from services.protocol.workers import JobTiming
from services.storage import Storage, StorageError, StorageUnavailableError
from services.worker.comfy_client import (
    ComfyBusyError,
    ComfyClient,
    ComfyUnavailableError,
    PromptRejectedError,
)
from services.worker.comfy_events import Event, EventStream
from services.worker.forwarder import EventForwarder
from services.worker.job_files import (
    SALT_INPUT,
    JobFiles,
    Prepared,
    StagingCancelledError,
    rerun,
    until_idle,
)
from services.worker.outputs import (
    Place,
    names_files,
    output_files,
    renamed_executed,
    renames,
    replays,
    store_outputs,
)

log = logging.getLogger(__name__)
CANCELLED = JobError(type="Cancelled", message="the job was cancelled before it finished")
MAX_COMFY_BYTES = 64 * 1024
OWN_FIELDS = ("node_id", "node_type", "executed", "traceback", "current_inputs", "current_outputs")
UNKNOWN_NODE = re.compile(r"Node ID '#(?P<node>[^']+)'")  # ComfyUI's details of an unknown class_type
NEXT_SUBMIT_SECONDS = 0.2  # at most this long a finished job's storing waits for the next job's submit


@dataclass
class Outcome:
    outputs: list[OutputFile] = field(default_factory=list)
    error: JobError | None = None
    lost: str | None = None  # ComfyUI died or stopped answering (why): give the job back, do not fail it
    submitted: bool = False  # ComfyUI had taken the prompt when it was lost: the loss counts for the job
    timing: JobTiming | None = None
    moved: bool = False  # not this worker's to run after all (``Handoff.confirmed``): nothing to report


def unsalted(key: str, value: Any) -> Any:
    """A field of ComfyUI's ``execution_error`` as the participant sent it: a failing salted node's
    ``current_inputs`` without the worker's salt (``job_files.salted``)."""
    if key == "current_inputs" and isinstance(value, dict):
        return {name: given for name, given in value.items() if name != SALT_INPUT}
    return value


class NotConfirmedError(Exception):
    """The queue manager said no to the start of a job staged ahead of its answer before the job
    reached ComfyUI."""


class EndingKind(StrEnum):
    SUCCESS = "success"  # with its history entry (from ``/history`` or built from the socket)
    ENDED = "ended"  # ComfyUI finished the prompt without saying success: its history tells
    ERROR = "error"
    CANCELLED = "cancelled"
    LOST = "lost"  # ComfyUI died or stopped answering; ``Ending.reason`` says why


class Signal(StrEnum):
    """What stopped the wait for the job's next socket event."""

    DIED = "died"  # ComfyUI exited
    CANCEL = "cancel"  # the job's owner cancelled it
    MOVED = "moved"  # the queue manager's answer to ``start``: the job is not this worker's
    DROPPED = "dropped"  # the socket to ComfyUI closed: ask ComfyUI at once
    SILENT = "silent"  # no event for a while: ask ComfyUI


@dataclass
class Ending:
    """How following a job ended: ``success`` (with its history entry, read from ``/history`` or, when
    the whole run was heard on the socket, built from its ``executed`` events; None: read it),
    ``error``, ``cancelled``, ``lost`` (``reason`` says why)."""

    kind: EndingKind
    entry: dict[str, Any] | None = None
    error: JobError | None = None
    reason: str = ""
    submitted: bool = True  # lost: ComfyUI had taken the prompt (the loss counts for the job)
    # ComfyUI has taken the prompt off its queue: it ended with ``executing {node: null}`` for this
    # prompt (ComfyUI's prompt worker sends that after ``task_done``) or its history was read
    # (written by ``task_done``). An ending heard earlier (``execution_error``, ``execution_interrupted``,
    # a cancel, a loss) leaves ComfyUI finishing the prompt for a moment more.
    off_queue: bool = False


def until_stop(wait: float, stop_by: float | None) -> float:
    """``wait``, or less when the stop deadline ``stop_by`` comes sooner."""
    return wait if stop_by is None else max(0.0, min(wait, stop_by - time.monotonic()))


def lost(reason: str) -> Ending:
    return Ending(EndingKind.LOST, reason=reason)


def rejected(exc: PromptRejectedError) -> JobError:
    """ComfyUI's 400 as a participant-readable error naming the first failing node."""
    error, node_errors = exc.body.get("error", {}), exc.body.get("node_errors") or {}
    node_id, node = next(iter(node_errors.items()), (None, {}))
    node = node if isinstance(node, dict) else {}
    problems = [f"{p.get('message')}: {p.get('details')}" for p in node.get("errors", [])]
    message = error.get("message", "ComfyUI rejected the workflow")
    if problems:
        message = f"{message}: node {node_id} ({node.get('class_type')}): {'; '.join(problems)}"
    return JobError(
        type=error.get("type", "invalid_prompt"),
        message=message,
        node_id=node_id,
        node_type=node.get("class_type"),
        details=error.get("details") or None,
        comfy=bounded({"node_errors": node_errors}),
    )


def missing_offered(exc: PromptRejectedError, prompt: dict[str, Any], offered: set[str]) -> JobError | None:
    """ComfyUI refused the graph for a node class it does not know but offered when the worker
    started (read from its ``/object_info``): it restarted without it. Not her workflow's fault:
    another try (another GPU) may have it."""
    error = exc.body.get("error") or {}
    found = UNKNOWN_NODE.fullmatch(str(error.get("details") or ""))
    node = prompt.get(found["node"]) if found is not None and error.get("type") == "invalid_prompt" else None
    class_type = node.get("class_type") if isinstance(node, dict) else None
    if class_type not in offered:
        return None
    return JobError(
        type="NodeMissingOnWorker",
        message=f"the GPU's ComfyUI no longer has node {class_type}, which it offered when its worker "
        "started (a custom node that did not load when ComfyUI restarted): not her workflow's fault, "
        "so it is tried again while it has attempts left; the organizer should restart that worker "
        "(its ComfyUI log says why the node did not load)",
        node_id=found["node"] if found is not None else None,
        node_type=class_type,
        retryable=True,
    )


def bounded(data: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI's own end-of-job data, kept with the job unless it is too big to keep (huge inputs)."""
    if len(json.dumps(data, default=str)) <= MAX_COMFY_BYTES:
        return data
    return {
        key: value for key, value in data.items() if key in ("executed", "current_outputs", "node_errors")
    }


def from_history(entry: dict[str, Any]) -> Ending:
    """An ending read from ``/history`` (the silent-socket path)."""
    status = entry.get("status") or {}
    if status.get("status_str") == "success":
        return Ending(EndingKind.SUCCESS, entry=entry, off_queue=True)
    for kind, data in status.get("messages", []):
        if kind in ("execution_error", "execution_interrupted"):
            ending = Follower.terminal(kind, data) or Ending(EndingKind.ERROR)
            ending.off_queue = True
            return ending
    failed = JobError(type="ExecutionFailed", message="ComfyUI reported an error")
    return Ending(EndingKind.ERROR, error=failed, off_queue=True)


def begins(kind: str, data: dict[str, Any]) -> bool:
    """Whether the event says a node begins: its ``executing``, or a ``progress_state`` in which a
    node runs (ComfyUI 0.3.64 runs one node at a time and sends this one first)."""
    if kind == "executing":
        return data.get("node") is not None
    nodes = data.get("nodes") if kind == "progress_state" else None
    states = nodes.values() if isinstance(nodes, dict) else ()
    return any(isinstance(state, dict) and state.get("state") == "running" for state in states)


class Follower:
    """Turns one job's socket events into forwarded events and, at the end, an ``Ending``.

    An ``executed`` naming files (an image, a video) names files that are not in the participant's
    storage yet: it is held until the outputs are stored (and then names them as stored:
    ``release``), and the events after it with it, so the page hears them in ComfyUI's order
    (``executed``, then the node's last ``progress_state``), but only until another node begins:
    those then go out, and every event after them as it comes, so her page follows the nodes that
    run after an output node (a preview half way, then a second sampler) live. The ``executed``
    still waits for the outputs: the stock frontend shows a node's output whenever its ``executed``
    arrives. One that names only text or values (``PreviewAny``'s ``{"text": [...]}``) goes out as
    it comes, as ComfyUI sends it, unless events wait behind a held one.

    ``unbroken`` says whether every event ComfyUI sent about the job reached the follower
    (``EventStream.watch``, taken before the submit); ``gap`` is set when the runner had to ask
    ComfyUI instead (a silent or dropped socket). Either way a success then reads ``/history``.
    """

    def __init__(self, forwarder: EventForwarder, unbroken: Callable[[], bool] = lambda: False) -> None:
        self.forwarder = forwarder
        self.unbroken = unbroken
        self.gap = False
        self.succeeded = False
        self.held: list[Event] = []  # ``executed`` events, and what follows one until a node begins
        self.behind = False  # events are held behind an ``executed`` (no node has begun since)
        self.outputs: dict[str, Any] = {}  # node id -> the ui output of its last ``executed``

    @staticmethod
    def terminal(kind: str, data: dict[str, Any]) -> Ending | None:
        if kind == "execution_error":
            trace = "".join(data.get("traceback") or [])[-4000:] or None
            return Ending(
                EndingKind.ERROR,
                error=JobError(
                    type=str(data.get("exception_type") or "ExecutionError"),
                    message=str(data.get("exception_message") or "the node failed"),
                    node_id=data.get("node_id"),
                    node_type=data.get("node_type"),
                    details=trace,
                    comfy=bounded({key: unsalted(key, data[key]) for key in OWN_FIELDS if key in data}),
                ),
            )
        if kind == "execution_interrupted":
            return Ending(
                EndingKind.CANCELLED,
                error=CANCELLED.model_copy(
                    update={
                        "node_id": data.get("node_id"),
                        "node_type": data.get("node_type"),
                        "comfy": {"executed": data.get("executed") or []},
                    }
                ),
            )
        return None

    def handle(self, kind: str, data: dict[str, Any]) -> Ending | None:
        if kind == "execution_success":
            self.succeeded = True
        elif kind == "executing" and data.get("node") is None:
            if not self.succeeded:
                return Ending(EndingKind.ENDED, off_queue=True)
            return Ending(EndingKind.SUCCESS, entry=self.heard_entry(), off_queue=True)
        elif ending := self.terminal(kind, data):
            return ending
        elif kind == "executed" and (self.behind or names_files(data.get("output"))):
            self._heard_output(data)
            self.held.append((kind, data))
            self.behind = True
        elif kind == "executed":  # text or values only: nothing to store first
            self._heard_output(data)
            self.forwarder.add(kind, data)
        elif self.behind and not begins(kind, data):
            self.held.append((kind, data))
        else:
            self._let_go()
            self.forwarder.add(kind, data)
        return None

    def _heard_output(self, data: dict[str, Any]) -> None:
        if data.get("output") is not None:
            self.outputs[str(data.get("node"))] = data["output"]

    def heard_entry(self) -> dict[str, Any] | None:
        """The job's history entry as far as the worker reads it (``{"outputs": {node_id: ui}}``),
        built from the ``executed`` events of a run heard whole on the socket; None when an event
        may have been missed (then ``/history`` is read).

        ComfyUI 0.3.64 writes the history entry's ``outputs`` from its ui cache and sends the same
        dicts in ``executed`` (``{node, display_node, output, prompt_id}``), so for a run heard
        whole the two agree:

        - A node that runs (execution.py ``execute``, around line 506) merges the ui of all its
          calls into one dict (``get_output_from_returns``, around line 380: a batch's several
          images are one list), stores ``{"output": ui}`` in the ui cache and sends ``executed``
          with that same dict; a node whose ui is empty stores nothing and sends nothing.
        - A node served from the cache (around line 403) sends ``executed`` with the ui cache's
          ``output``, or ``output: null`` when it has none: such a node is in no history entry
          either, so a null output is skipped here. A cached rerun's ``execution_cached`` is
          followed by these ``executed`` events for its output nodes.
        - ``PromptExecutor.execute_async`` (around line 708) builds the history's ``outputs`` from
          the ui cache, one key per node id; the task is marked done (``task_done``, history
          written) before ``main.py``'s ``prompt_worker`` sends ``executing {node: null}``
          (around line 204).
        - The key is the node's unique id, ``executed``'s ``node``, also for a node of an expanded
          subgraph (``5.0.1``; its ui is cached under that id in the parent's subcache);
          ``display_node`` is only where the page shows it. A node that sends ``executed`` twice
          (an expanding node, a lazy or async node that returns pending first) has the ui cache
          entry of its last ``executed``: the last one wins here too.
        - The history's node order is that of a Python set (``caches.ui.all_node_ids``), arbitrary
          per ComfyUI process; here it is the order the nodes ran in.
        - ComfyUI sends an event only to a client id connected at that moment (server.py
          ``send_json``): a socket that dropped or went silent may have missed an ``executed``.

        What history can name and the socket cannot: a node of the prompt that did not run but whose
        earlier ui is still cached under the same inputs. ComfyUI's own nodes return ui only from
        output nodes, and every output node the prompt runs sends ``executed``; so only a custom
        non-output node returning ui, served from the cache, or an output node dropped by validation
        (a partly valid graph) whose inputs match an earlier prompt's, would be in the history and
        not here, and neither is an output this run made.
        """
        if self.gap or not self.unbroken():
            return None
        return {"outputs": dict(self.outputs)}

    def _let_go(self) -> None:
        """A node begins: what waited behind an ``executed`` goes out; the ``executed`` stay held."""
        if self.behind:
            for kind, data in self.held:
                if kind != "executed":
                    self.forwarder.add(kind, data)
            self.held = [(kind, data) for kind, data in self.held if kind == "executed"]
            self.behind = False

    def release(self, renamed: dict[Place, str]) -> None:
        """The held events, now that the outputs they name are stored: each ``executed`` names its
        files as stored (``renamed``), whether it goes out with the report or, behind more events
        than a report carries, before it."""
        for kind, data in self.held:
            self.forwarder.add(kind, renamed_executed(data, renamed) if kind == "executed" else data)
        self.held = []


@dataclass
class Stops:
    """What ends the following of a job early: its owner's ``cancel``, ComfyUI's ``death``, and the
    ``handoff``'s answer saying the job is not this worker's (``Handoff.until_refused``)."""

    cancel: asyncio.Event
    death: asyncio.Event
    handoff: Handoff


@dataclass
class Handoff:
    """How a pull worker runs jobs back to back (each part optional).

    ``prepared``: the job's files were fetched while the previous job ran (``JobFiles.prepare``).
    ``gpu_free`` is set as soon as ComfyUI is done with the job; its outputs go to storage after
    that, while the next job may already run. ``idle_since``: when ComfyUI last fell idle
    (``time.monotonic``) while this job was queued already; the gap goes into its ``timing``.
    ``submitted`` is set once the job is in ComfyUI (or ComfyUI refused it, or was lost).
    ``next_submitted`` is the next job's ``submitted`` (or set when none follows): the finished
    job's history, upload and report wait for it (``NEXT_SUBMIT_SECONDS`` at most), so they never
    hold up the GPU's next start. ``confirmed``: the queue manager's answer (True: the job is this
    worker's) to the start of a prepared job, asked once the job is in ComfyUI (``submitted``). The
    job is staged and submitted without waiting for it (unless it said no already), so the GPU
    waits for the submit only. An answer that says no (or none: False) stops the prompt in ComfyUI
    at once, as a cancel does, and the run ends ``Outcome.moved`` once ComfyUI is done with it: its
    outputs are discarded, its owner's cached results are not reused (``JobFiles.unstored``), and
    nothing of it is reported (its forwarder sends no event before the answer is True:
    ``EventForwarder`` ``gate``). Every outcome of such a job, a failure or a loss
    too, waits for the answer.
    """

    prepared: Prepared | None = None
    gpu_free: asyncio.Event | None = None
    idle_since: float | None = None
    submitted: asyncio.Event | None = None
    next_submitted: asyncio.Event | None = None
    confirmed: asyncio.Future[bool] | None = None

    async def ours(self) -> bool:
        """Whether the job is this worker's to run (always, unless it was staged ahead of ``start``).
        Shielded: a wait cancelled here (the follow ending) never cancels the answer."""
        return True if self.confirmed is None else await asyncio.shield(self.confirmed)

    def refused(self) -> bool:
        """The answer has come, and it says the job is not this worker's."""
        return self.confirmed is not None and self.confirmed.done() and not self.confirmed.result()

    async def until_refused(self) -> None:
        """Return once the answer says the job is not this worker's; never, when it is (or none is asked)."""
        if not await self.ours():
            return
        await asyncio.get_running_loop().create_future()  # cancelled with the follow

    async def until_next_submitted(self) -> None:
        if self.next_submitted is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.next_submitted.wait(), NEXT_SUBMIT_SECONDS)

    def ended(self) -> None:
        """The job's run is over: it is in ComfyUI by now, or never will be (``submitted``)."""
        if self.submitted is not None:
            self.submitted.set()


class Relay:
    """The handoffs of one GPU's jobs, launched back to back (pull worker, push request): each job's
    ``submitted`` is the ``next_submitted`` of the job launched before it, so that job's storing
    waits for this one's submit."""

    def __init__(self) -> None:
        self.follows: asyncio.Event | None = None  # the last job launched's ``next_submitted``

    def link(self) -> tuple[asyncio.Event, asyncio.Event]:
        """``submitted`` and ``next_submitted`` for the job launched now."""
        submitted = self.follows if self.follows is not None else asyncio.Event()
        self.follows = asyncio.Event()
        return submitted, self.follows

    def none_follows(self) -> None:
        """No job follows the last one launched for now: it stores its outputs and reports at once."""
        if self.follows is not None:
            self.follows.set()


class JobRunner:
    def __init__(
        self,
        comfy: ComfyClient,
        events: EventStream,
        storage: Storage,
        files: JobFiles,
        silence: float = 5.0,
        poll: float = 1.0,
        on_lost: Callable[[str], None] = lambda _: None,
        storage_patience: float = 0.0,
        on_stuck: Callable[[str], None] = lambda _: None,
        interrupt_grace: float = 60.0,
    ) -> None:
        self.comfy, self.events, self.storage, self.files = comfy, events, storage, files
        self.silence, self.poll = silence, poll
        self.storage_patience = storage_patience  # how long outputs wait for a store that does not answer
        # Called (with why) the moment a job finds ComfyUI gone or silent, whoever's job it turns out
        # to be, before the GPU is said to be free: the worker claims nothing more until it answers.
        self.on_lost = on_lost
        # Called (with why) when a prompt told to stop still runs ``interrupt_grace`` seconds after its
        # interrupt (a node that never checks for one): the GPU is freed by restarting ComfyUI.
        self.on_stuck, self.interrupt_grace = on_stuck, interrupt_grace
        # The last prompt ended normally (``Ending.off_queue``): ComfyUI holds none, so the next job
        # is staged without asking ``/queue``. Unset while a job runs and after any other ending.
        self.comfy_idle = False
        self.offered: set[str] = set()  # the node classes ComfyUI offered when the worker started

    def _rejected(self, exc: PromptRejectedError, prompt: dict[str, Any]) -> JobError:
        return missing_offered(exc, prompt, self.offered) or rejected(exc)

    async def run(
        self,
        job: Job,
        forwarder: EventForwarder,
        cancel: asyncio.Event,
        death: asyncio.Event,
        store: bool = True,
        handoff: Handoff | None = None,
    ) -> Outcome:
        """Run ``job`` with only its owner's files in ComfyUI's folders (``JobFiles``); ``store=False``
        (warmup) names the outputs without copying them to storage. ``handoff``: see ``Handoff``."""
        handoff = handoff or Handoff()
        try:
            outcome = await self._outcome(job, forwarder, Stops(cancel, death, handoff), store)
            if not outcome.moved and not await handoff.ours():  # a failure of a job not ours is not told
                self.files.unstored(job.user)
                outcome = Outcome(moved=True)
            return outcome
        finally:
            if handoff.gpu_free is not None:
                handoff.gpu_free.set()
            self.files.discard(job.id)

    async def _outcome(self, job: Job, forwarder: EventForwarder, stops: Stops, store: bool) -> Outcome:
        timing = JobTiming()
        try:
            if not self.comfy_idle:  # an abandoned prompt (cancelled, lease lost, outage) may still run
                await until_idle(self.comfy)
            self.comfy_idle = False
            outcome = await self._run_staged(job, forwarder, stops, store, timing)
            outcome.timing = timing
            return outcome
        except NotConfirmedError:
            self.comfy_idle = True  # nothing was submitted: ComfyUI holds no prompt still
            return Outcome(moved=True)
        except StagingCancelledError:  # its files waited for the store: nothing reached ComfyUI
            self.comfy_idle = True
            return Outcome(error=CANCELLED)
        except ComfyBusyError as exc:  # the job goes back; a stuck ComfyUI takes no more (``on_stuck``)
            self.on_stuck(str(exc))
            return Outcome(lost=str(exc))
        except ComfyUnavailableError as exc:
            self.on_lost(str(exc))
            return Outcome(lost=str(exc))
        except StorageUnavailableError as exc:  # an outage, not her files: another try may do
            message = f"the file store did not answer while the job's files were staged: {exc}"
            return Outcome(error=JobError(type="StorageUnavailable", message=message, retryable=True))
        except StorageError as exc:
            return Outcome(error=JobError(type="InputUnavailable", message=str(exc)))
        except PromptRejectedError as exc:
            return Outcome(error=self._rejected(exc, job.prompt))
        except OSError as exc:  # the worker's own disk: another worker may do better
            message = f"the worker could not stage the job's files: {exc}"
            return Outcome(error=JobError(type="StagingFailed", message=message, retryable=True))

    async def _run_staged(
        self, job: Job, forwarder: EventForwarder, stops: Stops, store: bool, timing: JobTiming
    ) -> Outcome:
        handoff = stops.handoff
        queue = self.events.subscribe(job.id)
        try:
            async with self.files.staged(job, handoff.prepared, stops.cancel) as stage:
                if handoff.refused():  # said no while the files were staged: ComfyUI never sees it
                    raise NotConfirmedError(job.id)
                follower = Follower(forwarder, self.events.watch())
                submitted = time.monotonic()
                if handoff.idle_since is not None:
                    timing.idle_gap_seconds = max(0.0, submitted - handoff.idle_since)
                ending = await self._submit_and_follow(job, stage.prompt, queue, follower, stops)
                if ending.kind is EndingKind.LOST:
                    self.on_lost(ending.reason)
                timing.gpu_seconds = time.monotonic() - submitted
                forwarder.hold()  # the report, after the next job's submit and the upload, carries the rest
                self.comfy_idle = ending.off_queue
                ours = await handoff.ours()  # at once, unless the job ended before the answer came
                if ours and ending.kind in (EndingKind.SUCCESS, EndingKind.ENDED):
                    stage.keep_outputs()
                if ours and handoff.gpu_free is not None:
                    handoff.gpu_free.set()  # the next job may start: it gets the folders once these are aside
            if not ours:
                await self._cleared(job.id)
        finally:
            self.events.unsubscribe(job.id)
        if not ours:
            return Outcome(moved=True)  # the staged folders said ``unstored``: nothing of it is reused
        await handoff.until_next_submitted()
        return await self._conclude(job, ending, follower, store, timing)

    async def _cleared(self, job_id: str) -> None:
        """A job that turned out not to be this worker's was stopped in ComfyUI: wait until ComfyUI
        holds no prompt, then drop the stopped run's history entry, so a later run of the job here
        (given back, or taken again) never reads its ending."""
        try:
            if not self.comfy_idle:
                await until_idle(self.comfy)
                self.comfy_idle = True
            await self.comfy.forget(job_id)
        except ComfyBusyError as exc:
            self.on_stuck(str(exc))
        except ComfyUnavailableError as exc:
            self.on_lost(str(exc))

    async def _submit_and_follow(
        self,
        job: Job,
        prompt: dict[str, Any],
        queue: asyncio.Queue[Event],
        follower: Follower,
        stops: Stops,
    ) -> Ending:
        submitted = False
        try:
            try:
                await self._submit(job, prompt)
                submitted = True
            finally:
                if stops.handoff.submitted is not None:
                    stops.handoff.submitted.set()  # in ComfyUI, or it never will be (refused, ComfyUI lost)
            return await self._follow(job.id, queue, follower, stops)
        except PromptRejectedError as exc:
            return Ending(EndingKind.ERROR, error=self._rejected(exc, prompt))
        except ComfyUnavailableError as exc:
            return Ending(EndingKind.LOST, reason=str(exc), submitted=submitted)
        except asyncio.CancelledError:  # even mid-submit: the prompt may already be queued in ComfyUI
            await asyncio.shield(self._abandon(job.id))
            raise

    async def _submit(self, job: Job, prompt: dict[str, Any]) -> None:
        if rerun(job):
            await self.comfy.forget(job.id)
        await self.comfy.submit(prompt, job.id, self.events.client_id, job.extra_data)

    async def _conclude(
        self, job: Job, ending: Ending, follower: Follower, store: bool, timing: JobTiming
    ) -> Outcome:
        if ending.kind in (EndingKind.SUCCESS, EndingKind.ENDED) and ending.entry is None:
            ending = await self._ending_from_history(job.id)
        if ending.kind is EndingKind.LOST:
            return Outcome(lost=ending.reason, submitted=ending.submitted)
        if ending.kind is not EndingKind.SUCCESS or ending.entry is None:
            self.files.unstored(job.user)  # whatever it made is not stored
            return Outcome(error=ending.error or CANCELLED)
        if not store:
            return Outcome(outputs=output_files(ending.entry))
        if replays(self.files.kept(job.id), ending.entry):
            await self.files.stored_before(job)  # the files it names may be on their way to storage
        try:
            started = time.monotonic()
            kept = self.files.kept(job.id)
            outputs = await store_outputs(kept, self.storage, job.user, ending.entry, self.storage_patience)
            timing.upload_seconds = time.monotonic() - started
        except (OSError, StorageError) as exc:
            self.files.unstored(job.user)
            message = f"could not move the outputs to storage: {exc}"
            return Outcome(error=JobError(type="OutputsNotStored", message=message, retryable=True))
        renamed = renames(ending.entry, outputs)
        follower.release(renamed)
        self.files.stored_as(job, renamed)
        return Outcome(outputs=outputs)

    async def _ending_from_history(self, job_id: str) -> Ending:
        try:
            entry = await self.comfy.history(job_id)
        except ComfyUnavailableError as exc:
            entry, reason = None, str(exc)
        else:
            reason = "ComfyUI finished the job but has no history of it"
        if entry:
            return from_history(entry)
        self.on_lost(reason)
        return lost(reason)

    async def _follow(
        self,
        job_id: str,
        queue: asyncio.Queue[Event],
        follower: Follower,
        stops: Stops,
    ) -> Ending:
        signals: dict[asyncio.Future[Any], Signal] = {
            asyncio.ensure_future(stops.death.wait()): Signal.DIED,
            asyncio.ensure_future(stops.cancel.wait()): Signal.CANCEL,
            asyncio.ensure_future(stops.handoff.until_refused()): Signal.MOVED,
            asyncio.ensure_future(self.events.dropped.wait()): Signal.DROPPED,  # ask ComfyUI at once
        }
        timeout = self.silence
        stop_by: float | None = None  # an interrupt was sent: the prompt must have stopped by then
        try:
            while True:
                event = await self._next(queue, signals, until_stop(timeout, stop_by))
                if isinstance(event, tuple):
                    timeout = self.silence
                    ending = follower.handle(*event)
                    if stop_by is not None and event[0] == "execution_start":  # began after the interrupt:
                        await self._cancel(job_id)  # ComfyUI cleared it as it began (``_stop_in_comfyui``)
                else:
                    if event in (Signal.CANCEL, Signal.MOVED):  # each acted on once
                        stop_by = stop_by or time.monotonic() + self.interrupt_grace
                    if event in (Signal.CANCEL, Signal.MOVED, Signal.DROPPED):
                        signals = {task: name for task, name in signals.items() if name != event}
                    if event in (Signal.SILENT, Signal.DROPPED):
                        timeout = self.poll
                        follower.gap = True  # events may have been missed: a success reads /history
                    ending = await self._on_signal(job_id, event)
                if ending is None and stop_by is not None and time.monotonic() >= stop_by:
                    ending = self._stuck()
                if ending is not None:
                    return ending
        finally:
            for task in signals:
                task.cancel()

    def _stuck(self) -> Ending:
        """The prompt runs on ``interrupt_grace`` seconds after its interrupt: ComfyUI is restarted
        (``on_stuck``) and the job ends as it was asked to, cancelled."""
        self.on_stuck(
            f"ComfyUI still runs a prompt {self.interrupt_grace:g} s after it was interrupted (a node "
            "that never checks for an interrupt; WORKER_INTERRUPT_GRACE_SECONDS)"
        )
        return Ending(EndingKind.CANCELLED, error=CANCELLED)

    async def _on_signal(self, job_id: str, signal: Signal) -> Ending | None:
        """What ``died``, ``cancel``, ``moved``, a ``silent`` or a ``dropped`` socket means for the job."""
        if signal is Signal.DIED:
            return lost("ComfyUI exited while running the job")
        if signal in (Signal.CANCEL, Signal.MOVED):  # stopped at once; a job not ours is then cleared away
            return Ending(EndingKind.CANCELLED, error=CANCELLED) if await self._cancel(job_id) else None
        return await self._check(job_id)

    @staticmethod
    async def _next(
        queue: asyncio.Queue[Event], signals: dict[asyncio.Future[Any], Signal], wait: float
    ) -> Event | Signal:
        """The next socket event, or which of ``signals`` fired, or ``silent`` after ``wait`` seconds."""
        for task, name in signals.items():
            if task.done():
                return name
        if not queue.empty():
            return queue.get_nowait()
        getter = asyncio.ensure_future(queue.get())
        done, _ = await asyncio.wait({getter, *signals}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            result: Event = getter.result()
            return result
        getter.cancel()
        return next((signals[task] for task in done), Signal.SILENT)

    async def _check(self, job_id: str) -> Ending | None:
        """The silent-socket fallback: ask ``/history``, and ``/queue`` whether ComfyUI still knows it."""
        try:
            entry = await self.comfy.history(job_id)
            if entry is None:
                running, pending = await self.comfy.queue()
                if job_id in running or job_id in pending:
                    return None
                entry = await self.comfy.history(job_id)  # it may have ended between the two reads
        except ComfyUnavailableError as exc:
            return lost(str(exc))
        if entry is not None:
            return from_history(entry)
        return lost("ComfyUI no longer knows the job (it restarted and lost its queue)")

    async def _cancel(self, job_id: str) -> bool:
        """Stop the job in ComfyUI; True when it is confirmed gone without an event to wait for."""
        try:
            return await self._stop_in_comfyui(job_id)
        except ComfyUnavailableError:
            return True  # ComfyUI is down: the job is not running anywhere

    async def _stop_in_comfyui(self, job_id: str) -> bool:
        """Delete the prompt from ComfyUI's queue, or interrupt it when it runs. ComfyUI 0.3.64 lists
        a prompt as running as soon as its prompt worker takes it off the queue, but clears the
        interrupt flag as the prompt's run begins (``execute_async``, just before it sends
        ``execution_start``): an interrupt that lands in between is lost, so ``_follow`` sends it
        again when it hears ``execution_start`` after one was sent."""
        running, pending = await self.comfy.queue()
        if job_id in pending:
            await self.comfy.delete_queued(job_id)
            running, pending = await self.comfy.queue()
            if job_id not in running:
                return True
        if job_id in running:
            await self.comfy.interrupt(job_id)
        return False

    async def _abandon(self, job_id: str) -> None:
        with contextlib.suppress(Exception):
            await self._cancel(job_id)
