"""`handoff export`: a session as files that diff cleanly in git.

    DIR/state.json                      project state (final, or current if running)
    DIR/session-summaries/000.md        handoff document of generation 0 (to_markdown)
    DIR/session-summaries/001.md        ...

With `--layout context-protocol` or `--layout orchestrator` the files are those of a
seed format instead, written by the pure functions of :mod:`temporal_handoff.seeds.layouts`
from the runs gathered here.

JSON has sorted keys and a two-space indent; generation numbers are zero-padded so
files list in order. The handoff payload of generation g is read from history (by
:mod:`temporal_handoff.runs`): the result of the handoff child generation g started,
or the final result's `final_handoff` (abort, guards).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError

from temporal_handoff.documents.build import build_document
from temporal_handoff.documents.markdown import to_markdown
from temporal_handoff.runs import Run, read_handoff, read_runs
from temporal_handoff.schemas.config import CompressionLevel
from temporal_handoff.schemas.handoff import HandoffContext, HandoffPayload
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.project import ProjectState
from temporal_handoff.schemas.tokens import TokenLedger
from temporal_handoff.seeds.layouts import Generation, context_protocol_files, orchestrator_files


async def handoff_payloads(client: Client, runs: list[Run]) -> dict[int, HandoffPayload]:
    """Handoff payload (with its document) per generation that produced one.

    A successor's input carries only the prompt (`HandoffPayload.seed`), so the
    document is read from the result of the handoff child the predecessor run started.
    """
    out: dict[int, HandoffPayload] = {}
    for prev, run in zip([None, *runs], runs, strict=False):
        seed = run.input.handoff
        if seed is not None:
            gen = run.generation - 1
            if seed.document is None:
                child = None
                if prev is not None and prev.handoff_child:
                    child = await read_handoff(client, prev.handoff_child)
                seed = child.result if child is not None else None
            if seed is not None and seed.document is not None:
                out[gen] = seed
        if run.result is not None and run.result.final_handoff is not None:
            final = run.result.final_handoff
            if final.document is not None:
                out[final.document.agent.generation] = final
    return dict(sorted(out.items()))


def stable_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


async def current_state(client: Client, workflow_id: str, runs: list[Run]) -> ProjectState:
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
    runs = await read_runs(client, workflow_id, calls=False)
    state = await current_state(client, workflow_id, runs)
    out_dir = Path(out_dir)
    summaries = out_dir / "session-summaries"
    summaries.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "state.json"]
    _write(written[0], stable_json(state.model_dump(mode="json")))
    for gen, payload in (await handoff_payloads(client, runs)).items():
        path = summaries / f"{gen:03d}.md"
        assert payload.document is not None
        _write(path, to_markdown(payload.document))
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


def _generations(
    runs: list[Run], state: ProjectState, payloads: dict[int, HandoffPayload]
) -> list[Generation]:
    """One `Generation` per run: the state it started from and the one it left."""
    out = []
    for run in runs:
        end = (
            run.next_input.project if run.next_input is not None
            else run.result.project if run.result is not None
            else state
        )
        payload = payloads.get(run.generation)
        doc = payload.document if payload is not None else None
        fraction = (
            doc.tokens.usage_fraction if doc is not None
            else run.result.ledger.occupancy / run.result.ledger.context_window
            if run.result is not None else None
        )
        handed_off = run.next_input is not None and run.handoff_child is not None
        out.append(
            Generation(
                generation=run.generation, start=run.input.project, end=end,
                started_at=run.start, closed_at=run.end,
                ended="" if run.status == "RUNNING" else run.ended_by,
                context_fraction=fraction,
                handoff_id=(run.handoff_child or "") if handed_off else "",
                handoff_tokens=payload.prompt_tokens if payload is not None else 0,
            )
        )
    return out


async def export_layout(
    client: Client, workflow_id: str, out_dir: Path, layout: str,
    level: CompressionLevel = CompressionLevel.STANDARD,
) -> list[Path]:
    """Write a session in a seed layout (`context-protocol` or `orchestrator`)."""
    runs = await read_runs(client, workflow_id, calls=False)
    state = await current_state(client, workflow_id, runs)
    generations = _generations(runs, state, await handoff_payloads(client, runs))
    last = runs[-1]
    if layout == "context-protocol":
        updated = last.end or datetime.now(UTC)
        files = context_protocol_files(state, generations, updated_at=updated)
    else:
        ctx = HandoffContext(
            session_id=workflow_id, generation=last.generation,
            reason=last.result.reason if last.result else TerminationReason.MANUAL_FLUSH,
            ledger=last.result.ledger if last.result else TokenLedger(),
        )
        files = orchestrator_files(state, generations, build_document(state, ctx), level)
    return _write_files(Path(out_dir), files)
