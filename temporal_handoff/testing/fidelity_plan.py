"""A seeded project whose right next step depends on what only the handoff carries.

`fidelity_plan` turns a project (e.g. `synthetic_project`) into a plan written for the
agent's system prompt: every task with its dependencies and a *kind* that says how it is
done. The kinds create obligations that outlive a generation:

* ``decide A B C`` — the agent picks one option (`record_decision`, the others
  rejected); the task that ``use``-s it later must name the same option.
* ``ask postgres sqlite`` — the agent raises a human-decision blocker; the human's text
  (``use postgres``) decides what the task and the task that ``use``-s it write.
* ``flaky A B C`` — the first approaches fail (`fail_task` names the approach in its
  error); a retry must pick an approach no recorded error names.
* ``steps`` — two turns: a todo and a file note record step 1; the successor must
  finish with step 2, not start again.

The plan is static (a user writes it once); progress is not in it. So a successor knows
what is done, decided and failed only from its continuation prompt, `recall`, and what
it recorded itself: exactly what `PayloadAgent` reads. `score_fidelity` grades the
session's final state against the plan.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal

from temporal_handoff.schemas.project import ProjectState, TaskStatus
from temporal_handoff.testing.brain import stable_hash

__all__ = [
    "APPROACHES",
    "DECIDE_OPTIONS",
    "HUMAN_OPTIONS",
    "PLAN_HEADER",
    "FidelityPlan",
    "PlanTask",
    "fidelity_plan",
    "human_choice",
    "score_fidelity",
]

Kind = Literal["plain", "decide", "ask", "flaky", "steps", "use"]

PLAN_HEADER = "# Plan"
"""First line of the plan section of the system prompt (`PayloadAgent` looks for it)."""
DECIDE_OPTIONS = ("redis", "memcached", "sqlite-cache")
HUMAN_OPTIONS = ("postgres", "sqlite")
APPROACHES = ("bulk-insert", "batched", "streamed")

# Share of each kind among tasks that are not consumers (`use`) of an earlier decision.
_WEIGHTS: tuple[tuple[Kind, int], ...] = (
    ("plain", 50),
    ("decide", 14),
    ("ask", 6),
    ("flaky", 14),
    ("steps", 16),
)


@dataclass(frozen=True)
class PlanTask:
    """One task of the plan: its dependencies, kind and the kind's parameters."""

    id: str
    deps: tuple[str, ...]
    kind: Kind
    options: tuple[str, ...] = ()
    """decide/ask: the choices; flaky: the approaches in the order the agent tries them."""
    uses: str | None = None
    """use: the task whose decision this one applies."""
    bad: int = 0
    """flaky: how many of the first approaches fail."""

    def line(self) -> str:
        """The plan line (no backticks, so it never reads as handoff state)."""
        deps = f" < {' '.join(self.deps)}" if self.deps else ""
        how = {
            "plain": "",
            "decide": f" | decide {' '.join(self.options)}",
            "ask": f" | ask {' '.join(self.options)}",
            "flaky": f" | flaky {' '.join(self.options)}",
            "steps": " | steps",
            "use": f" | use {self.uses}",
        }[self.kind]
        return f"- {self.id}{deps}{how}"


@dataclass
class FidelityPlan:
    """The plan: tasks in order, the system prompt that states it, the seed."""

    tasks: dict[str, PlanTask]
    seed: int
    intro: str = (
        "You are an autonomous engineering agent working through the plan below. Record "
        "everything with the state tools: complete_task when a task is done, fail_task with "
        "the approach that failed, record_decision for choices (with rejected options), "
        "add_blocker when a human must choose, add_todo and note_file for unfinished work."
    )
    consumers: dict[str, str] = field(default_factory=dict)
    """Decision task → the task that uses its decision."""

    def system_prompt(self) -> str:
        """System prompt: the intro and the plan (one line per task)."""
        lines = [self.intro, "", PLAN_HEADER] + [t.line() for t in self.tasks.values()]
        return "\n".join(lines)


def fidelity_plan(project: ProjectState, seed: int = 0) -> FidelityPlan:
    """Assign a kind to every task of `project`, deterministically from `seed`.

    The first dependent of a ``decide``/``ask`` task (in plan order) becomes its
    ``use`` task, so every decision has a consumer, usually a few turns (and
    handoffs) later. The first task from the third on that is not a ``use`` is an ``ask``: a human decision that every later
    handoff must carry.
    """
    rng = random.Random(seed)
    kinds = [k for k, _ in _WEIGHTS]
    weights = [w for _, w in _WEIGHTS]
    tasks: dict[str, PlanTask] = {}
    consumers: dict[str, str] = {}
    open_decisions: list[str] = []
    for tid, task in project.tasks.items():
        deps = tuple(task.depends_on)
        used = next((d for d in open_decisions if d in deps), None)
        if used is not None:
            open_decisions.remove(used)
            consumers[used] = tid
            tasks[tid] = PlanTask(id=tid, deps=deps, kind="use", uses=used)
            continue
        kind: Kind = rng.choices(kinds, weights)[0]
        used_later = any(tid in t.depends_on for t in project.tasks.values())
        if len(tasks) >= 2 and used_later and not any(t.kind == "ask" for t in tasks.values()):
            kind = "ask"  # a human decision early, so every handoff must carry one
        elif kind in ("decide", "ask") and not used_later:
            kind = "plain"  # nothing would use the decision
        if kind == "decide":
            tasks[tid] = PlanTask(id=tid, deps=deps, kind=kind, options=DECIDE_OPTIONS)
            open_decisions.append(tid)
        elif kind == "ask":
            tasks[tid] = PlanTask(id=tid, deps=deps, kind=kind, options=HUMAN_OPTIONS)
            open_decisions.append(tid)
        elif kind == "flaky":
            tasks[tid] = PlanTask(
                id=tid, deps=deps, kind=kind, options=APPROACHES, bad=bad_approaches(seed, tid)
            )
        else:
            tasks[tid] = PlanTask(id=tid, deps=deps, kind=kind)
    return FidelityPlan(tasks=tasks, seed=seed, consumers=consumers)


def human_choice(seed: int, blocker_id: str) -> str:
    """What the (simulated) human decides on `blocker_id`: ``use postgres`` or ``use sqlite``."""
    return f"use {HUMAN_OPTIONS[stable_hash(f'{seed}:human:{blocker_id}') % len(HUMAN_OPTIONS)]}"


def bad_approaches(seed: int, task_id: str) -> int:
    """The simulated world: how many of a flaky task's first approaches fail (1 or 2).
    Written nowhere the agent reads; it learns it only by failing."""
    return 1 + (stable_hash(f"{seed}:flaky:{task_id}") % 3 == 0)


def agent_choice(seed: int, task_id: str) -> str:
    """The option the agent picks for a ``decide`` task (its own judgement, seeded)."""
    return DECIDE_OPTIONS[stable_hash(f"{seed}:decide:{task_id}") % len(DECIDE_OPTIONS)]


def score_fidelity(
    plan: FidelityPlan, state: ProjectState, actions: list[tuple[str, dict[str, Any]]]
) -> dict[str, Any]:
    """Grade a finished session against the plan.

    Args:
        plan: The plan the session ran.
        state: The session's final project state.
        actions: Every state tool call the agent made, in order (`PayloadAgent.actions`).

    Returns:
        ``tasks_repeated`` (completions of a done task, step 1 done twice, a blocker
        or decision raised again), ``tasks_skipped`` (tasks not completed),
        ``decisions_made`` / ``decisions_honoured`` (each agent decision is checked at
        its consumer, each human decision at its task and its consumer),
        ``failed_retries`` / ``failed_retries_changed_approach``, ``steps_resumed``
        (two-step tasks finished without redoing step 1), and how many decisions and
        failed tasks were used or finished in a later generation than they were made
        (what only the handoff could have carried).
    """
    tasks = state.tasks
    skipped = sum(1 for t in tasks.values() if t.status != TaskStatus.COMPLETED)
    # Repeats visible in the final state and in the agent's calls.
    repeated = state.duplicate_completions
    seen_blockers: set[str] = set()
    seen_decisions: set[str] = set()
    step1: dict[str, int] = {}
    for name, args in actions:
        if name == "add_blocker":
            bid = str(args.get("blocker_id"))
            repeated += bid in seen_blockers
            seen_blockers.add(bid)
        elif name == "record_decision":
            did = str(args.get("decision_id"))
            repeated += did in seen_decisions
            seen_decisions.add(did)
        elif name == "add_todo":
            text = str(args.get("text", ""))
            for tid in _backticked(text):
                step1[tid] = step1.get(tid, 0) + 1
    repeated += sum(n - 1 for n in step1.values() if n > 1)

    made = honoured = across = 0
    decided = {d.id: d for d in state.decisions}
    for tid, consumer in plan.consumers.items():
        kind = plan.tasks[tid].kind
        record = decided.get(f"D-{tid}" if kind == "decide" else f"HD-B-{tid}")
        used_in = tasks[consumer].completed_generation
        across += record is not None and used_in is not None and used_in > record.generation
        if kind == "decide":
            made += 1
            d = decided.get(f"D-{tid}")
            want = d.title.split()[1] if d is not None and d.title.startswith("use ") else None
            honoured += want is not None and _uses(tasks[consumer].summary, want)
        else:
            hd = decided.get(f"HD-B-{tid}")
            want = hd.title.split()[1] if hd is not None and hd.title.startswith("use ") else None
            made += 2
            honoured += want is not None and _uses(tasks[tid].summary, want)
            honoured += want is not None and _uses(tasks[consumer].summary, want)

    retries = changed = 0
    failed_with: dict[str, set[str]] = {}
    failed_in = {e.task_id: e.generation for e in state.errors if e.task_id}
    retried_across = sum(
        1
        for tid, gen in failed_in.items()
        if (done_in := tasks[tid].completed_generation) is not None and done_in > gen
    )
    for name, args in actions:
        if name not in ("fail_task", "complete_task"):
            continue
        tid = str(args.get("task_id"))
        if plan.tasks.get(tid) is None or plan.tasks[tid].kind != "flaky":
            continue
        approach = _approach(str(args.get("error") or args.get("summary") or ""))
        before = failed_with.setdefault(tid, set())
        if before:
            retries += 1
            changed += approach is not None and approach not in before
        if name == "fail_task" and approach:
            before.add(approach)

    steps = [t for t in plan.tasks.values() if t.kind == "steps"]
    resumed = sum(
        1 for t in steps if step1.get(t.id, 0) == 1 and tasks[t.id].status == TaskStatus.COMPLETED
    )
    return {
        "tasks_total": len(tasks),
        "tasks_completed": sum(1 for t in tasks.values() if t.status == TaskStatus.COMPLETED),
        "tasks_repeated": repeated,
        "tasks_skipped": skipped,
        "decisions_made": made,
        "decisions_honoured": honoured,
        "decisions_used_after_a_handoff": across,
        "failed_retries": retries,
        "failed_retries_changed_approach": changed,
        "failed_tasks_finished_after_a_handoff": retried_across,
        "steps_tasks": len(steps),
        "steps_resumed": resumed,
    }


def _backticked(text: str) -> list[str]:
    parts = text.split("`")
    return parts[1::2]


def _uses(summary: str, option: str) -> bool:
    return f"uses {option}." in summary


def _approach(text: str) -> str | None:
    for a in APPROACHES:
        if f"approach '{a}'" in text:
            return a
    return None
