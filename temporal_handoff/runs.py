"""The one reader of a session's chain of runs from Temporal history.

A session is a chain of runs: each continue-as-new starts the next generation under
the same workflow id, and a session started with `--resume-from` continues another
session's chain under a new id. Each run may start a handoff child
(`HandoffWorkflow`) whose result is the handoff payload with its document.

Everything that reads that chain back — `handoff history`, `export`, `plot`,
`replay`, `--resume-from`, the demo's table and the `recall` activity — reads it
here, decoded with the client's data converter: the same content store and codec as
the workers (a client built by :func:`temporal_handoff.cli.common.connect`, or the
worker's own client inside an activity). Nothing here interprets what it reads for a
report; the readers' callers do (rows in :mod:`temporal_handoff.chain`, usage in
:mod:`temporal_handoff.plotting`, files in :mod:`temporal_handoff.export`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.client import Client, WorkflowHistory
from temporalio.service import RPCError, RPCStatusCode

from temporal_handoff.agent_note import NOTE_ACTIVITY_ID
from temporal_handoff.schemas.events import HandoffInput
from temporal_handoff.schemas.handoff import HandoffPayload, RunRef
from temporal_handoff.schemas.model_io import ModelInfoResult, ModelRequest, ModelResponse
from temporal_handoff.schemas.project import ProjectState
from temporal_handoff.schemas.session import SessionInput, SessionResult

__all__ = [
    "Chain",
    "HandoffRun",
    "Run",
    "RunUnreadable",
    "read_chain",
    "read_handoff",
    "read_run",
    "read_run_input",
    "read_runs",
]

_CLOSED = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: "COMPLETED",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW: "CONTINUED_AS_NEW",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: "FAILED",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED: "TERMINATED",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED: "CANCELED",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT: "TIMED_OUT",
}
_NOTE = "call_model:handoff-note"
"""How `read_run` files the handoff note's `call_model` (not a conversation turn)."""
_WORKFLOW_ERROR = "SessionWorkflowError"
"""Failure type whose details carry the project state (a workflow bug)."""


class RunUnreadable(ValueError):
    """A run's history has no start event (or is not a session's)."""


@dataclass
class Run:
    """One run (generation) of a session, decoded from its history."""

    workflow_id: str
    run_id: str
    input: SessionInput
    """What the run started with (its generation, config, project state, handoff seed)."""
    history: WorkflowHistory
    previous_run_id: str = ""
    """The run this one continued (continue-as-new), "" for a session's first run."""
    start: datetime | None = None
    end: datetime | None = None
    status: str = "RUNNING"
    """RUNNING, CONTINUED_AS_NEW, COMPLETED, FAILED, TERMINATED, CANCELED or TIMED_OUT."""
    next_input: SessionInput | None = None
    """The successor's input, when the run continued as new."""
    result: SessionResult | None = None
    """The session's result, when the run completed."""
    failure: Failure | None = None
    """The failure, when the run failed."""
    failure_state: ProjectState | None = None
    """The project state a `SessionWorkflowError` failure carries (a workflow bug)."""
    model_calls: list[ModelResponse] = field(default_factory=list)
    """Results of the conversation's completed `call_model` activities, in order (empty
    unless read with `calls=True`); the handoff note's turn is in `note_calls`."""
    model_attempts: int = 0
    """The conversation's `call_model` attempts, retries included."""
    note_calls: list[ModelResponse] = field(default_factory=list)
    """The handoff note's completed `call_model` (activity id `handoff-note`), if any."""
    last_model_request: ModelRequest | None = None
    """The input of the run's last `call_model`: the generation's conversation up to
    that call (read with `calls=True`)."""
    last_model_reply: ModelResponse | None = None
    """That call's result, if it completed."""
    model_info: ModelInfoResult | None = None
    """The `model_info` activity's answer (the window when the config leaves it out)."""
    handoff_child: str | None = None
    """Workflow id of the last handoff child this run started."""

    @property
    def generation(self) -> int:
        return self.input.generation

    @property
    def resumed_from(self) -> RunRef | None:
        """For the first run of a session started with `--resume-from`: the
        predecessor session's last run."""
        if self.previous_run_id:
            return None
        return next(
            (r for r in reversed(self.input.lineage) if r.workflow_id != self.workflow_id), None
        )

    @property
    def ended_by(self) -> str:
        """Why the run ended: the handoff reason, the session's termination reason, or
        the closing status (RUNNING while open)."""
        if self.next_input is not None:
            reason = self.next_input.handoff_reason
            return reason.value if reason else "HANDOFF"
        if self.result is not None:
            return self.result.reason.value
        return self.status

    @property
    def turns(self) -> list[ModelResponse]:
        """The model calls that were made (a pre-flight refusal sent nothing)."""
        return [c for c in self.model_calls if not c.preflight_refused]

    @property
    def failure_text(self) -> str:
        """The failure's messages, outermost first ("" unless the run failed)."""
        parts = []
        failure = self.failure
        while failure is not None and failure.message:
            parts.append(failure.message)
            failure = failure.cause if failure.HasField("cause") else None
        return " <- ".join(parts)


@dataclass
class HandoffRun:
    """A handoff child (`HandoffWorkflow`), decoded from its history."""

    workflow_id: str
    run_id: str
    input: HandoffInput | None
    history: WorkflowHistory
    status: str = "RUNNING"
    result: HandoffPayload | None = None
    """The handoff payload with its document, when the child completed."""


@dataclass
class Chain:
    """Every run of a session, oldest first."""

    runs: list[Run]
    unavailable: list[RunRef] = field(default_factory=list)
    """Predecessor sessions' runs (`--resume-from`) that Temporal no longer has (past
    retention), oldest first; they come before `runs`."""


async def _decode(client: Client, payloads: Any, kind: type) -> Any:
    (value,) = await client.data_converter.decode(payloads, [kind])
    return value


async def read_run(client: Client, workflow_id: str, run_id: str, *, calls: bool = True) -> Run:
    """One run of a session, from its history.

    Args:
        calls: decode the results of its model calls (`Run.model_calls`); reading a
            closed session to resume it needs only its input and how it ended.

    Raises:
        RunUnreadable: the history has no start event.
        temporalio.service.RPCError: the run is unknown (NOT_FOUND) or unreachable.
    """
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    events = history.events
    if not events or events[0].event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
        raise RunUnreadable(f"run {run_id} of {workflow_id!r} has no start event")
    started = events[0].workflow_execution_started_event_attributes
    run = Run(
        workflow_id=workflow_id,
        run_id=run_id,
        input=await _decode(client, started.input.payloads, SessionInput),
        history=history,
        previous_run_id=started.continued_execution_run_id,
        start=events[0].event_time.ToDatetime(),
    )
    scheduled: dict[int, str] = {}
    last_call: tuple[int, Any] | None = None
    """The last `call_model` scheduled: its event id and input payloads."""
    for event in events[1:]:
        et = event.event_type
        if et == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs_s = event.activity_task_scheduled_event_attributes
            scheduled[event.event_id] = attrs_s.activity_type.name
            if attrs_s.activity_type.name == "call_model" and attrs_s.activity_id == NOTE_ACTIVITY_ID:
                # The handoff note: not a turn of the conversation.
                scheduled[event.event_id] = _NOTE
            elif attrs_s.activity_type.name == "call_model":
                last_call = (event.event_id, attrs_s.input.payloads)
                run.last_model_reply = None
        elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attempt = event.activity_task_started_event_attributes
            if scheduled.get(attempt.scheduled_event_id) == "call_model":
                run.model_attempts += attempt.attempt
        elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done = event.activity_task_completed_event_attributes
            kind = scheduled.get(done.scheduled_event_id)
            if kind == _NOTE and calls:
                run.note_calls.append(await _decode(client, done.result.payloads, ModelResponse))
            elif kind == "call_model" and calls:
                run.model_calls.append(await _decode(client, done.result.payloads, ModelResponse))
                if last_call is not None and done.scheduled_event_id == last_call[0]:
                    run.last_model_reply = run.model_calls[-1]
            elif kind == "model_info" and calls:
                run.model_info = await _decode(client, done.result.payloads, ModelInfoResult)
        elif et == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            run.handoff_child = event.start_child_workflow_execution_initiated_event_attributes.workflow_id
        elif et in _CLOSED:
            run.status = _CLOSED[et]
            run.end = event.event_time.ToDatetime()
            await _read_close(client, run, event)
    if calls and last_call is not None:
        run.last_model_request = await _decode(client, last_call[1], ModelRequest)
    return run


async def _read_close(client: Client, run: Run, event: Any) -> None:
    et = event.event_type
    if et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
        attrs = event.workflow_execution_continued_as_new_event_attributes
        run.next_input = await _decode(client, attrs.input.payloads, SessionInput)
    elif et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
        attrs = event.workflow_execution_completed_event_attributes
        run.result = await _decode(client, attrs.result.payloads, SessionResult)
    elif et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
        run.failure = event.workflow_execution_failed_event_attributes.failure
        info = run.failure.application_failure_info
        if info.type == _WORKFLOW_ERROR and info.details.payloads:
            try:
                data = await _decode(client, info.details.payloads, dict)
                run.failure_state = ProjectState.model_validate(data)
            except Exception:  # an older shape, an unreadable detail: best effort only,
                run.failure_state = None  # the caller falls back to the run's input


async def read_run_input(client: Client, workflow_id: str, run_id: str) -> SessionInput:
    """Only what a run started with (reads the first event, not the whole history).

    Raises:
        RunUnreadable: the history has no start event.
        temporalio.service.RPCError: the run is unknown (NOT_FOUND) or unreachable.
    """
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            value: SessionInput = await _decode(client, payloads, SessionInput)
            return value
        break
    raise RunUnreadable(f"run {run_id} of {workflow_id!r} has no start event")


async def read_chain(
    client: Client, workflow_id: str, *, follow_resumes: bool = False, calls: bool = True
) -> Chain:
    """Every run of a session (all generations), oldest first.

    Walks back from the latest run through each start event's
    `continued_execution_run_id`, so it does not depend on visibility indexing. With
    `follow_resumes`, a session started with `--resume-from` is preceded by its
    predecessor's runs (and theirs), under their own workflow ids; predecessor runs no
    longer in Temporal are listed in `Chain.unavailable` from the lineage.

    Raises:
        temporalio.service.RPCError: `workflow_id` is unknown (NOT_FOUND) or the
            server is unreachable.
    """
    desc = await client.get_workflow_handle(workflow_id).describe()
    runs: list[Run] = []
    unavailable: list[RunRef] = []
    wid, run_id = workflow_id, desc.run_id
    seen: set[tuple[str, str]] = set()
    while run_id and (wid, run_id) not in seen:
        seen.add((wid, run_id))
        try:
            run = await read_run(client, wid, run_id, calls=calls)
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND or wid == workflow_id:
                raise
            first = runs[-1]
            unavailable = [r for r in first.input.lineage if r.workflow_id != first.workflow_id]
            break
        runs.append(run)
        run_id = run.previous_run_id
        if not run_id and follow_resumes and run.resumed_from is not None:
            wid, run_id = run.resumed_from.workflow_id, run.resumed_from.run_id
    return Chain(runs=runs[::-1], unavailable=unavailable)


async def read_runs(client: Client, workflow_id: str, *, calls: bool = True) -> list[Run]:
    """Every run of one session (this workflow id only), oldest first."""
    return (await read_chain(client, workflow_id, calls=calls)).runs


async def read_handoff(client: Client, child_id: str) -> HandoffRun | None:
    """A handoff child's input and result, from its history; None when Temporal no
    longer has it (past retention)."""
    try:
        history = await client.get_workflow_handle(child_id).fetch_history()
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        return None
    events = history.events
    if not events or events[0].event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
        raise RunUnreadable(f"handoff child {child_id!r} has no start event")
    started = events[0].workflow_execution_started_event_attributes
    child = HandoffRun(
        workflow_id=child_id,
        run_id=history.run_id,
        input=(
            await _decode(client, started.input.payloads, HandoffInput)
            if started.input.payloads else None
        ),
        history=history,
    )
    last = events[-1]
    if last.event_type in _CLOSED:
        child.status = _CLOSED[last.event_type]
    if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
        attrs = last.workflow_execution_completed_event_attributes
        child.result = await _decode(client, attrs.result.payloads, HandoffPayload)
    return child
