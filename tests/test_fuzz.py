"""Fuzzing: no command or schema input crashes a workflow task.

Hypothesis sends arbitrary JSON (and arbitrary arities) as the arguments of every
update, signal and query of one long-running session, and arbitrary JSON to the
schemas and importers. A bad command must be rejected (update), dropped (signal) or
fail the query; a bad schema input must raise a `ValueError` (pydantic's
`ValidationError` is one) with a message. Afterwards the session still completes
and its history has no failed workflow task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import uuid
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)

from temporal_handoff.activities.tokenizer import count_tokens
from temporal_handoff.documents.build import build_document
from temporal_handoff.documents.markdown import to_markdown
from temporal_handoff.documents.render import render_prompt
from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.events import HandoffInput
from temporal_handoff.schemas.handoff import HandoffContext, HandoffDocument, HandoffPayload
from temporal_handoff.schemas.lifecycle import LifecycleState, TerminationReason
from temporal_handoff.schemas.project import (
    Blocker,
    BlockerType,
    ProjectState,
    from_orchestrator,
    from_state_json,
    synthetic_project,
)
from temporal_handoff.schemas.session import (
    AbortArgs,
    DecideArgs,
    SayArgs,
    SessionInput,
    SessionResult,
    SessionStatus,
)
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from tests.conftest import running_worker

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=30)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def near(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts with the schema's own keys (plus strangers) and arbitrary values."""
    return st.dictionaries(st.sampled_from([*keys, "extra"]), JSON, max_size=len(keys) + 1)


UPDATE_KEYS = {
    "decide": ["blocker_id", "decision", "rationale", "by"],
    "say": ["text", "by"],
    "skip_task": ["task_id", "by"],
    "retry_task": ["task_id", "by"],
}
SIGNALS = ["pause", "resume", "flush", "abort"]
QUERIES = ["status", "project"]
_ABORT = TypeAdapter(AbortArgs | None)


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=True)
    except (ValueError, TypeError):
        return False
    return True


def valid_abort(args: list[Any]) -> bool:
    """Would this `abort` signal be accepted (and end the session)?"""
    if not args:
        return True
    if len(args) != 1:
        return False
    try:
        _ABORT.validate_json(json.dumps(args[0]))
    except (ValidationError, ValueError):
        return False
    return True


@st.composite
def commands(draw: st.DrawFn) -> tuple[str, str, list[Any]]:
    kind = draw(st.sampled_from(["update", "signal", "query"]))
    if kind == "update":
        name = draw(st.sampled_from(sorted(UPDATE_KEYS)))
        one = draw(JSON | near(UPDATE_KEYS[name]))
    elif kind == "signal":
        name = draw(st.sampled_from(SIGNALS))
        one = draw(JSON | near(["reason"]))
    else:
        name = draw(st.sampled_from(QUERIES))
        one = draw(JSON)
    arity = draw(st.sampled_from([1, 1, 1, 0, 2]))
    extra = max(0, arity - 1)
    args = [one, *draw(st.lists(JSON, min_size=extra, max_size=extra))][:arity]
    return kind, name, args


ARITY_EXAMPLES: list[list[Any]] = [[], [1], [{"reason": "x"}, 2], [None, None, None]]


def arity_examples(fn: Any) -> Any:
    """Every handler also gets 0, 1, 2 and 3 arguments, whatever hypothesis draws."""
    handlers = [("update", n) for n in UPDATE_KEYS] + [("signal", n) for n in SIGNALS]
    for kind, name in handlers + [("query", n) for n in QUERIES]:
        for args in ARITY_EXAMPLES:
            fn = example(cmd=(kind, name, args))(fn)
    return fn


async def send(handle: WorkflowHandle[Any, Any], kind: str, name: str, args: list[Any]) -> str:
    if kind == "update":
        try:
            out = await handle.execute_update(name, args=args, result_type=str)
            return f"accepted: {out}"
        except WorkflowUpdateFailedError as err:
            return f"rejected: {err.cause}"
    if kind == "query":
        try:
            await handle.query(name, args=args)
            return "answered"
        except WorkflowQueryFailedError as err:
            return f"query failed: {err}"
    await handle.signal(name, args=args)
    return "signalled"


async def workflow_task_failures(
    client: Client, workflow_id: str, run_id: str | None = None
) -> list[str]:
    """Failed workflow tasks of a run, of the runs it continued as, and of its children."""
    failures: list[str] = []
    pending: list[tuple[str, str | None]] = [(workflow_id, run_id)]
    while pending:
        wid, rid = pending.pop()
        history = await client.get_workflow_handle(wid, run_id=rid).fetch_history()
        for e in history.events:
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                attrs_f = e.workflow_task_failed_event_attributes
                # UNHANDLED_COMMAND is the server asking the worker to redo a task that
                # tried to close the run (continue-as-new) while a signal arrived: the
                # signal is then handled. Not a failure of our code.
                if attrs_f.cause == WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND:
                    continue
                failures.append(f"{wid}: {attrs_f.failure.message}")
            elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
                attrs = e.workflow_execution_continued_as_new_event_attributes
                pending.append((wid, attrs.new_execution_run_id))
            elif e.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
                ex = e.child_workflow_execution_started_event_attributes.workflow_execution
                pending.append((ex.workflow_id, ex.run_id))
    return failures


async def test_fuzzed_commands_never_fail_a_workflow_task(client: Client, task_queue: str) -> None:
    # Paused, and gated by a human decision, so that `resume` alone cannot start it.
    with FakeAnthropicServer(brain=ScriptedAgentBrain(decision_every=0)) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await _gated_session(client, task_queue)
            loop = asyncio.get_running_loop()
            outcomes: dict[str, int] = {}

            @settings(
                max_examples=60,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(cmd=commands())
            @arity_examples
            def fuzz(cmd: tuple[str, str, list[Any]]) -> None:
                kind, name, args = cmd
                # A valid abort would (correctly) end the session. `flush` takes no
                # argument and ignores any it is given: each one is a real handoff.
                if name == "abort" and valid_abort(args):
                    return
                if not _json_safe(args):
                    return
                fut = asyncio.run_coroutine_threadsafe(send(handle, kind, name, args), loop)
                out = fut.result(timeout=30)
                key = f"{kind}:{name}:{out.split(':')[0]}"
                outcomes[key] = outcomes.get(key, 0) + 1

            await asyncio.to_thread(fuzz)
            first_run = handle.first_execution_run_id
            failures = await workflow_task_failures(client, handle.id, first_run)
            assert not failures, f"failed workflow tasks: {failures[:3]}"
            # Each flush handed off (a successor, still paused and gated); nothing else ran.
            latest = client.get_workflow_handle(handle.id, result_type=SessionResult)
            for _ in range(200):
                st_ = await latest.query("status", result_type=SessionStatus)
                if st_.lifecycle in (LifecycleState.PAUSED, LifecycleState.AWAITING_DECISION):
                    break
                await asyncio.sleep(0.05)
            assert st_.lifecycle in (LifecycleState.PAUSED, LifecycleState.AWAITING_DECISION)
            flushes = outcomes.get("signal:flush:signalled", 0)
            assert (1 <= st_.generation <= flushes) if flushes else st_.generation == 0
            assert not fake.message_requests(), "the gated session must not call the model"
            assert any(k.startswith("update:") and k.endswith("rejected") for k in outcomes)

            # The session is still healthy: it completes normally.
            await latest.signal("resume")
            await latest.execute_update(
                "decide", DecideArgs(blocker_id="B-FUZZ", decision="go"), result_type=str
            )
            result = await asyncio.wait_for(latest.result(), timeout=60)
            assert result.reason == TerminationReason.TASK_COMPLETED
            assert result.project.completed_count == 4
            assert not await workflow_task_failures(client, handle.id, first_run)


async def _gated_session(client: Client, task_queue: str) -> WorkflowHandle[Any, SessionResult]:
    project = synthetic_project(4, 1)
    project.blockers.append(
        Blocker(id="B-FUZZ", type=BlockerType.HUMAN_DECISION, description="gate for the fuzzer")
    )
    return await client.start_workflow(
        "AgentSessionWorkflow",
        SessionInput(config=SessionConfig(max_generations=1000), project=project, paused=True),
        id=f"fuzz-{uuid.uuid4()}",
        task_queue=task_queue,
        result_type=SessionResult,
    )


async def test_abort_with_extra_arguments_is_dropped(client: Client, task_queue: str) -> None:
    with FakeAnthropicServer() as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await _gated_session(client, task_queue)
            try:
                await handle.signal("abort", args=[{"reason": "x"}, 2])
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        handle.execute_update("say", SayArgs(text="still there?"), result_type=str),
                        timeout=5,
                    )
                failures = await workflow_task_failures(client, handle.id)
            finally:
                await handle.terminate("test over")
    assert not failures, failures[:1]


async def _first_task_outcome(client: Client, handle: WorkflowHandle[Any, Any]) -> list[str]:
    """Wait until the first workflow task is processed; return workflow task failures."""
    done = {EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED, EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED}
    for _ in range(200):
        history = await handle.fetch_history()
        if any(e.event_type in done for e in history.events):
            break
        await asyncio.sleep(0.05)
    return await workflow_task_failures(client, handle.id)


async def _start_garbage(
    client: Client, task_queue: str, workflow: str, args: list[Any]
) -> tuple[WorkflowExecutionStatus | None, list[str]]:
    handle = await client.start_workflow(
        workflow, args=args, id=f"fuzz-in-{uuid.uuid4()}", task_queue=task_queue,
        execution_timeout=timedelta(seconds=120),
    )
    try:
        failures = await _first_task_outcome(client, handle)
        status = (await handle.describe()).status
    finally:
        with contextlib.suppress(Exception):
            await handle.terminate("test over")
    return status, failures


@pytest.mark.parametrize("workflow", ["AgentSessionWorkflow", "HandoffWorkflow"])
async def test_fuzzed_workflow_input_fails_the_workflow_not_the_task(
    client: Client, task_queue: str, workflow: str
) -> None:
    """Garbage workflow input fails the run (never a forever-retrying workflow task)."""
    model = SessionInput if workflow == "AgentSessionWorkflow" else HandoffInput
    with FakeAnthropicServer() as fake:
        async with running_worker(client, task_queue, fake.base_url):
            loop = asyncio.get_running_loop()

            @settings(max_examples=12, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(arg=JSON | near(list(model.model_fields)))
            @example(arg=5)
            @example(arg={"project": {}})
            @example(arg=[])
            def fuzz(arg: Any) -> None:
                if arg is None or not _json_safe(arg):
                    return  # null: see test_null_or_missing_input_fails_the_workflow
                fut = asyncio.run_coroutine_threadsafe(
                    _start_garbage(client, task_queue, workflow, [arg]), loop
                )
                status, failures = fut.result(timeout=30)
                assert not failures, (arg, failures[:1])
                assert status in (
                    WorkflowExecutionStatus.FAILED,
                    WorkflowExecutionStatus.COMPLETED,
                    WorkflowExecutionStatus.RUNNING,  # the input was valid
                    WorkflowExecutionStatus.TERMINATED,
                ), status

            await asyncio.to_thread(fuzz)


@pytest.mark.parametrize("workflow", ["AgentSessionWorkflow", "HandoffWorkflow"])
@pytest.mark.parametrize("args", [[None], []], ids=["null", "missing"])
async def test_null_or_missing_input_fails_the_workflow(
    client: Client, task_queue: str, workflow: str, args: list[Any]
) -> None:
    with FakeAnthropicServer() as fake:
        async with running_worker(client, task_queue, fake.base_url):
            status, failures = await _start_garbage(client, task_queue, workflow, args)
    assert not failures, failures[:1]
    assert status == WorkflowExecutionStatus.FAILED


# ---------------------------------------------------------------- pure schemas
def _message_of(err: Exception) -> str:
    text = str(err)
    assert text.strip(), f"{type(err).__name__} without a message"
    return text


SCHEMA = settings(max_examples=200, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
IMPORTER = SCHEMA


@SCHEMA
@given(data=JSON | near(list(SessionConfig.model_fields)))
def test_session_config_rejects_with_a_message(data: Any) -> None:
    try:
        cfg = SessionConfig.model_validate(data)
    except ValueError as err:
        _message_of(err)
        return
    assert cfg.warn_threshold < cfg.handoff_threshold


@SCHEMA
@given(data=JSON | near(list(ProjectState.model_fields)))
def test_project_state_rejects_with_a_message(data: Any) -> None:
    try:
        ProjectState.model_validate(data)
    except ValueError as err:
        _message_of(err)


def _orchestrator_like() -> st.SearchStrategy[dict[str, Any]]:
    task = near(["id", "title", "name", "status", "dependencies", "depends_on", "phase",
                 "estimate_h", "estimated_hours"])
    phase = near(["id", "name", "tasks"])
    return st.fixed_dictionaries(
        {},
        optional={
            "metadata": JSON | near(["project", "name", "goal"]),
            "context": JSON | near(["request", "goal", "environment"]),
            "tasks": JSON | st.lists(task, max_size=3) | st.dictionaries(st.text(max_size=5), task, max_size=3),
            "dag": JSON | st.fixed_dictionaries({"phases": JSON | st.lists(phase, max_size=3)}),
        },
    )


def _state_json_like() -> st.SearchStrategy[dict[str, Any]]:
    task = near(["id", "title", "status", "depends_on", "dependencies", "phase"])
    item = near(["id", "type", "description", "title", "status", "resolution", "decision", "rationale"])
    return st.fixed_dictionaries(
        {},
        optional={
            "progress": JSON | near(["tasks", "project", "goal", "current_phase"]),
            "tasks": JSON | st.lists(task, max_size=3),
            "completed_milestones": JSON,
            "blockers": JSON | st.lists(item, max_size=3),
            "decisions": JSON | st.lists(item, max_size=3),
            "environment": JSON,
            "project": JSON,
            "goal": JSON,
        },
    )


def _render(state: ProjectState) -> None:
    """A successfully imported project must also build, render and print."""
    ctx = HandoffContext(session_id="fuzz", generation=0, reason=TerminationReason.MANUAL_FLUSH)
    doc = build_document(state, ctx)
    payload = render_prompt(doc, count=count_tokens)
    assert payload.prompt
    assert to_markdown(doc) and doc.summary()
    again = HandoffPayload.model_validate_json(payload.model_dump_json())
    assert again.prompt == payload.prompt


def _import(fn: Any, data: dict[str, Any]) -> None:
    try:
        state = fn(data)
    except ValueError as err:
        _message_of(err)
        return
    _render(state)


@IMPORTER
@given(data=_orchestrator_like())
def test_from_orchestrator_rejects_with_a_message(data: dict[str, Any]) -> None:
    _import(from_orchestrator, data)


@IMPORTER
@given(data=_state_json_like())
def test_from_state_json_rejects_with_a_message(data: dict[str, Any]) -> None:
    _import(from_state_json, data)


@SCHEMA
@given(data=JSON | near(list(HandoffDocument.model_fields)))
def test_handoff_document_rejects_with_a_message(data: Any) -> None:
    try:
        doc = HandoffDocument.model_validate(data)
    except ValueError as err:
        _message_of(err)
        return
    assert to_markdown(doc) and doc.summary()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_in_config_are_refused(value: float) -> None:
    with pytest.raises(ValidationError):
        SessionConfig(warn_threshold=value)
