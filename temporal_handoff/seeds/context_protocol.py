"""The context protocol's `.context/state.json`, in and out.

As published: `project`, `version`, `last_updated`, `last_agent`, `progress` (current
phase and step with their status), `completed_milestones` (objects with phase, step,
description, completed_at, verification), `blockers`, `decisions` (with the question),
`environment` and the `health` block. Values written `a|b|c` list the allowed values:
the first is taken, with a warning.

The protocol tracks phases and steps, not tasks. Without `tasks`, the roadmap becomes
one task per step, `<phase>.<step>`, each depending on the one before: the steps of a
`phases` (or `roadmap`) section when the file has one, else the completed milestones
followed by the current step. Variants: milestones as text; `tasks` as a list or an
object keyed by id; any section missing but `project`.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, TypeVar

from temporal_handoff.schemas.project import (
    DONE_STATUSES,
    Blocker,
    BlockerType,
    Decision,
    Milestone,
    Phase,
    ProjectState,
    SeedHealth,
    SeedInfo,
    Task,
    TaskStatus,
)
from temporal_handoff.seeds._fields import Reader, SeedError, join, make, read_with
from temporal_handoff.seeds._plan import (
    TASK_STATUSES,
    build_state,
    check_links,
    read_task,
    task_extras,
)
from temporal_handoff.seeds.orchestrator import environment_out, iso

B = TypeVar("B", Blocker, Decision)
FORMAT = "state-json"
STATE_FILE = "state.json"

STEP_STATUSES = {"not_started": "pending", "in_progress": "in_progress",
                 "verifying": "in_progress", "complete": "completed", "completed": "completed",
                 "failed": "failed", "skipped": "skipped"}
PHASE_STATUSES = {"in_progress": "in_progress", "complete": "complete",
                  "completed": "complete", "blocked": "blocked", "not_started": "not_started"}
BLOCKER_TYPES = {t.value: t.value for t in BlockerType}
BLOCKER_STATUSES = {"open": "open", "resolved": "resolved"}
_HEALTH_COUNTS = (
    "total_milestones", "completed_milestones", "blockers_open", "blockers_resolved",
    "sessions_count", "estimated_sessions_remaining",
)


def looks_like(data: Any) -> bool:
    """True for a context-protocol state.json (what `--format auto` picks)."""
    return isinstance(data, dict) and (
        "progress" in data or "completed_milestones" in data or isinstance(data.get("project"), str)
    )


def from_state_json(data: Any, warnings: list[str] | None = None) -> ProjectState:
    """Import a context-protocol `state.json` as published (or a documented variant).

    Args:
        data: The parsed JSON.
        warnings: Collects what was read leniently (placeholders, made-up tasks).

    Raises:
        SeedError: malformed input; the message starts with the offending field's path.
    """
    return read_with(_read, data, warnings)


def _read(r: Reader, data: dict[str, Any]) -> ProjectState:
    progress = r.obj(data.get("progress"), "progress")
    cur_phase = r.text(progress.get("current_phase"), "progress.current_phase")
    cur_step = r.text(progress.get("current_step"), "progress.current_step")
    r.choice(progress.get("phase_status"), "progress.phase_status", PHASE_STATUSES, "in_progress")
    step_status = r.choice(
        progress.get("step_status"), "progress.step_status", STEP_STATUSES, "pending"
    )

    milestones: list[str] = []
    records: list[Milestone] = []
    for i, raw in enumerate(r.seq(data.get("completed_milestones"), "completed_milestones")):
        where = f"completed_milestones[{i}]"
        if not isinstance(raw, dict):
            milestones.append(r.required_text(raw, where))
            continue
        record = _milestone(r, raw, where)
        milestones.append(record.description)
        if record.phase or record.step or record.completed_at or record.verification:
            records.append(record)

    phases, steps = _roadmap(r, data.get("phases", data.get("roadmap")))
    tasks: dict[str, Task] = {}
    dependents: dict[str, list[str] | None] = {}
    paths: dict[str, str] = {}
    raw_tasks = data.get("tasks", progress.get("tasks"))
    for tid, raw, where in r.items(raw_tasks, "tasks"):
        if tid in tasks:
            raise SeedError(where, f"duplicate task id {tid!r}")
        tasks[tid], dependents[tid] = read_task(r, tid, raw, where)
        paths[tid] = where
    check_links(tasks, dependents, paths)
    if not tasks:
        tasks, phases = _steps_as_tasks(r, phases, steps, records, cur_phase, cur_step, step_status)

    env, structured = r.environment(data.get("environment"), "environment")
    return build_state(
        {
            "name": _name(r, data.get("project", progress.get("project"))),
            "version": r.text(data.get("version"), "version"),
            "goal": r.text(data.get("goal", progress.get("goal")), "goal"),
            "original_request": r.text(data.get("request"), "request"),
            "phases": phases,
            "tasks": tasks,
            "current_phase": cur_phase or None,
            "current_step": cur_step or None,
            "milestones": milestones,
            "milestone_records": records,
            "blockers": _unique([
                _blocker(r, raw, f"blockers[{i}]", i)
                for i, raw in enumerate(r.seq(data.get("blockers"), "blockers"))
            ], "blockers"),
            "decisions": _unique([
                _decision(r, raw, f"decisions[{i}]", i)
                for i, raw in enumerate(r.seq(data.get("decisions"), "decisions"))
            ], "decisions"),
            "environment": env,
            "seed": SeedInfo(
                format=FORMAT,
                last_updated=r.when(data.get("last_updated"), "last_updated"),
                last_agent=r.placeholder_text(data.get("last_agent"), "last_agent"),
                health=_health(r, data.get("health")),
                environment=structured,
            ),
        }
    )


def _unique(items: list[B], where: str) -> list[B]:
    """Blockers and decisions are looked up by id: one id, one item."""
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item.id in seen:
            raise SeedError(f"{where}[{i}].id", f"duplicate id {item.id!r}")
        seen.add(item.id)
    return items


def _name(r: Reader, value: Any) -> str:
    name = r.text(value, "project")
    if not name.strip():
        r.warnings.append("project: missing; the session is named 'project'")
        return "project"
    return name


def _milestone(r: Reader, raw: dict[str, Any], where: str) -> Milestone:
    return make(
        Milestone, where,
        description=r.required_text(raw.get("description"), join(where, "description")),
        phase=r.text(raw.get("phase"), join(where, "phase")),
        step=r.text(raw.get("step"), join(where, "step")),
        completed_at=r.when(raw.get("completed_at"), join(where, "completed_at")),
        verification=r.text(raw.get("verification"), join(where, "verification")),
    )


def _blocker(r: Reader, raw: Any, where: str, i: int) -> Blocker:
    b = r.obj(raw, where)
    return make(
        Blocker, where,
        id=r.text(b.get("id"), join(where, "id")) or f"B{i + 1:04d}",
        opened_at=r.when(b.get("created"), join(where, "created")),
        description=r.required_text(
            b.get("description") or b.get("title"), join(where, "description")
        ),
        type=BlockerType(r.choice(b.get("type"), join(where, "type"), BLOCKER_TYPES, "technical")),
        status=r.choice(b.get("status"), join(where, "status"), BLOCKER_STATUSES, "open"),
        resolved_at=r.when(b.get("resolved_at"), join(where, "resolved_at")),
        resolution=r.text(b.get("resolution"), join(where, "resolution")),
        task_id=r.text(b.get("task_id"), join(where, "task_id")) or None,
    )


def _decision(r: Reader, raw: Any, where: str, i: int) -> Decision:
    d = r.obj(raw, where)
    return make(
        Decision, where,
        id=r.text(d.get("id"), join(where, "id")) or f"D{i + 1:04d}",
        at=r.when(d.get("timestamp"), join(where, "timestamp")),
        question=r.text(d.get("question"), join(where, "question")),
        title=r.required_text(d.get("decision") or d.get("title"), join(where, "decision")),
        rationale=r.text(d.get("rationale"), join(where, "rationale")),
        by=r.text(d.get("by"), join(where, "by")) or "agent",
        blocker_id=r.text(d.get("blocker_id"), join(where, "blocker_id")) or None,
    )


def _health(r: Reader, raw: Any) -> SeedHealth | None:
    if raw is None:
        return None
    h = r.obj(raw, "health")
    out: dict[str, Any] = {k: r.count(h.get(k), join("health", k)) for k in _HEALTH_COUNTS}
    out["completion_percentage"] = r.number(
        h.get("completion_percentage"), "health.completion_percentage"
    )
    return SeedHealth(**out)


Step = tuple[str, str, str, str]
"""(phase, step, title, task status or "")."""


def _roadmap(r: Reader, raw: Any) -> tuple[list[Phase], list[Step]]:
    """Phases and their steps from a `phases`/`roadmap` section (list or keyed object)."""
    phases: list[Phase] = []
    steps: list[Step] = []
    for pid, raw_ph, where in r.items(raw, "phases"):
        ph = r.obj(raw_ph, where)
        if any(p.id == pid for p in phases):
            raise SeedError(where, f"duplicate phase id {pid!r}")
        phases.append(make(Phase, where, id=pid, name=r.text(ph.get("name"), join(where, "name")) or pid))
        for sid, raw_st, swhere in _step_items(r, ph.get("steps"), join(where, "steps")):
            st = raw_st if isinstance(raw_st, dict) else {"description": raw_st}
            title = r.text(
                st.get("description") or st.get("name") or st.get("title"),
                join(swhere, "description"),
            )
            status = r.choice(st.get("status"), join(swhere, "status"), TASK_STATUSES, "")
            steps.append((pid, sid, title, status))
    return phases, steps


def _step_items(r: Reader, raw: Any, where: str) -> list[tuple[str, Any, str]]:
    if isinstance(raw, list):
        out = []
        for i, item in enumerate(raw):
            path = f"{where}[{i}]"
            sid = item.get("step", item.get("id")) if isinstance(item, dict) else None
            out.append((r.text(sid, join(path, "step")) or str(i + 1), item, path))
        return out
    return r.items(raw, where)


def _steps_as_tasks(
    r: Reader, phases: list[Phase], steps: list[Step], records: list[Milestone],
    cur_phase: str, cur_step: str, step_status: str,
) -> tuple[dict[str, Task], list[Phase]]:
    """One task per roadmap step, in order, each depending on the one before."""
    done = {(m.phase, m.step): m for m in records if m.phase and m.step}
    if not steps:
        steps = [(m.phase, m.step, m.description, "") for m in done.values()]
        if cur_phase and cur_step and (cur_phase, cur_step) not in done:
            steps.append((cur_phase, cur_step, "", ""))
    if not steps:
        r.warnings.append("tasks: none, and no phase/step roadmap to make them from")
        return {}, phases
    known = {p.id for p in phases}
    tasks: dict[str, Task] = {}
    prev: str | None = None
    for pid, sid, title, status in steps:
        if pid not in known:
            phases.append(make(Phase, "progress.current_phase", id=pid, name=f"Phase {pid}"))
            known.add(pid)
        tid = f"{pid}.{sid}"
        if tid in tasks:
            raise SeedError("phases", f"step {tid} appears twice")
        record = done.get((pid, sid))
        if record is not None:
            status = status or "completed"
        elif (pid, sid) == (cur_phase, cur_step):
            status = status or step_status
        tasks[tid] = make(
            Task, "phases",
            id=tid,
            title=title or (record.description if record else "") or f"Phase {pid}, step {sid}",
            phase=pid,
            status=TaskStatus(status or "pending"),
            depends_on=[prev] if prev else [],
            summary=record.verification if record else "",
        )
        prev = tid
    r.warnings.append(
        f"tasks: none in the file; made {len(tasks)} from the phase/step roadmap "
        f"({', '.join(list(tasks)[:6])}{', …' if len(tasks) > 6 else ''})"
    )
    return tasks, phases


# ---- export -----------------------------------------------------------------------


def _num(text: str | None) -> int | str | None:
    """`"3"` → 3 (the protocol writes phases and steps as numbers)."""
    if text is None or text == "":
        return None
    return int(text) if text.isdigit() else text


def current_position(state: ProjectState) -> tuple[str | None, str | None, str]:
    """(phase, step, step status): the first step task (`<phase>.<step>`) not done, else
    the last one (complete), else the state's own position."""
    last: Task | None = None
    for task in state.tasks.values():
        pid, _, sid = task.id.partition(".")
        if not sid or pid != task.phase:
            continue
        if task.status not in DONE_STATUSES:
            status = {"pending": "not_started", "failed": "failed"}.get(
                task.status.value, "in_progress"
            )
            return pid, sid, status
        last = task
    if last is not None:
        pid, _, sid = last.id.partition(".")
        return pid, sid, "complete"
    return state.current_phase, state.current_step, "complete" if state.all_done else "in_progress"


def health(state: ProjectState, sessions: int = 0) -> dict[str, Any]:
    """The protocol's `health` block computed from the state.

    Milestones are the plan's tasks when it has any (else the recorded milestones,
    against the imported total); `sessions` are added to the imported `sessions_count`.
    """
    seed = state.seed.health if state.seed and state.seed.health else SeedHealth()
    if state.tasks:
        total, done = len(state.tasks), state.completed_count
    else:
        done = len(state.milestones)
        total = max(seed.total_milestones or 0, done)
    count = (seed.sessions_count or 0) + sessions
    remaining: int | None = seed.estimated_sessions_remaining
    if done and count:
        remaining = math.ceil((total - done) * count / done)
    return {
        "total_milestones": total,
        "completed_milestones": done,
        "completion_percentage": round(100 * done / total, 1) if total else 0.0,
        "blockers_open": sum(1 for b in state.blockers if b.status == "open"),
        "blockers_resolved": sum(1 for b in state.blockers if b.status == "resolved"),
        "sessions_count": count,
        "estimated_sessions_remaining": remaining,
    }


def to_state_json(
    state: ProjectState, *, updated_at: datetime | None = None, sessions: int = 0,
    agent: str = "claude",
) -> dict[str, Any]:
    """The context-protocol `state.json` for `state` (pure).

    Beside the published sections it writes `tasks` and `phases` (the plan, which the
    protocol does not track) and `goal`/`request` when set, so that importing the file
    again gives the same state.
    """
    phase, step, step_status = current_position(state)
    in_phase = [t for t in state.tasks.values() if t.phase == phase]
    if state.open_blockers():
        phase_status = "blocked"
    elif in_phase and all(t.status in DONE_STATUSES for t in in_phase):
        phase_status = "complete"
    else:
        phase_status = "in_progress"
    records = list(state.milestone_records)
    milestones = []
    for text in state.milestones:
        rec = next((m for m in records if m.description == text), None)
        if rec is not None:
            records.remove(rec)
        milestones.append({
            "phase": _num(rec.phase) if rec else None,
            "step": _num(rec.step) if rec else None,
            "description": text,
            "completed_at": iso(rec.completed_at) if rec else None,
            "verification": (rec.verification or None) if rec else None,
        })
    seed = state.seed or SeedInfo()
    out: dict[str, Any] = {
        "project": state.name,
        "version": state.version,
        "last_updated": iso(updated_at or seed.last_updated),
        "last_agent": seed.last_agent or agent,
        "progress": {
            "current_phase": _num(phase),
            "current_step": _num(step),
            "phase_status": phase_status,
            "step_status": step_status,
        },
        "completed_milestones": milestones,
        "blockers": [
            {
                "id": b.id,
                "created": iso(b.opened_at),
                "description": b.description,
                "type": b.type.value,
                "status": b.status,
                "resolved_at": iso(b.resolved_at),
                "resolution": b.resolution or None,
                **({"task_id": b.task_id} if b.task_id else {}),
            }
            for b in state.blockers
        ],
        "decisions": [
            {
                "id": d.id,
                "timestamp": iso(d.at),
                "question": d.question,
                "decision": d.title,
                "rationale": d.rationale,
                **({"by": d.by} if d.by != "agent" else {}),
                **({"blocker_id": d.blocker_id} if d.blocker_id else {}),
            }
            for d in state.decisions
        ],
        "environment": environment_out(state),
        "health": health(state, sessions),
    }
    if state.goal:
        out["goal"] = state.goal
    if state.original_request:
        out["request"] = state.original_request
    if state.phases:
        out["phases"] = [{"id": p.id, "name": p.name} for p in state.phases]
    if state.tasks:
        out["tasks"] = [_task_out(t) for t in state.tasks.values()]
    return out


def _task_out(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "name": task.title,
        "phase": task.phase,
        "status": task.status.value,
        "dependencies": list(task.depends_on),
        **task_extras(task),
    }
