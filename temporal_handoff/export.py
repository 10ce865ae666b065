"""`handoff export`: a session as files that diff cleanly in git.

    DIR/state.json                      project state (final, or current if running)
    DIR/session-summaries/000.md        handoff document of generation 0 (to_markdown)
    DIR/session-summaries/001.md        ...

JSON has sorted keys and a two-space indent; generation numbers are zero-padded so
files list in order. The handoff payload of generation g is read from history (by
:mod:`temporal_handoff.runs`): the result of the handoff child generation g started,
or the final result's `final_handoff` (abort, guards).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError

from temporal_handoff.documents.markdown import to_markdown
from temporal_handoff.runs import Run, read_handoff, read_runs
from temporal_handoff.schemas.handoff import HandoffPayload
from temporal_handoff.schemas.project import ProjectState


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
