"""A deterministic generated project for tests, benchmarks and the demo."""

from __future__ import annotations

from temporal_handoff.schemas.project import Phase, ProjectState, Task


def synthetic_project(n_tasks: int = 169, n_phases: int = 6, seed: int = 0) -> ProjectState:
    """A deterministic generated project: phases in sequence, chains within a phase.

    Each task depends on the task two places before it (two interleaved chains that
    run across phases); every fourth task also depends on one earlier task, so the
    DAG is not a pair of straight lines.
    """
    phases = [Phase(id=f"P{p + 1}", name=f"Phase {p + 1}") for p in range(n_phases)]
    tasks: dict[str, Task] = {}
    ids: list[str] = []
    per = max(1, -(-n_tasks // n_phases))
    for i in range(n_tasks):
        p = min(i // per, n_phases - 1)
        tid = f"P{p + 1}-T{i + 1:03d}"
        # Two lanes: each task waits for the one two places back, so two are
        # usually eligible at once.
        deps = [ids[-2]] if len(ids) >= 2 else []
        if i % 4 == 3 and len(ids) >= 3:
            extra = ids[(i * 7 + seed) % (len(ids) - 1)]
            if extra not in deps:
                deps.append(extra)
        tasks[tid] = Task(
            id=tid,
            title=f"Task {i + 1} of phase {p + 1}",
            phase=phases[p].id,
            depends_on=deps,
            estimate_h=float(1 + (i * 13 + seed) % 5),
        )
        ids.append(tid)
    return ProjectState(
        name=f"synthetic-{n_tasks}",
        original_request=f"Build the synthetic project with {n_tasks} tasks in {n_phases} phases.",
        goal="Complete every task in dependency order, recording decisions as you go.",
        phases=phases,
        tasks=tasks,
        current_phase=phases[0].id if phases else None,
        environment={"python": "3.11", "platform": "linux"},
    )
