"""What a seed file becomes, for `handoff import --dry-run` (pure)."""

from __future__ import annotations

from typing import Any

from temporal_handoff.schemas.project import TaskStatus
from temporal_handoff.seeds import SeedImport


def preview(imp: SeedImport) -> dict[str, Any]:
    """The imported state in brief: name, phases, tasks by status, decisions, blockers,
    eligible tasks and the warnings."""
    state = imp.state
    by_status: dict[str, list[str]] = {s.value: [] for s in TaskStatus}
    for task in state.tasks.values():
        by_status[task.status.value].append(task.id)
    return {
        "format": imp.format,
        "name": state.name,
        "version": state.version,
        "goal": state.goal,
        "current_phase": state.current_phase,
        "current_step": state.current_step,
        "phases": [
            {"id": p.id, "name": p.name, "tasks": sum(1 for t in state.tasks.values() if t.phase == p.id)}
            for p in state.phases
        ],
        "tasks": {k: v for k, v in by_status.items() if v},
        "task_count": len(state.tasks),
        "eligible": state.next_eligible(),
        "milestones": list(state.milestones),
        "decisions": [
            {"id": d.id, "question": d.question, "decision": d.title, "rationale": d.rationale}
            for d in state.decisions
        ],
        "blockers": [
            {"id": b.id, "type": b.type.value, "status": b.status, "description": b.description}
            for b in state.blockers
        ],
        "environment": dict(state.environment),
        "warnings": list(imp.warnings),
    }


def render_preview(view: dict[str, Any], source: str) -> str:
    """`preview()` as text for a terminal."""
    out = [
        f"{source}: {view['format']} → project {view['name']!r}"
        + (f" v{view['version']}" if view["version"] else ""),
    ]
    if view["goal"]:
        out.append(f"goal: {view['goal']}")
    pos = view["current_phase"] or "none"
    if view["current_step"]:
        pos += f", step {view['current_step']}"
    out.append(f"current phase: {pos}")
    out.append(
        "phases: "
        + (", ".join(f"{p['id']} {p['name']!r} ({p['tasks']} tasks)" for p in view["phases"]) or "none")
    )
    out.append(f"tasks: {view['task_count']}")
    for status, ids in view["tasks"].items():
        out.append(f"  {status}: {', '.join(ids)}")
    out.append("eligible now: " + (", ".join(view["eligible"]) or "none"))
    out.append(f"milestones: {len(view['milestones'])}")
    out.append(f"decisions: {len(view['decisions'])}")
    for d in view["decisions"]:
        q = f"{d['question']} → " if d["question"] else ""
        out.append(f"  {d['id']}: {q}{d['decision']}")
    out.append(f"blockers: {len(view['blockers'])}")
    for b in view["blockers"]:
        out.append(f"  {b['id']} [{b['type']}, {b['status']}]: {b['description']}")
    if view["environment"]:
        out.append("environment: " + ", ".join(sorted(view["environment"])))
    for w in view["warnings"]:
        out.append(f"warning: {w}")
    out.append("(dry run: nothing started)")
    return "\n".join(out)
