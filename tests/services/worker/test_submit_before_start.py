"""A prepared job reaches ComfyUI at once when the GPU falls free, while the queue manager answers its
``start``; the answer decides whether anything of it is ever seen.

- "started": the job runs and reports as any other, and the events it made before the answer reach
  the queue manager after it, in ComfyUI's order.
- "not this worker's" (cancelled meanwhile, or taken by an idle worker of the pool): the prompt is
  stopped in ComfyUI, and nothing of it is reported, forwarded, stored or counted by this worker; its
  owner's next identical job is not served from ComfyUI's cache of the discarded run.
- no answer (the queue manager unreachable, or refusing): the prompt is stopped and the job given
  back unrun, to run later.

Real queue manager, real HTTP, the ComfyUI double; the worker's ``start`` call is held until the
test has made the queue manager's answer what it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from devkit.doubles.comfyui import ComfyUIDouble
from services.protocol.jobs import Job, JobState
from services.protocol.workers import StartReply
from services.worker.comfy_client import ComfyClient, ComfyUnavailableError, PromptRejectedError
from services.worker.job_files import JobFiles
from services.worker.queue_client import LeaseLostError, QueueClient, QueueRefusedError
from tests.support.jobs import finished, graph, participant, submit, until
from tests.support.queue_manager_app import LiveServer
from tests.support.worker_agent import Gates, LeaseCalls, hold_of, pull_worker, worker_settings


class Starts:
    """The worker's ``start`` for chosen jobs goes to the queue manager only once the test releases
    it (so the answer is what the queue manager says then), or fails as a lost connection would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.failures: dict[str, Exception] = {}
        self.asked: set[str] = set()
        self.answers: dict[str, StartReply] = {}
        original = QueueClient.start

        async def held(client: QueueClient, job_id: str, *args: Any, **kwargs: Any) -> StartReply:
            gate = self.gates.get(job_id)
            if gate is not None:
                self.asked.add(job_id)
                await asyncio.wait_for(gate.wait(), 30)
            if job_id in self.failures:
                raise self.failures[job_id]
            reply = await original(client, job_id, *args, **kwargs)
            self.answers[job_id] = reply
            return reply

        monkeypatch.setattr(QueueClient, "start", held)

    def hold(self, job_id: str, failure: Exception | None = None) -> None:
        self.gates[job_id] = asyncio.Event()
        if failure is not None:
            self.failures[job_id] = failure

    def release(self, job_id: str) -> None:
        self.gates[job_id].set()


class ComfyCalls:
    """What the workers asked of ComfyUI, in order: ``submit``/``rejected``/``interrupt``/``delete``;
    and, for each prompt submitted to ``comfy``, whether that double held another prompt then."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, comfy: ComfyUIDouble) -> None:
        self.log: list[tuple[str, str]] = []
        self.busy: dict[str, bool] = {}
        submit_, interrupt, delete = ComfyClient.submit, ComfyClient.interrupt, ComfyClient.delete_queued

        async def submitted(client: ComfyClient, prompt: dict[str, Any], prompt_id: str, *rest: Any) -> None:
            if client.base_url == comfy.url:
                self.busy[prompt_id] = comfy.state.running is not None or bool(comfy.state.pending)
            try:
                await submit_(client, prompt, prompt_id, *rest)
            except PromptRejectedError:
                self.log.append(("rejected", prompt_id))
                raise
            self.log.append(("submit", prompt_id))

        async def interrupted(client: ComfyClient, prompt_id: str) -> None:
            self.log.append(("interrupt", prompt_id))
            await interrupt(client, prompt_id)

        async def deleted(client: ComfyClient, prompt_id: str) -> None:
            self.log.append(("delete", prompt_id))
            await delete(client, prompt_id)

        monkeypatch.setattr(ComfyClient, "submit", submitted)
        monkeypatch.setattr(ComfyClient, "interrupt", interrupted)
        monkeypatch.setattr(ComfyClient, "delete_queued", deleted)

    def of(self, job_id: str) -> list[str]:
        return [call for call, prompt_id in self.log if prompt_id == job_id]

    def stopped(self, job_id: str) -> bool:
        return bool({"interrupt", "delete"} & set(self.of(job_id)))


@dataclass
class Rig:
    """The queue manager, w-a's ComfyUI double and what the tests hold and note around them."""

    comfy: ComfyUIDouble
    qm: LiveServer
    tmp_path: Path
    files: Path
    gates: Gates
    starts: Starts
    comfy_calls: ComfyCalls
    held_by: redis.Redis
    calls: LeaseCalls = field(default_factory=LeaseCalls)  # w-a's lease calls

    @contextlib.asynccontextmanager
    async def w_a(self) -> AsyncIterator[None]:
        """Worker w-a pulling from the queue manager, its lease calls noted."""
        settings = worker_settings(self.comfy, self.qm.url, self.tmp_path, worker_id="w-a")
        async with pull_worker(settings) as running:
            self.calls.watch(running.worker.queue.http)
            yield

    def stored(self, prefix: str) -> list[str]:
        """The names in alice's storage made by graphs saving under ``prefix``."""
        folder = self.files / "users" / "alice" / "output"
        return sorted(p.name for p in folder.glob(f"{prefix}_*")) if folder.exists() else []

    async def queued(
        self, alice: httpx.AsyncClient, prompt: dict[str, Any] | None = None, failure: Exception | None = None
    ) -> tuple[str, str]:
        """Alice's two jobs, queued before w-a starts: the first runs until its gate opens, the
        second (``prompt``) runs in w-a's ComfyUI until its gate opens, and its ``start`` waits for
        the test (and then fails with ``failure``, if given)."""
        first = await submit(alice, graph(1, prefix="first"))
        second = await submit(alice, prompt or graph(2, prefix="second"))
        self.gates.close(first)
        self.gates.close(second, on=self.comfy)
        self.starts.hold(second, failure)
        return first, second

    async def launched(self, first: str, second: str) -> None:
        """Until the second is held for w-a, the first ended, and w-a asked to start the second."""
        await until(lambda: hold_of(self.held_by, second) == "w-a", "the second held for w-a", 20)
        self.gates.open(first)
        await until(lambda: second in self.starts.asked, "w-a asks to start the second", 20)

    async def launched_speculatively(self, first: str, second: str) -> None:
        """``launched``, and the second is in ComfyUI while its ``start`` waits for the test."""
        await self.launched(first, second)
        in_comfyui = "the second is in ComfyUI before the answer"
        await until(lambda: second in self.comfy.state.timings, in_comfyui, 20)


@pytest.fixture
def rig(
    comfy: ComfyUIDouble,
    qm: LiveServer,
    tmp_path: Path,
    files: Path,
    gates: Gates,
    held_by: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> Rig:
    calls = ComfyCalls(monkeypatch, comfy)
    return Rig(comfy, qm, tmp_path, files, gates, Starts(monkeypatch), calls, held_by)


def cached_nodes(comfy: ComfyUIDouble, job_id: str) -> list[str]:
    """The nodes ComfyUI served from its cache for the job (its ``execution_cached``)."""
    messages = comfy.state.history[job_id]["status"]["messages"]
    return next(data["nodes"] for kind, data in messages if kind == "execution_cached")


async def test_events_a_job_made_before_its_start_was_answered_reach_the_queue_manager_after_it(
    rig: Rig,
) -> None:
    """The job ends in ComfyUI before the answer comes: none of its events went out before it, all of
    them after it, in order, and its outputs are stored and reported as any job's."""
    async with participant(rig.qm, "alice") as alice:
        first, second = await rig.queued(alice)
        async with rig.w_a():
            await rig.launched_speculatively(first, second)
            rig.gates.open(second)
            await until(lambda: second in rig.comfy.state.history, "the second ran to its end in ComfyUI", 20)
            before = rig.calls.events_sent(second) + rig.calls.bodies(second, "complete")
            rig.starts.release(second)
            done = await finished(alice, second)
    assert before == []  # nothing of it was seen before the queue manager said it is w-a's
    assert rig.starts.answers[second].started
    assert done.state == JobState.SUCCEEDED and done.worker_id == "w-a" and done.attempts == 1
    assert [o.filename for o in done.outputs] == rig.stored("second") == ["second_00001_.png"]
    (completion,) = rig.calls.bodies(second, "complete")
    sent = [event["type"] for event in rig.calls.events_sent(second) + completion["events"]]
    assert sent[0] == "execution_start" and "executed" in sent
    executing = [e["data"]["node"] for e in rig.calls.events_sent(second) if e["type"] == "executing"]
    assert executing == ["1", "2", "3"][: len(executing)]  # in ComfyUI's order


@pytest.mark.parametrize("moved_by", ["cancel", "idle worker"])
@pytest.mark.parametrize("answered", ["while it runs", "after it ended"])
async def test_a_job_that_was_not_this_workers_after_all_is_stopped_and_nothing_of_it_is_seen(
    rig: Rig,
    moved_by: str,
    answered: str,
) -> None:
    other = ComfyUIDouble(rig.tmp_path / "comfy-b").start()
    try:
        async with participant(rig.qm, "alice") as alice:
            first, second = await rig.queued(alice)
            async with rig.w_a():
                await rig.launched_speculatively(first, second)
                if answered == "after it ended":
                    rig.gates.open(second)
                    await until(lambda: second in rig.comfy.state.history, "the second ended in ComfyUI", 20)
                if moved_by == "cancel":
                    (await alice.post(f"/api/jobs/{second}/cancel")).raise_for_status()
                    moved = await finished(alice, second)
                else:
                    async with pull_worker(worker_settings(other, rig.qm.url, rig.tmp_path, worker_id="w-b")):
                        moved = await finished(alice, second)
                instead = await submit(alice, graph(5, prefix="instead"))  # what start leases w-a instead
                rig.starts.release(second)
                if answered == "while it runs":
                    await until(lambda: rig.comfy_calls.stopped(second), "w-a stops the second", 20)
                    rig.gates.open(second)
                await until(lambda: second not in rig.comfy.state.history, "the stopped run is forgotten", 20)
                # Her next identical job (the same graph) runs on w-a
                again = await submit(alice, graph(2, prefix="second"))
                rerun = await finished(alice, again)
                ran = await finished(alice, first)
                ran_instead = await finished(alice, instead)
    finally:
        other.stop()
    reply = rig.starts.answers[second]
    assert not reply.started and reply.lease is not None and reply.lease.job.id == instead
    assert ran.state == JobState.SUCCEEDED and ran.worker_id == "w-a"
    # What start named instead ran on w-a, submitted once ComfyUI was done with the stopped prompt
    assert ran_instead.state == JobState.SUCCEEDED and ran_instead.worker_id == "w-a"
    assert rig.comfy_calls.busy[instead] is False
    # Nothing of the moved job came from w-a: no event, no report, no output, no attempt
    assert rig.calls.events_sent(second) == []
    assert [path for path, _ in rig.calls.sent if path.startswith(f"/api/leases/{second}/")] == [
        f"/api/leases/{second}/start"
    ]
    if moved_by == "cancel":
        assert moved.state == JobState.CANCELLED and moved.attempts == 0 and moved.outputs == []
    else:
        assert moved.state == JobState.SUCCEEDED and moved.worker_id == "w-b" and moved.attempts == 1
        assert len(moved.outputs) == 1  # the participant sees exactly one result: w-b's
    if answered == "while it runs":
        assert rig.comfy_calls.of(second)[0] == "submit" and rig.comfy_calls.stopped(second)
    # Her next identical job runs its output node again: no cache hit naming a discarded file
    assert rerun.state == JobState.SUCCEEDED and rerun.worker_id == "w-a"
    assert "3" not in cached_nodes(rig.comfy, again)
    assert rerun.outputs and all(o.filename in rig.stored("second") for o in rerun.outputs)
    # None from w-a's stopped run; w-b's image of the moved job is kept beside her rerun's
    kept = [o.filename for o in rerun.outputs] + [o.filename for o in moved.outputs]
    assert rig.stored("second") == sorted(kept) and len(set(kept)) == len(kept)


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("the queue manager is unreachable"),
        QueueRefusedError("start answered 403"),
        LeaseLostError("start answered 409"),
    ],
    ids=["unreachable", "refused", "409"],
)
async def test_a_job_whose_start_got_no_answer_is_stopped_given_back_and_runs_later(
    rig: Rig,
    failure: Exception,
) -> None:
    async with participant(rig.qm, "alice") as alice:
        first, second = await rig.queued(alice, failure=failure)
        async with rig.w_a():
            await rig.launched_speculatively(first, second)
            rig.starts.release(second)
            await until(lambda: rig.comfy_calls.stopped(second), "w-a stops the second in ComfyUI", 20)
            rig.gates.open(second)
            done = await finished(alice, second)
    assert rig.calls.bodies(second, "release")  # given back ...
    assert done.state == JobState.SUCCEEDED and done.worker_id == "w-a"
    assert done.attempts == 1  # ... unrun: its one attempt is the run after
    # stopped, then run: an interrupt landing before the prompt's run begins is lost by ComfyUI and
    # sent again at its execution_start (Runner._stop_in_comfyui), so it may come twice in a row
    calls = [name for name, _ in itertools.groupby(rig.comfy_calls.of(second))]
    assert calls[:3] == ["submit", "interrupt", "submit"]
    assert [o.filename for o in done.outputs] == rig.stored("second") == ["second_00001_.png"]


@pytest.mark.parametrize("ours", [False, True], ids=["not ours", "ours"])
async def test_comfyui_rejecting_a_job_is_reported_only_when_the_job_is_this_workers(
    rig: Rig,
    ours: bool,
) -> None:
    bad = graph(3)
    bad["1"]["inputs"]["width"] = 0  # ComfyUI refuses the graph (the queue manager does not check it)
    async with participant(rig.qm, "alice") as alice:
        first, second = await rig.queued(alice, bad)
        async with rig.w_a():
            await rig.launched(first, second)
            await until(lambda: "rejected" in rig.comfy_calls.of(second), "ComfyUI refused the second", 20)
            if not ours:
                (await alice.post(f"/api/jobs/{second}/cancel")).raise_for_status()
            rig.starts.release(second)
            done = await finished(alice, second)
            after = await finished(alice, await submit(alice, graph(4)))  # the worker goes on
    assert after.state == JobState.SUCCEEDED and after.worker_id == "w-a"
    assert rig.starts.answers[second].started is ours
    if ours:
        assert done.state == JobState.FAILED and done.error is not None
        assert done.error.type == "prompt_outputs_failed_validation"
        assert len(rig.calls.bodies(second, "fail")) == 1
    else:
        assert done.state == JobState.CANCELLED and done.error is None  # cancelled, not failed by w-a
        assert rig.calls.bodies(second, "fail") == []
        assert rig.calls.events_sent(second) == []


class Hang:
    """ComfyUI gone silent: its socket stays open and sends nothing (the double's ``silent``), and
    no HTTP call from the worker is answered (each fails as a timed-out call does)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, comfy: ComfyUIDouble) -> None:
        self.comfy, self.on, self.refused = comfy, False, 0
        original = ComfyClient._call

        async def call(client: ComfyClient, method: str, path: str, **kwargs: Any) -> httpx.Response:
            if self.on and client.base_url == comfy.url:
                self.refused += 1
                raise ComfyUnavailableError(f"ComfyUI at {client.base_url} does not answer {path}")
            return await original(client, method, path, **kwargs)

        monkeypatch.setattr(ComfyClient, "_call", call)

    def start(self) -> None:
        self.comfy.knobs.silent, self.on = True, True

    def end(self) -> None:
        self.comfy.knobs.silent, self.on = False, False


async def test_comfyui_found_silent_while_a_job_not_ours_ran_stops_the_worker_claiming(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker learns ComfyUI went silent from a job that turned out not to be its own: it claims
    nothing until ComfyUI answers again, so her next job is not leased to a worker that cannot run
    it (shown started, then given back), and runs once ComfyUI is back."""
    hang = Hang(monkeypatch, rig.comfy)
    async with participant(rig.qm, "alice") as alice:
        first, second = await rig.queued(alice)
        async with rig.w_a():
            await rig.launched_speculatively(first, second)
            assert (await finished(alice, first)).state == JobState.SUCCEEDED
            hang.start()
            await until(lambda: hang.refused > 0, "w-a asks the silent ComfyUI about the second", 20)
            (await alice.post(f"/api/jobs/{second}/cancel")).raise_for_status()
            rig.starts.release(second)
            await until(lambda: rig.starts.answers.get(second) is not None, "start answered", 20)
            third = await submit(alice, graph(7, prefix="third"))
            with pytest.raises(TimeoutError):  # what must not happen while ComfyUI is silent
                leased = f"/api/leases/{third}/"
                await until(lambda: any(p.startswith(leased) for p, _ in rig.calls.sent), "leased", 2.0)
            waiting = Job.model_validate((await alice.get(f"/api/jobs/{third}")).json())
            hang.end()
            rig.gates.open(second)  # ComfyUI answers again and ends the prompt it still runs
            done = await finished(alice, third)
    assert not rig.starts.answers[second].started
    assert (waiting.state, waiting.started_at, waiting.attempts) == (JobState.QUEUED, None, 0)
    assert done.state == JobState.SUCCEEDED and done.worker_id == "w-a" and done.attempts == 1


async def test_a_job_cancelled_while_its_files_are_staged_never_reaches_comfyui(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer to ``start`` comes while the prepared job's files are being put in ComfyUI's
    folders, and says it was cancelled: the job is never submitted, nothing of it is seen, and the
    worker goes on with the next."""
    staged = JobFiles.staged
    async with participant(rig.qm, "alice") as alice:
        first, second = await rig.queued(alice)

        @contextlib.asynccontextmanager
        async def slow_staging(files: JobFiles, job: Any, *args: Any) -> AsyncIterator[Any]:
            if job.id == second:  # the files take as long as the answer does
                await until(lambda: second in rig.starts.answers, "start answered", 20)
            async with staged(files, job, *args) as stage:
                yield stage

        monkeypatch.setattr(JobFiles, "staged", slow_staging)
        async with rig.w_a():
            await rig.launched(first, second)
            (await alice.post(f"/api/jobs/{second}/cancel")).raise_for_status()
            rig.starts.release(second)
            ran = await finished(alice, first)
            after = await finished(alice, await submit(alice, graph(6, prefix="after")))
            cancelled = await finished(alice, second)
    assert not rig.starts.answers[second].started
    assert second not in rig.comfy.state.timings and rig.comfy_calls.of(second) == []
    assert (cancelled.state, cancelled.attempts) == (JobState.CANCELLED, 0)
    assert [path for path, _ in rig.calls.sent if path.startswith(f"/api/leases/{second}/")] == [
        f"/api/leases/{second}/start"
    ]
    assert ran.state == after.state == JobState.SUCCEEDED and after.worker_id == "w-a"
