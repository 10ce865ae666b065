"""`handoff export`: a session as files that diff cleanly in git.

    DIR/state.json                      project state (final, or current if running)
    DIR/session-summaries/000.md        handoff document of generation 0 (to_markdown)
    DIR/session-summaries/001.md        ...

With `--layout context-protocol` or `--layout orchestrator` the files are those of a
seed format instead (written by the pure functions of :mod:`temporal_handoff.seeds.layouts`
from the runs gathered here).

JSON has sorted keys and a two-space indent; generation numbers are zero-padded so
files list in order. The handoff payload of generation g is read from history: the
input of the run that g handed to (`SessionInput.handoff`), or the final result's
`final_handoff` (abort, guards).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowQueryFailedError
from temporalio.service import RPCError

from temporal_handoff.schemas.config import CompressionLevel
from temporal_handoff.schemas.handoff import HandoffContext, HandoffPayload, build_document
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.project import ProjectState
from temporal_handoff.schemas.session import SessionInput, SessionResult
from temporal_handoff.schemas.tokens import TokenLedger
from temporal_handoff.seeds.layouts import Generation, context_protocol_files, orchestrator_files


class RunRecord(BaseModel):
    generation: int
    run_id: str
    input: SessionInput
    result: SessionResult | None = None
    status: str = "RUNNING"
    previous_run_id: str = ""
    started_at: datetime | None = None
    closed_at: datetime | None = None


async def _decode(client: Client, payloads: Any, kind: type) -> Any:
    (value,) = await client.data_converter.decode(payloads, [kind])
    return value


async def read_run(client: Client, workflow_id: str, run_id: str) -> RunRecord:
    """A run's input and (if it completed) result, from its history."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    inp: SessionInput | None = None
    prev = ""
    result: SessionResult | None = None
    status = "RUNNING"
    started: datetime | None = None
    closed: datetime | None = None
    async for event in handle.fetch_history_events():
        et = event.event_type
        closed = event.event_time.ToDatetime(tzinfo=UTC)
        if et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            started = closed
            attrs = event.workflow_execution_started_event_attributes
            inp = await _decode(client, attrs.input.payloads, SessionInput)
            prev = attrs.continued_execution_run_id
        elif et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            attrs_d = event.workflow_execution_completed_event_attributes
            result = await _decode(client, attrs_d.result.payloads, SessionResult)
            status = "COMPLETED"
        elif et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            status = "CONTINUED_AS_NEW"
        elif et in (
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT,
        ):
            status = EventType.Name(et).removeprefix("EVENT_TYPE_WORKFLOW_EXECUTION_")
    if inp is None:
        raise ValueError(f"run {run_id} of {workflow_id} has no start event")
    return RunRecord(
        generation=inp.generation, run_id=run_id, input=inp, result=result,
        status=status, previous_run_id=prev, started_at=started,
        closed_at=closed if status != "RUNNING" else None,
    )


async def read_runs(client: Client, workflow_id: str) -> list[RunRecord]:
    """Every run of a session, oldest first."""
    desc = await client.get_workflow_handle(workflow_id).describe()
    runs: list[RunRecord] = []
    run_id = desc.run_id
    while run_id:
        run = await read_run(client, workflow_id, run_id)
        runs.append(run)
        run_id = run.previous_run_id
    return runs[::-1]


async def handoff_payloads(
    client: Client, workflow_id: str, runs: list[RunRecord]
) -> dict[int, HandoffPayload]:
    """Handoff payload (with its document) per generation that produced one.

    A successor's input carries only the prompt (`HandoffPayload.seed`), so the
    document is read from the handoff child's result, `<id>-handoff-<generation>`.
    """
    out: dict[int, HandoffPayload] = {}
    for run in runs:
        seed = run.input.handoff
        if seed is not None:
            gen = run.generation - 1
            if seed.document is None:
                child = client.get_workflow_handle(
                    f"{workflow_id}-handoff-{gen}", result_type=HandoffPayload
                )
                try:
                    seed = await child.result()
                except (RPCError, WorkflowFailureError):
                    seed = None
            if seed is not None and seed.document is not None:
                out[gen] = seed
        if run.result is not None and run.result.final_handoff is not None:
            final = run.result.final_handoff
            if final.document is not None:
                out[final.document.agent.generation] = final
    return dict(sorted(out.items()))


def stable_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


async def current_state(client: Client, workflow_id: str, runs: list[RunRecord]) -> ProjectState:
    """The final state of a finished session, else the live state (query `project`).

    If the running session cannot be queried (no worker), the state its current
    generation started from is used.
    """
    last = runs[-1]
    if last.result is not None:
        return last.result.project
    if last.status == "RUNNING":
        handle = client.get_workflow_handle(workflow_id)
        try:
            data = await asyncio.wait_for(handle.query("project", result_type=dict), timeout=10)
            return ProjectState.model_validate(data)
        except (RPCError, WorkflowQueryFailedError, TimeoutError):
            pass
    return last.input.project


def _write(path: Path, text: str) -> bool:
    """Write only if the content changed (keeps mtimes of unchanged files)."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.write_text(text, encoding="utf-8")
    return True


async def export_session(client: Client, workflow_id: str, out_dir: Path) -> list[Path]:
    """Write `state.json` and `session-summaries/<generation>.md`; return the paths."""
    runs = await read_runs(client, workflow_id)
    state = await current_state(client, workflow_id, runs)
    out_dir = Path(out_dir)
    summaries = out_dir / "session-summaries"
    summaries.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "state.json"]
    _write(written[0], stable_json(state.model_dump(mode="json")))
    for gen, payload in (await handoff_payloads(client, workflow_id, runs)).items():
        path = summaries / f"{gen:03d}.md"
        assert payload.document is not None
        _write(path, payload.document.to_markdown())
        written.append(path)
    return written


def _write_files(out_dir: Path, files: dict[str, str]) -> list[Path]:
    written = []
    for rel, text in files.items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, text)
        written.append(path)
    return written


async def export_layout(
    client: Client, workflow_id: str, out_dir: Path, layout: str,
    level: CompressionLevel = CompressionLevel.STANDARD,
) -> list[Path]:
    """Write a session in a seed layout (`context-protocol` or `orchestrator`)."""
    runs = await read_runs(client, workflow_id)
    state = await current_state(client, workflow_id, runs)
    payloads = await handoff_payloads(client, workflow_id, runs)
    generations = []
    for i, run in enumerate(runs):
        end = (
            runs[i + 1].input.project if i + 1 < len(runs)
            else run.result.project if run.result is not None else state
        )
        payload = payloads.get(run.generation)
        doc = payload.document if payload is not None else None
        ended = (
            run.result.reason.value if run.result is not None
            else doc.agent.reason.value if doc is not None
            else "" if run.status == "RUNNING" else run.status
        )
        generations.append(
            Generation(
                generation=run.generation, start=run.input.project, end=end,
                started_at=run.started_at, closed_at=run.closed_at, ended=ended,
                context_fraction=doc.tokens.usage_fraction if doc is not None
                else run.result.ledger.occupancy / run.result.ledger.context_window
                if run.result is not None else None,
                handoff_id=f"{workflow_id}-handoff-{run.generation}" if i + 1 < len(runs) else "",
                handoff_tokens=payload.prompt_tokens if payload is not None else 0,
            )
        )
    last = runs[-1]
    updated = last.closed_at or datetime.now(UTC)
    if layout == "context-protocol":
        files = context_protocol_files(state, generations, updated_at=updated)
    else:
        ctx = HandoffContext(
            session_id=workflow_id, generation=last.generation,
            reason=last.result.reason if last.result else TerminationReason.MANUAL_FLUSH,
            ledger=last.result.ledger if last.result else TokenLedger(),
        )
        files = orchestrator_files(state, generations, build_document(state, ctx), level)
    return _write_files(Path(out_dir), files)
