"""The orchestrator layout: `.orchestrator_state.json` in, and back out with a
`context_payload.json` (the handoff at a chosen compression level).

The state file as published::

    {"metadata": {"project_name", "version", "created_at"},
     "context": {"current_phase", "active_tasks", "completed_tasks", "failed_tasks"},
     "tasks": {"<id>": {"name", "status", "dependencies", "dependents"}},
     "dag": {"phases": {"<phase id>": {"name", "tasks": ["<id>", ...]}}}}

Variants read as well: `tasks` and `dag.phases` as lists of objects with an `id`;
`depends_on` for `dependencies`; a `handoff_history` list. A task named in a context
list or a phase but absent from `tasks` is imported with no name (and a warning).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from temporal_handoff.documents.render import render_prompt
from temporal_handoff.schemas.config import CompressionLevel
from temporal_handoff.schemas.handoff import HandoffDocument
from temporal_handoff.schemas.project import (
    HandoffRecord,
    Phase,
    ProjectState,
    SeedInfo,
    Task,
    TaskStatus,
)
from temporal_handoff.seeds._fields import Reader, SeedError, env_text, join, make, read_with
from temporal_handoff.seeds._plan import build_state, check_links, read_task, task_extras

FORMAT = "orchestrator"
STATE_FILE = ".orchestrator_state.json"
PAYLOAD_FILE = "context_payload.json"

_CONTEXT_LISTS = {
    "active_tasks": TaskStatus.IN_PROGRESS,
    "completed_tasks": TaskStatus.COMPLETED,
    "failed_tasks": TaskStatus.FAILED,
}


def looks_like(data: Any) -> bool:
    """True for an orchestrator state file (what `--format auto` picks)."""
    return isinstance(data, dict) and ("dag" in data or "metadata" in data) and "progress" not in data


def from_orchestrator(data: Any, warnings: list[str] | None = None) -> ProjectState:
    """Import an orchestrator state file as published (or a documented variant).

    `warnings` collects what was read leniently (a task named in `context` or a phase
    but missing from `tasks`). A malformed file raises :class:`SeedError`, whose message
    starts with the offending field's path.
    """
    return read_with(_read, data, warnings)


def _read(r: Reader, data: dict[str, Any]) -> ProjectState:
    meta = r.obj(data.get("metadata"), "metadata")
    ctx = r.obj(data.get("context"), "context")
    dag = r.obj(data.get("dag"), "dag")

    phases: list[Phase] = []
    phase_of: dict[str, str] = {}
    for pid, raw, where in r.items(dag.get("phases"), "dag.phases"):
        ph = r.obj(raw, where)
        if any(p.id == pid for p in phases):
            raise SeedError(where, f"duplicate phase id {pid!r}")
        phases.append(make(Phase, where, id=pid, name=r.text(ph.get("name"), join(where, "name")) or pid))
        for tid in r.ids(ph.get("tasks"), join(where, "tasks")):
            if tid in phase_of and phase_of[tid] != pid:
                raise SeedError(join(where, "tasks"), f"{tid!r} is also in phase {phase_of[tid]!r}")
            phase_of[tid] = pid

    tasks: dict[str, Task] = {}
    dependents: dict[str, list[str] | None] = {}
    paths: dict[str, str] = {}
    for tid, raw, where in r.items(data.get("tasks"), "tasks"):
        if tid in tasks:
            raise SeedError(where, f"duplicate task id {tid!r}")
        task, listed = read_task(r, tid, raw, where, phase_of.get(tid, ""))
        tasks[tid], dependents[tid], paths[tid] = task, listed, where

    seen: dict[str, str] = {}
    for key, status in _CONTEXT_LISTS.items():
        field = join("context", key)
        for tid in r.ids(ctx.get(key), field):
            if tid in seen:
                raise SeedError(field, f"{tid!r} is also in context.{seen[tid]}")
            seen[tid] = key
            listed_task = tasks.get(tid)
            if listed_task is None:
                r.warnings.append(f"{field}: {tid!r} is not in tasks; imported with no name")
                tasks[tid] = make(Task, field, id=tid, phase=phase_of.get(tid, ""), status=status)
                dependents[tid], paths[tid] = None, field
            elif listed_task.status not in (TaskStatus.PENDING, status):
                raise SeedError(
                    field, f"{tid!r} has status {listed_task.status.value!r} in {paths[tid]}.status"
                )
            else:
                listed_task.status = status
    for tid, pid in phase_of.items():
        if tid not in tasks:
            r.warnings.append(f"dag.phases.{pid}.tasks: {tid!r} is not in tasks; imported with no name")
            tasks[tid] = make(Task, f"dag.phases.{pid}.tasks", id=tid, phase=pid)
            dependents[tid], paths[tid] = None, f"dag.phases.{pid}.tasks"
    check_links(tasks, dependents, paths)

    current = r.text(ctx.get("current_phase"), "context.current_phase") or None
    if current and phases and current not in {p.id for p in phases}:
        raise SeedError("context.current_phase", f"unknown phase {current!r}")
    env_raw = ctx.get("environment", data.get("environment"))
    env, structured = r.environment(env_raw, "context.environment")
    history = []
    for i, raw_h in enumerate(r.seq(data.get("handoff_history"), "handoff_history")):
        where = f"handoff_history[{i}]"
        h = r.obj(raw_h, where)
        history.append(
            HandoffRecord(
                id=r.text(h.get("id"), join(where, "id")),
                timestamp=r.when(h.get("timestamp"), join(where, "timestamp")),
                tokens=r.count(h.get("tokens"), join(where, "tokens")) or 0,
            )
        )
    return build_state(
        {
            "name": r.text(
                meta.get("project_name") or meta.get("project") or meta.get("name"),
                "metadata.project_name",
            ) or "project",
            "version": r.text(meta.get("version"), "metadata.version"),
            "original_request": r.text(
                ctx.get("request") or ctx.get("original_request"), "context.request"
            ),
            "goal": r.text(ctx.get("goal") or meta.get("goal"), "context.goal"),
            "phases": phases,
            "tasks": tasks,
            "current_phase": current or (phases[0].id if phases else None),
            "environment": env,
            "seed": SeedInfo(
                format=FORMAT,
                created_at=r.when(meta.get("created_at"), "metadata.created_at"),
                environment=structured,
                handoff_history=history,
            ),
        }
    )


# ---- export -----------------------------------------------------------------------


def iso(when: datetime | None) -> str | None:
    """An ISO 8601 time with `Z` for UTC, as the published files write it."""
    if when is None:
        return None
    return when.isoformat().replace("+00:00", "Z")


def environment_out(state: ProjectState) -> dict[str, Any]:
    """The environment with structured values restored where the agent left them as
    imported (a value it changed is written as the text it set)."""
    structured = state.seed.environment if state.seed else {}
    return {
        k: structured[k] if k in structured and env_text(structured[k]) == v else v
        for k, v in state.environment.items()
    }


def to_orchestrator_state(
    state: ProjectState, handoffs: list[HandoffRecord] | None = None
) -> dict[str, Any]:
    """The orchestrator state file for `state` (pure); `handoffs` are appended to the
    imported `handoff_history`."""
    dependents: dict[str, list[str]] = {tid: [] for tid in state.tasks}
    for task in state.tasks.values():
        for dep in task.depends_on:
            dependents[dep].append(task.id)
    tasks: dict[str, Any] = {}
    for task in state.tasks.values():
        item: dict[str, Any] = {
            "name": task.title,
            "status": task.status.value,
            "dependencies": list(task.depends_on),
            "dependents": dependents[task.id],
        }
        if task.phase and task.phase not in {p.id for p in state.phases}:
            item["phase"] = task.phase
        tasks[task.id] = item | task_extras(task)
    context: dict[str, Any] = {"current_phase": state.current_phase}
    for key, status in _CONTEXT_LISTS.items():
        context[key] = [t.id for t in state.tasks.values() if t.status == status]
    if state.goal:
        context["goal"] = state.goal
    if state.original_request:
        context["request"] = state.original_request
    if state.environment:
        context["environment"] = environment_out(state)
    seed = state.seed or SeedInfo()
    history = [*seed.handoff_history, *(handoffs or [])]
    out: dict[str, Any] = {
        "metadata": {
            "project_name": state.name,
            "version": state.version,
            "created_at": iso(seed.created_at),
        },
        "context": context,
        "tasks": tasks,
        "dag": {
            "phases": {
                p.id: {"name": p.name, "tasks": [t.id for t in state.tasks.values() if t.phase == p.id]}
                for p in state.phases
            }
        },
    }
    if history:
        out["handoff_history"] = [
            {"id": h.id, "timestamp": iso(h.timestamp), "tokens": h.tokens} for h in history
        ]
    return out


def context_payload(
    doc: HandoffDocument, level: CompressionLevel = CompressionLevel.STANDARD
) -> dict[str, Any]:
    """`context_payload.json`: the handoff document rendered at `level` (pure)."""
    payload = render_prompt(doc, level)
    return {
        "session_id": doc.agent.session_id,
        "generation": doc.agent.generation,
        "reason": doc.agent.reason.value,
        "compression_level": payload.level.value,
        "requested_level": payload.requested_level.value,
        "token_budget": payload.budget,
        "token_estimate": payload.prompt_tokens,
        "escalated": payload.escalated,
        "note": payload.note,
        "content": payload.prompt,
        "handoff": doc.model_dump(mode="json"),
    }
