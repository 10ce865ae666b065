"""`recall`: read a predecessor generation's state back out of Temporal.

The compact handoff leaves details out; nothing is lost because every generation's
input (the full project state) is in its run's history. This activity fetches that
history with the worker's client and returns the requested section as text.
"""

from __future__ import annotations

import json

from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from temporal_handoff.runs import RunUnreadable, read_run_input
from temporal_handoff.schemas.events import RecallRequest
from temporal_handoff.schemas.project import ProjectState
from temporal_handoff.schemas.session import SessionInput

SECTIONS = (
    "tasks", "decisions", "blockers", "files", "todos", "errors", "environment",
    "human_messages", "milestones", "rejected_alternatives", "notes", "questions",
)


def section_text(state: ProjectState, section: str, ids: list[str], max_chars: int) -> str:
    """JSON text of one section of a project state, optionally filtered by ids (a
    record's id, task id, blocker id or path; for texts such as todos, an id they
    mention), so a successor can fetch one item without flooding its context."""
    if section not in SECTIONS:
        raise ValueError(f"unknown section {section!r}; choose one of {', '.join(SECTIONS)}")
    data = state.model_dump(mode="json")[section]
    if ids:
        wanted = set(ids)
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k in wanted}
        elif isinstance(data, list):
            data = [x for x in data if _matches(x, wanted)]
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    if len(text) > max_chars:
        text = text[:max_chars] + f"… ({len(text) - max_chars} more chars; narrow with ids)"
    return text


_ID_KEYS = ("id", "task_id", "blocker_id", "path")
"""Keys by which a list item is selected: errors by task, files by path."""


def _matches(item: object, wanted: set[str]) -> bool:
    """Whether a list item is one of `wanted`: a record by one of its id keys, a text
    (a todo, a human message) when it mentions one of them."""
    if isinstance(item, dict):
        return any(item.get(k) in wanted for k in _ID_KEYS)
    if isinstance(item, str):
        return any(w in item for w in wanted)
    return False


async def load_generation_input(session_id: str, run_id: str) -> SessionInput:
    """The `SessionInput` a run started with, read with the worker's client (its
    content store and codec) by :func:`temporal_handoff.runs.read_run_input`.

    Raises:
        ApplicationError: the run is gone (past retention) or has no start event.
    """
    try:
        return await read_run_input(activity.client(), session_id, run_id)
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        raise ApplicationError(
            f"run {run_id} of {session_id} is no longer in Temporal (past retention?)",
            type="RecallNotFound",
            non_retryable=True,
        ) from None
    except RunUnreadable as err:
        raise ApplicationError(str(err), non_retryable=True) from None


@activity.defn(name="recall")
async def recall(req: RecallRequest) -> str:
    """The state as generation `req.generation` left it (the next run's input)."""
    runs = {r.generation: r for r in req.lineage}
    ref = runs.get(req.generation + 1) or runs.get(req.generation)
    if ref is None:
        known = ", ".join(str(g) for g in sorted(runs)) or "none"
        raise ApplicationError(
            f"no generation {req.generation} in this session (known: {known})",
            type="RecallNotFound",
            non_retryable=True,
        )
    # A resumed session's lineage continues its predecessor's: those runs belong to
    # another workflow id.
    inp = await load_generation_input(ref.workflow_id or req.session_id, ref.run_id)
    try:
        return section_text(inp.project, req.section, req.ids, req.max_chars)
    except ValueError as err:
        raise ApplicationError(str(err), type="RecallBadSection", non_retryable=True) from None
