"""The context protocol's `state.json` as a `ProjectState`."""

from __future__ import annotations

from typing import Any

from temporal_handoff.schemas.project import Blocker, BlockerType, Decision, ProjectState, Task
from temporal_handoff.seeds._fields import _dict, _env, _import_task, _list, _raw_tasks, _text


def from_state_json(data: dict[str, Any]) -> ProjectState:
    """Import a ``state.json``: ``progress``/``completed_milestones``/``blockers``/
    ``decisions``/``environment`` (plus optional ``tasks``).

    Raises:
        ValueError: malformed input; the message names the offending field.
    """
    data = _dict(data, "state.json")
    progress = _dict(data.get("progress"), "progress")
    raw_tasks = data.get("tasks") if data.get("tasks") is not None else progress.get("tasks")
    tasks: dict[str, Task] = {}
    for i, raw in enumerate(_raw_tasks(raw_tasks, "tasks")):
        task = _import_task(raw, f"tasks[{i}]", "")
        tasks[task.id] = task
    blockers = []
    for i, raw_b in enumerate(_list(data.get("blockers"), "blockers")):
        b = _dict(raw_b, f"blockers[{i}]")
        kind = _text(b.get("type"), f"blockers[{i}].type")
        blockers.append(
            Blocker(
                id=_text(b.get("id"), f"blockers[{i}].id") or f"B{i + 1:04d}",
                type=BlockerType(kind)
                if kind in BlockerType._value2member_map_ else BlockerType.TECHNICAL,
                description=_text(b.get("description") or b.get("title"), f"blockers[{i}]"),
                status="resolved" if b.get("status") == "resolved" else "open",
                resolution=_text(b.get("resolution"), f"blockers[{i}].resolution"),
            )
        )
    decisions = []
    for i, raw_d in enumerate(_list(data.get("decisions"), "decisions")):
        d = _dict(raw_d, f"decisions[{i}]")
        decisions.append(
            Decision(
                id=_text(d.get("id"), f"decisions[{i}].id") or f"D{i + 1:04d}",
                title=_text(d.get("title") or d.get("decision"), f"decisions[{i}].title"),
                rationale=_text(d.get("rationale"), f"decisions[{i}].rationale"),
            )
        )
    phase = progress.get("current_phase")
    return ProjectState(
        name=_text(data.get("project") or progress.get("project"), "project") or "project",
        goal=_text(data.get("goal") or progress.get("goal"), "goal"),
        current_phase=_text(phase, "progress.current_phase") if phase is not None else None,
        tasks=tasks,
        milestones=[
            _text(m, "completed_milestones")
            for m in _list(data.get("completed_milestones"), "completed_milestones")
        ],
        blockers=blockers,
        decisions=decisions,
        environment=_env(data.get("environment"), "environment"),
    )
