"""`handoff export`: a session as files that diff cleanly in git.

    DIR/state.json                      project state (final, or current if running)
    DIR/session-summaries/000.md        handoff document of generation 0 (to_markdown)
    DIR/session-summaries/001.md        ...

JSON has sorted keys and a two-space indent; generation numbers are zero-padded so
files list in order. The handoff payload of generation g is read from history: the
input of the run that g handed to (`SessionInput.handoff`), or the final result's
`final_handoff` (abort, guards).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowQueryFailedError
from temporalio.service import RPCError

from temporal_handoff.documents.markdown import to_markdown
from temporal_handoff.schemas.handoff import HandoffPayload
from temporal_handoff.schemas.project import ProjectState
from temporal_handoff.schemas.session import SessionInput, SessionResult


class RunRecord(BaseModel):
    generation: int
    run_id: str
    input: SessionInput
    result: SessionResult | None = None
    status: str = "RUNNING"
    previous_run_id: str = ""


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
    async for event in handle.fetch_history_events():
        et = event.event_type
        if et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
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
        status=status, previous_run_id=prev,
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
        _write(path, to_markdown(payload.document))
        written.append(path)
    return written
