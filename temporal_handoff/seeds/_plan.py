"""Tasks read from a seed file: statuses, dependencies and dependents, checked."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from temporal_handoff.schemas.project import ProjectState, Task, TaskStatus
from temporal_handoff.seeds._fields import Reader, SeedError, first_error, join, make

TASK_STATUSES: dict[str, str] = {
    "pending": "pending",
    "not_started": "pending",
    "todo": "pending",
    "in_progress": "in_progress",
    "active": "in_progress",
    "running": "in_progress",
    "verifying": "in_progress",
    "completed": "completed",
    "complete": "completed",
    "done": "completed",
    "failed": "failed",
    "skipped": "skipped",
}


def read_task(r: Reader, tid: str, raw: Any, where: str, phase: str = "") -> tuple[Task, list[str] | None]:
    """One task and its `dependents` list (None when the file does not give one)."""
    raw = r.obj(raw, where)
    deps_key = "dependencies" if raw.get("dependencies") is not None else "depends_on"
    deps = r.ids(raw.get(deps_key), join(where, deps_key))
    dependents = r.ids(raw["dependents"], join(where, "dependents")) if "dependents" in raw else None
    estimate = r.number(
        raw.get("estimate_h", raw.get("estimated_hours")), join(where, "estimate_h"), 1.0
    )
    task = make(
        Task, where,
        id=tid,
        title=r.text(
            raw.get("name") or raw.get("title") or raw.get("description"), join(where, "name")
        ),
        phase=r.text(raw.get("phase"), join(where, "phase")) or phase,
        status=TaskStatus(
            r.choice(raw.get("status"), join(where, "status"), TASK_STATUSES, "pending")
        ),
        depends_on=deps,
        estimate_h=estimate if estimate is not None else 1.0,
        summary=r.text(raw.get("summary"), join(where, "summary")),
        error=r.text(raw.get("error"), join(where, "error")),
    )
    return task, dependents


def check_links(
    tasks: dict[str, Task], dependents: dict[str, list[str] | None], where: dict[str, str]
) -> None:
    """Every dependency names a task; a task's `dependents`, when given, are exactly the
    tasks that list it among their dependencies."""
    for tid, task in tasks.items():
        for dep in task.depends_on:
            if dep not in tasks:
                raise SeedError(join(where[tid], "dependencies"), f"unknown task {dep!r}")
    for tid, listed in dependents.items():
        if listed is None:
            continue
        field = join(where[tid], "dependents")
        for dep in listed:
            if dep not in tasks:
                raise SeedError(field, f"unknown task {dep!r}")
            if tid not in tasks[dep].depends_on:
                raise SeedError(field, f"{dep!r} does not list {tid!r} in its dependencies")
        for other, task in tasks.items():
            if tid in task.depends_on and other not in listed:
                raise SeedError(field, f"misses {other!r}, which depends on {tid!r}")


def build_state(fields: dict[str, Any]) -> ProjectState:
    """The ProjectState, its own checks (ids, dependency cycle) as a SeedError."""
    try:
        return ProjectState(**fields)
    except ValidationError as err:
        raise first_error(err) from None


def task_extras(task: Task) -> dict[str, Any]:
    """What a written task carries beyond the published fields, when not the default
    (the importers read these back)."""
    extras: dict[str, Any] = {}
    if task.summary:
        extras["summary"] = task.summary
    if task.error:
        extras["error"] = task.error
    if task.estimate_h != 1.0:
        extras["estimate_h"] = task.estimate_h
    return extras
