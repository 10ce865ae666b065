"""Project state: the durable record of what the agent is doing and has decided.

Tasks form a DAG grouped in phases. Every change goes through
:func:`temporal_handoff.schemas.state_events.apply_event`, a pure function: the session
applies each state-tool call and human command as an event, and the handoff child
replays the same events as deltas, so both hold the same state without shipping the
whole project on every turn. Importers and exporters of the seed formats live in
:mod:`temporal_handoff.seeds`.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import Field, model_validator

from temporal_handoff.schemas.base import DurableModel


class TaskStatus(str, Enum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


DONE_STATUSES = (TaskStatus.COMPLETED, TaskStatus.SKIPPED)


class Task(DurableModel):
    id: str = Field(min_length=1, max_length=128)
    title: str = Field(default="", max_length=2_000)
    phase: str = ""
    status: TaskStatus = TaskStatus.PENDING
    depends_on: list[str] = Field(default_factory=list)
    estimate_h: float = Field(default=1.0, ge=0)
    summary: str = ""
    error: str = ""
    attempts: int = 0
    completed_generation: int | None = None


class Phase(DurableModel):
    id: str = Field(min_length=1, max_length=128)
    name: str = ""


DECISION_TITLE_MAX = 4_000
"""Longest decision title (a human `decide` text becomes one)."""


class Decision(DurableModel):
    id: str = Field(min_length=1, max_length=160)
    """Up to 160: a human decision's id is `HD-<blocker id>` (blocker ids reach 128)."""
    title: str = Field(default="", max_length=DECISION_TITLE_MAX)
    rationale: str = Field(default="", max_length=16_000)
    by: str = "agent"
    """'agent' or 'human:<who>'."""
    at: datetime | None = None
    blocker_id: str | None = None
    generation: int = 0
    question: str = Field(default="", max_length=DECISION_TITLE_MAX)
    """The question the decision answers (the context protocol's `question`)."""


class Alternative(DurableModel):
    title: str
    reason: str = ""


class BlockerType(str, Enum):
    HUMAN_DECISION = "human_decision"
    TECHNICAL = "technical"
    EXTERNAL = "external"
    MODEL_ERROR = "model_error"


class Blocker(DurableModel):
    id: str = Field(min_length=1, max_length=128)
    type: BlockerType = BlockerType.TECHNICAL
    description: str = Field(default="", max_length=16_000)
    status: Literal["open", "resolved"] = "open"
    resolution: str = ""
    task_id: str | None = None
    opened_at: datetime | None = None
    resolved_at: datetime | None = None


class FileNote(DurableModel):
    path: str = Field(min_length=1, max_length=1_000)
    note: str = ""


class Question(DurableModel):
    """An open question the agent is carrying (free-form sessions), until answered."""

    id: str = Field(min_length=1, max_length=128)
    text: str = Field(default="", max_length=4_000)
    status: Literal["open", "answered"] = "open"
    answer: str = Field(default="", max_length=4_000)


class ErrorRecord(DurableModel):
    source: str
    message: str
    task_id: str | None = None
    generation: int = 0


class Milestone(DurableModel):
    """A completed step and how it was verified (the context protocol's milestone object).

    `ProjectState.milestones` keeps the description as text (what the handoff document
    shows); a record is kept beside it only when the seed file said more than that.
    """

    description: str = Field(default="", max_length=4_000)
    phase: str = ""
    step: str = ""
    completed_at: datetime | None = None
    verification: str = Field(default="", max_length=4_000)


class SeedHealth(DurableModel):
    """The context protocol's `health` block, as imported (an export recomputes it)."""

    total_milestones: int | None = None
    completed_milestones: int | None = None
    completion_percentage: float | None = None
    blockers_open: int | None = None
    blockers_resolved: int | None = None
    sessions_count: int | None = None
    estimated_sessions_remaining: int | None = None


class HandoffRecord(DurableModel):
    """One entry of the orchestrator's `handoff_history`."""

    id: str = ""
    timestamp: datetime | None = None
    tokens: int = 0


class SeedInfo(DurableModel):
    """What a seed file said that the session does not act on but an export writes back."""

    format: str = ""
    """"orchestrator" or "state-json"."""
    created_at: datetime | None = None
    last_updated: datetime | None = None
    last_agent: str = ""
    health: SeedHealth | None = None
    environment: dict[str, Any] = Field(default_factory=dict)
    """Structured environment values (lists, objects, numbers) as the file had them;
    `ProjectState.environment` holds their text."""
    handoff_history: list[HandoffRecord] = Field(default_factory=list)


class ProjectState(DurableModel):
    """Everything the agent must not forget."""

    name: str = "project"
    original_request: str = ""
    goal: str = ""
    phases: list[Phase] = Field(default_factory=list)
    tasks: dict[str, Task] = Field(default_factory=dict)
    current_phase: str | None = None
    milestones: list[str] = Field(default_factory=list)
    decisions: list[Decision] = Field(default_factory=list)
    rejected_alternatives: list[Alternative] = Field(default_factory=list)
    blockers: list[Blocker] = Field(default_factory=list)
    files: list[FileNote] = Field(default_factory=list)
    todos: list[str] = Field(default_factory=list)
    errors: list[ErrorRecord] = Field(default_factory=list)
    environment: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    """The agent's own notes (`add_note`), newest last, at most `NOTES_KEEP_BYTES` in all."""
    notes_archived: int = 0
    """Older notes dropped from `notes` (recallable from the generation that wrote them)."""
    questions: list[Question] = Field(default_factory=list)
    """Questions the agent raised (`ask_question`); answered ones beyond
    `ANSWERED_QUESTIONS_KEEP` are dropped, oldest first."""
    human_messages: list[str] = Field(default_factory=list)
    """The most recent human messages, at most `HUMAN_TEXT_KEEP_BYTES` in all."""
    human_messages_archived: int = 0
    """Older messages dropped from `human_messages` (still in the history of the run
    that received them; `recall` of an earlier generation reads them)."""
    duplicate_completions: int = 0
    """complete_task calls for an already-completed task (refused, never double-counted)."""
    version: str = ""
    """The seed file's project version."""
    current_step: str | None = None
    """The context protocol's current step (its roadmap's steps become tasks `<phase>.<step>`)."""
    milestone_records: list[Milestone] = Field(default_factory=list)
    seed: SeedInfo | None = None
    """Where the state was imported from (None for a state built in code)."""

    @model_validator(mode="after")
    def _dag(self) -> ProjectState:
        for tid, task in self.tasks.items():
            if task.id != tid:
                raise ValueError(f"tasks[{tid!r}].id is {task.id!r}: keys must match ids")
            for dep in task.depends_on:
                if dep not in self.tasks:
                    raise ValueError(f"tasks[{tid!r}].depends_on: unknown task {dep!r}")
        if _has_cycle(self.tasks):
            raise ValueError("tasks: dependency cycle")
        return self

    # ---- reads -------------------------------------------------------------------
    @property
    def free_form(self) -> bool:
        """No tasks: the session is a conversation toward `goal`, ended by `finish`."""
        return not self.tasks

    def open_questions(self) -> list[Question]:
        return [q for q in self.questions if q.status == "open"]

    def done(self, task_id: str) -> bool:
        return self.tasks[task_id].status in DONE_STATUSES

    @property
    def all_done(self) -> bool:
        return all(t.status in DONE_STATUSES for t in self.tasks.values())

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in TaskStatus}
        for t in self.tasks.values():
            out[t.status.value] += 1
        return out

    @property
    def completed_count(self) -> int:
        return sum(1 for t in self.tasks.values() if t.status in DONE_STATUSES)

    def next_eligible(self, limit: int | None = None) -> list[str]:
        """Tasks not done whose dependencies are all done, in plan order.

        Failed tasks are eligible again (a retry); pending ones come first.
        """
        ready: list[str] = []
        failed: list[str] = []
        for tid, t in self.tasks.items():
            if t.status in DONE_STATUSES:
                continue
            if all(self.tasks[d].status in DONE_STATUSES for d in t.depends_on):
                (failed if t.status == TaskStatus.FAILED else ready).append(tid)
        out = ready + failed
        return out[:limit] if limit is not None else out

    def open_blockers(self) -> list[Blocker]:
        return [b for b in self.blockers if b.status == "open"]

    def human_decision_pending(self) -> bool:
        return any(b.type == BlockerType.HUMAN_DECISION for b in self.open_blockers())

    def failed_tasks(self) -> list[Task]:
        return [t for t in self.tasks.values() if t.status == TaskStatus.FAILED]

    def critical_path(self) -> list[str]:
        """Longest chain (by estimate hours) through the remaining tasks."""
        length: dict[str, float] = {}
        prev: dict[str, str | None] = {}
        for tid in _topo_order(self.tasks):
            t = self.tasks[tid]
            if t.status in DONE_STATUSES:
                continue
            best_dep: str | None = None
            for d in t.depends_on:
                if d in length and (best_dep is None or length[d] > length[best_dep]):
                    best_dep = d
            length[tid] = t.estimate_h + (length[best_dep] if best_dep else 0.0)
            prev[tid] = best_dep
        if not length:
            return []
        node: str | None = max(length, key=lambda k: length[k])
        path: list[str] = []
        while node is not None:
            path.append(node)
            node = prev[node]
        return path[::-1]

    def blocker(self, blocker_id: str) -> Blocker | None:
        return next((b for b in self.blockers if b.id == blocker_id), None)


def _topo_order(tasks: dict[str, Task]) -> list[str]:
    seen: set[str] = set()
    order: list[str] = []
    for root in tasks:
        stack: list[tuple[str, bool]] = [(root, False)]
        while stack:
            tid, expanded = stack.pop()
            if expanded:
                order.append(tid)
                continue
            if tid in seen:
                continue
            seen.add(tid)
            stack.append((tid, True))
            stack.extend((d, False) for d in tasks[tid].depends_on if d not in seen)
    return order


def _has_cycle(tasks: dict[str, Task]) -> bool:
    state: dict[str, int] = {}
    for root in tasks:
        if root in state:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            tid, i = stack.pop()
            if i == 0:
                if state.get(tid) == 1:
                    return True
                if state.get(tid) == 2:
                    continue
                state[tid] = 1
            deps = tasks[tid].depends_on
            if i < len(deps):
                stack.append((tid, i + 1))
                dep = deps[i]
                if state.get(dep) == 1:
                    return True
                if state.get(dep) is None:
                    stack.append((dep, 0))
            else:
                state[tid] = 2
    return False
