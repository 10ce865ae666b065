"""The orchestrator state file (`.orchestrator_state.json`) as a `ProjectState`."""

from __future__ import annotations

from typing import Any

from temporal_handoff.schemas.project import Phase, ProjectState, Task
from temporal_handoff.seeds._fields import _dict, _env, _import_task, _list, _raw_tasks, _text


def from_orchestrator(data: dict[str, Any]) -> ProjectState:
    """Import an orchestrator state file: ``metadata``/``context``/``tasks``/``dag``.

    ``tasks`` is a list (or id-keyed map) of ``{id, title|name, status, dependencies|
    depends_on, phase}``; ``dag.phases`` lists ``{id|name, tasks: [ids]}``.

    Raises:
        ValueError: malformed input; the message names the offending field.
    """
    data = _dict(data, "state file")
    meta = _dict(data.get("metadata"), "metadata")
    ctx = _dict(data.get("context"), "context")
    phase_of: dict[str, str] = {}
    phases: list[Phase] = []
    for i, raw_ph in enumerate(_list(_dict(data.get("dag"), "dag").get("phases"), "dag.phases")):
        ph = _dict(raw_ph, f"dag.phases[{i}]")
        pid = _text(ph.get("id") or ph.get("name"), f"dag.phases[{i}].id") or f"phase-{i + 1}"
        phases.append(Phase(id=pid, name=_text(ph.get("name"), f"dag.phases[{i}].name") or pid))
        for tid in _list(ph.get("tasks"), f"dag.phases[{i}].tasks"):
            phase_of[_text(tid, f"dag.phases[{i}].tasks")] = pid
    tasks: dict[str, Task] = {}
    for i, raw in enumerate(_raw_tasks(data.get("tasks"), "tasks")):
        task = _import_task(raw, f"tasks[{i}]", phase_of.get(str(raw["id"]), ""))
        tasks[task.id] = task
    return ProjectState(
        name=_text(meta.get("project") or meta.get("name"), "metadata.project") or "project",
        original_request=_text(
            ctx.get("request") or ctx.get("original_request"), "context.request"
        ),
        goal=_text(ctx.get("goal") or meta.get("goal"), "context.goal"),
        phases=phases,
        tasks=tasks,
        current_phase=phases[0].id if phases else None,
        environment=_env(ctx.get("environment"), "context.environment"),
    )
