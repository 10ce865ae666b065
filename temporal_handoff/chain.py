"""Read a session's handoff chain back out of Temporal: one row per generation (run).

Used by `handoff history`, the demo's closing table and `handoff export`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from temporal_handoff.schemas.handoff import RunRef
from temporal_handoff.schemas.model_io import ModelResponse
from temporal_handoff.schemas.session import SessionInput, SessionResult
from temporal_handoff.schemas.tokens import TokenUsage


class RunSummary(BaseModel):
    generation: int
    run_id: str
    workflow_id: str = ""
    """The session (workflow id) this run belongs to; a resumed session's chain
    continues its predecessor's, under another id."""
    start: datetime | None = None
    end: datetime | None = None
    status: str = ""
    turns: int = 0
    """call_model activities completed in this run."""
    model_attempts: int = 0
    """call_model attempts, retries included."""
    usage: TokenUsage = TokenUsage()
    """Sum of the usage returned by this run's completed model calls."""
    tokens_at_handoff: int | None = None
    """Context occupancy when this run handed off (or ended)."""
    payload_tokens: int | None = None
    """Tokens of the continuation prompt this run handed to its successor."""
    termination: str = ""
    handoff_child: str | None = None
    handoff_summary: str = ""
    previous_run_id: str = ""
    resumed_from: RunRef | None = None
    """For the first run of a session started with `--resume-from`: the predecessor
    session's last run."""


async def _decode(client: Client, payloads: Any, kind: type) -> Any:
    values = await client.data_converter.decode(payloads, [kind])
    return values[0]


async def run_input(client: Client, workflow_id: str, run_id: str) -> SessionInput | None:
    """The `SessionInput` a run started with (its handoff payload and project state)."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            attrs = event.workflow_execution_started_event_attributes
            inp: SessionInput = await _decode(client, attrs.input.payloads, SessionInput)
            return inp
        break
    return None


async def run_summary(client: Client, workflow_id: str, run_id: str) -> RunSummary:
    """Summarise one run from its history."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    row = RunSummary(generation=-1, run_id=run_id, workflow_id=workflow_id)
    scheduled: dict[int, str] = {}
    async for event in handle.fetch_history_events():
        et = event.event_type
        if et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            attrs = event.workflow_execution_started_event_attributes
            inp: SessionInput = await _decode(client, attrs.input.payloads, SessionInput)
            row.generation = inp.generation
            row.previous_run_id = attrs.continued_execution_run_id
            if not row.previous_run_id:
                row.resumed_from = next(
                    (r for r in reversed(inp.lineage) if r.workflow_id != workflow_id), None
                )
            row.start = event.event_time.ToDatetime()
        elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            scheduled[event.event_id] = name
        elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs_s = event.activity_task_started_event_attributes
            if scheduled.get(attrs_s.scheduled_event_id) == "call_model":
                row.model_attempts += attrs_s.attempt
        elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done = event.activity_task_completed_event_attributes
            if scheduled.get(done.scheduled_event_id) == "call_model":
                resp: ModelResponse = await _decode(client, done.result.payloads, ModelResponse)
                if not resp.preflight_refused:
                    row.turns += 1
                    row.usage = row.usage + resp.usage
        elif et == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            row.handoff_child = (
                event.start_child_workflow_execution_initiated_event_attributes.workflow_id
            )
        elif et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            attrs_c = event.workflow_execution_continued_as_new_event_attributes
            nxt: SessionInput = await _decode(client, attrs_c.input.payloads, SessionInput)
            row.end = event.event_time.ToDatetime()
            row.status = "CONTINUED_AS_NEW"
            row.termination = nxt.handoff_reason.value if nxt.handoff_reason else "HANDOFF"
            if nxt.ledger is not None:
                row.tokens_at_handoff = nxt.ledger.occupancy
            if nxt.handoff is not None:
                row.payload_tokens = nxt.handoff.prompt_tokens
                row.handoff_summary = nxt.handoff.summary()
        elif et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            attrs_d = event.workflow_execution_completed_event_attributes
            res: SessionResult = await _decode(client, attrs_d.result.payloads, SessionResult)
            row.end = event.event_time.ToDatetime()
            row.status = "COMPLETED"
            row.termination = res.reason.value
            row.tokens_at_handoff = res.ledger.occupancy
            if res.final_handoff is not None:
                row.payload_tokens = res.final_handoff.prompt_tokens
        elif et in (
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT,
        ):
            row.end = event.event_time.ToDatetime()
            row.status = EventType.Name(et).removeprefix("EVENT_TYPE_WORKFLOW_EXECUTION_")
            row.termination = row.status
    if not row.status:
        row.status = "RUNNING"
    return row


async def session_chain(
    client: Client, workflow_id: str, *, follow_resumes: bool = False
) -> list[RunSummary]:
    """Every run of a session (all generations), oldest first.

    Walks back from the latest run through each start event's
    `continued_execution_run_id`, so it does not depend on visibility indexing. With
    `follow_resumes`, a session started with `--resume-from` is preceded by its
    predecessor's runs (and theirs), under their own workflow ids; a predecessor no
    longer in Temporal (past retention) is a row per lineage entry with status
    "UNAVAILABLE".
    """
    desc = await client.get_workflow_handle(workflow_id).describe()
    rows: list[RunSummary] = []
    wid, run_id = workflow_id, desc.run_id
    seen: set[tuple[str, str]] = set()
    while run_id and (wid, run_id) not in seen:
        seen.add((wid, run_id))
        try:
            row = await run_summary(client, wid, run_id)
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND or wid == workflow_id:
                raise
            rows += await _unavailable(client, rows[-1])
            break
        rows.append(row)
        run_id = row.previous_run_id
        if not run_id and follow_resumes and row.resumed_from is not None:
            wid, run_id = row.resumed_from.workflow_id, row.resumed_from.run_id
    return rows[::-1]


async def _unavailable(client: Client, first: RunSummary) -> list[RunSummary]:
    """Rows (newest first) for the predecessors' runs that Temporal no longer has,
    from the lineage in the first run's input."""
    handle = client.get_workflow_handle(first.workflow_id, run_id=first.run_id)
    async for event in handle.fetch_history_events():
        attrs = event.workflow_execution_started_event_attributes
        inp: SessionInput = await _decode(client, attrs.input.payloads, SessionInput)
        return [
            RunSummary(
                generation=r.generation, run_id=r.run_id, workflow_id=r.workflow_id,
                status="UNAVAILABLE", termination="UNAVAILABLE",
            )
            for r in reversed(inp.lineage)
            if r.workflow_id != first.workflow_id
        ]
    return []
