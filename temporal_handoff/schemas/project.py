"""Project state: the durable record of what the agent is doing and has decided.

Tasks form a DAG grouped in phases. Every change goes through :func:`apply_event`,
a pure function: the session applies each state-tool call and human command as an
event, and the handoff child replays the same events as deltas, so both hold the
same state without shipping the whole project on every turn.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

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


# ---- events ---------------------------------------------------------------------

EventOp = Literal[
    "complete_task",
    "fail_task",
    "record_decision",
    "add_blocker",
    "resolve_blocker",
    "note_file",
    "add_todo",
    "set_phase",
    "skip_task",
    "retry_task",
    "human_message",
    "record_error",
    "reject_alternative",
    "set_environment",
    "add_note",
    "ask_question",
    "answer_question",
]


NOTES_KEEP_BYTES = 64 * 1024
"""Budget of `ProjectState.notes` (UTF-8 bytes): carried in every successor's input."""
ANSWERED_QUESTIONS_KEEP = 50
"""Answered questions kept in the state (open ones are always kept)."""
MAX_OPEN_QUESTIONS = 100

HUMAN_TEXT_KEEP_BYTES = 256 * 1024
"""Budget of `ProjectState.human_messages` (UTF-8 bytes): the state is carried in every
successor's input, so it must not grow with every message a human ever sent."""


class StateEvent(DurableModel):
    """One change to the project state, applied by :func:`apply_event`."""

    op: EventOp
    args: dict[str, Any] = Field(default_factory=dict)
    at: datetime | None = None
    by: str = "agent"
    generation: int = 0


class EventError(ValueError):
    """The event does not apply to the current state (unknown id, already done...)."""


# Tool input models: the model's tool arguments are validated before they touch state.
class _Args(DurableModel):
    """Extra keys the model sends are ignored (and a newer worker's, in a delta)."""


class CompleteTaskArgs(_Args):
    task_id: str = Field(min_length=1)
    summary: str = Field(default="", max_length=16_000)


class FailTaskArgs(_Args):
    task_id: str = Field(min_length=1)
    error: str = Field(default="", max_length=16_000)


class RecordDecisionArgs(_Args):
    decision_id: str | None = Field(default=None, max_length=160)
    title: str = Field(min_length=1, max_length=DECISION_TITLE_MAX)
    rationale: str = Field(default="", max_length=16_000)
    rejected: list[str] = Field(default_factory=list)
    blocker_id: str | None = None


class AddBlockerArgs(_Args):
    blocker_id: str | None = Field(default=None, max_length=128)
    blocker_type: BlockerType = BlockerType.TECHNICAL
    description: str = Field(min_length=1, max_length=16_000)
    task_id: str | None = None


class ResolveBlockerArgs(_Args):
    blocker_id: str = Field(min_length=1)
    resolution: str = Field(default="", max_length=16_000)


class NoteFileArgs(_Args):
    path: str = Field(min_length=1, max_length=1_000)
    note: str = Field(default="", max_length=4_000)


class AddTodoArgs(_Args):
    text: str = Field(min_length=1, max_length=4_000)


class SetPhaseArgs(_Args):
    phase_id: str = Field(min_length=1)


class TaskIdArgs(_Args):
    task_id: str = Field(min_length=1)


class HumanMessageArgs(_Args):
    text: str = Field(min_length=1)


class RecordErrorArgs(_Args):
    source: str = "model"
    message: str = Field(min_length=1)
    task_id: str | None = None


class RejectAlternativeArgs(_Args):
    title: str = Field(min_length=1, max_length=4_000)
    reason: str = Field(default="", max_length=16_000)


class SetEnvironmentArgs(_Args):
    key: str = Field(min_length=1, max_length=200)
    value: str = Field(default="", max_length=4_000)


class AddNoteArgs(_Args):
    text: str = Field(min_length=1, max_length=2_000)


class AskQuestionArgs(_Args):
    question_id: str | None = Field(default=None, max_length=128)
    text: str = Field(min_length=1, max_length=4_000)


class AnswerQuestionArgs(_Args):
    question_id: str = Field(min_length=1, max_length=128)
    answer: str = Field(default="", max_length=4_000)


EVENT_ARGS: dict[str, type[_Args]] = {
    "complete_task": CompleteTaskArgs,
    "fail_task": FailTaskArgs,
    "record_decision": RecordDecisionArgs,
    "add_blocker": AddBlockerArgs,
    "resolve_blocker": ResolveBlockerArgs,
    "note_file": NoteFileArgs,
    "add_todo": AddTodoArgs,
    "set_phase": SetPhaseArgs,
    "skip_task": TaskIdArgs,
    "retry_task": TaskIdArgs,
    "human_message": HumanMessageArgs,
    "record_error": RecordErrorArgs,
    "reject_alternative": RejectAlternativeArgs,
    "set_environment": SetEnvironmentArgs,
    "add_note": AddNoteArgs,
    "ask_question": AskQuestionArgs,
    "answer_question": AnswerQuestionArgs,
}


def _task(state: ProjectState, task_id: str) -> Task:
    task = state.tasks.get(task_id)
    if task is None:
        raise EventError(f"unknown task {task_id!r}")
    return task


def check_event(state: ProjectState, event: StateEvent) -> _Args:
    """Validate an event against the state without changing it; raise EventError."""
    try:
        args = EVENT_ARGS[event.op].model_validate(event.args)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "input"
        raise EventError(f"{event.op}: {loc}: {first['msg']}") from None
    if isinstance(args, (CompleteTaskArgs, FailTaskArgs, TaskIdArgs)):
        task = _task(state, args.task_id)
        if event.op == "complete_task" or event.op == "skip_task":
            for dep in task.depends_on:
                if state.tasks[dep].status not in DONE_STATUSES:
                    raise EventError(f"{args.task_id}: dependency {dep!r} is not done")
        if event.op == "retry_task" and task.status not in (TaskStatus.FAILED, TaskStatus.SKIPPED):
            raise EventError(f"{args.task_id}: only failed or skipped tasks can be retried")
        if event.op == "skip_task" and task.status == TaskStatus.COMPLETED:
            raise EventError(f"{args.task_id}: already completed")
        if event.op == "skip_task" and task.status == TaskStatus.SKIPPED:
            raise EventError(f"{args.task_id}: already skipped")
    if isinstance(args, ResolveBlockerArgs):
        blocker = state.blocker(args.blocker_id)
        if blocker is None:
            raise EventError(f"unknown blocker {args.blocker_id!r}")
        if blocker.status == "resolved":
            raise EventError(f"blocker {args.blocker_id!r} is already resolved")
    if isinstance(args, AskQuestionArgs):
        if args.question_id and any(q.id == args.question_id for q in state.questions):
            raise EventError(f"question {args.question_id!r} already exists")
        if len(state.open_questions()) >= MAX_OPEN_QUESTIONS:
            raise EventError(
                f"ask_question: {MAX_OPEN_QUESTIONS} questions are open; answer some first"
            )
    if isinstance(args, AnswerQuestionArgs):
        question = next((q for q in state.questions if q.id == args.question_id), None)
        if question is None:
            raise EventError(f"unknown question {args.question_id!r}")
        if question.status == "answered":
            raise EventError(f"question {args.question_id!r} is already answered")
    if isinstance(args, AddBlockerArgs) and args.blocker_id and state.blocker(args.blocker_id):
        raise EventError(f"blocker {args.blocker_id!r} already exists")
    if isinstance(args, SetPhaseArgs) and state.phases and args.phase_id not in {
        p.id for p in state.phases
    }:
        raise EventError(f"unknown phase {args.phase_id!r}")
    return args


def apply_event(state: ProjectState, event: StateEvent) -> str:
    """Apply one event to `state` in place and return a one-line result for the model.

    Raises:
        EventError: the event is invalid for this state; `state` is unchanged.
    """
    args = check_event(state, event)
    g = event.generation
    if isinstance(args, CompleteTaskArgs):
        task = state.tasks[args.task_id]
        if task.status == TaskStatus.COMPLETED:
            state.duplicate_completions += 1
            return f"{task.id} was already completed; nothing changed"
        task.status = TaskStatus.COMPLETED
        task.summary = args.summary
        task.completed_generation = g
        task.attempts += 1
        if task.phase and task.phase != state.current_phase:
            state.current_phase = task.phase
        _phase_milestone(state, task.phase)
        return f"completed {task.id}"
    if isinstance(args, FailTaskArgs):
        task = state.tasks[args.task_id]
        if task.status == TaskStatus.COMPLETED:
            raise EventError(f"{task.id}: already completed")
        if task.status == TaskStatus.SKIPPED:
            raise EventError(f"{task.id}: skipped by a human; it needs retry_task first")
        task.status = TaskStatus.FAILED
        task.error = args.error
        task.attempts += 1
        state.errors.append(
            ErrorRecord(source="task", message=args.error or "failed", task_id=task.id, generation=g)
        )
        return f"marked {task.id} failed"
    if isinstance(args, RecordDecisionArgs):
        did = args.decision_id or f"D{len(state.decisions) + 1:04d}"
        if any(d.id == did for d in state.decisions):
            return f"decision {did} already recorded"
        state.decisions.append(
            Decision(
                id=did, title=args.title, rationale=args.rationale, by=event.by, at=event.at,
                blocker_id=args.blocker_id, generation=g,
            )
        )
        for alt in args.rejected:
            state.rejected_alternatives.append(Alternative(title=alt, reason=f"rejected by {did}"))
        return f"recorded decision {did}"
    if isinstance(args, AddBlockerArgs):
        bid = args.blocker_id or f"B{len(state.blockers) + 1:04d}"
        state.blockers.append(
            Blocker(
                id=bid, type=args.blocker_type, description=args.description,
                task_id=args.task_id, opened_at=event.at,
            )
        )
        return f"opened blocker {bid} ({args.blocker_type.value})"
    if isinstance(args, ResolveBlockerArgs):
        blocker = state.blocker(args.blocker_id)
        assert blocker is not None
        blocker.status = "resolved"
        blocker.resolution = args.resolution
        return f"resolved blocker {blocker.id}"
    if isinstance(args, NoteFileArgs):
        for f in state.files:
            if f.path == args.path:
                f.note = args.note or f.note
                return f"updated note on {args.path}"
        state.files.append(FileNote(path=args.path, note=args.note))
        return f"noted {args.path}"
    if isinstance(args, AddTodoArgs):
        state.todos.append(args.text)
        return "todo added"
    if isinstance(args, SetPhaseArgs):
        state.current_phase = args.phase_id
        return f"phase is now {args.phase_id}"
    if isinstance(args, TaskIdArgs):
        task = state.tasks[args.task_id]
        if event.op == "skip_task":
            task.status = TaskStatus.SKIPPED
            return f"skipped {task.id}"
        task.status = TaskStatus.PENDING
        task.error = ""
        return f"{task.id} will be retried"
    if isinstance(args, HumanMessageArgs):
        state.human_messages.append(args.text)
        _trim_human_messages(state)
        return "message received"
    if isinstance(args, RecordErrorArgs):
        state.errors.append(
            ErrorRecord(source=args.source, message=args.message, task_id=args.task_id, generation=g)
        )
        return "error recorded"
    if isinstance(args, RejectAlternativeArgs):
        state.rejected_alternatives.append(Alternative(title=args.title, reason=args.reason))
        return "alternative recorded"
    if isinstance(args, SetEnvironmentArgs):
        state.environment[args.key] = args.value
        return f"environment {args.key} set"
    if isinstance(args, AddNoteArgs):
        state.notes.append(args.text)
        _trim_notes(state)
        return f"note {len(state.notes) + state.notes_archived} kept"
    if isinstance(args, AskQuestionArgs):
        qid, n = args.question_id, len(state.questions)
        taken = {q.id for q in state.questions}
        while qid is None or qid in taken:
            n += 1
            qid = f"Q{n:04d}"
        state.questions.append(Question(id=qid, text=args.text))
        return f"question {qid} is open"
    if isinstance(args, AnswerQuestionArgs):
        question = next(q for q in state.questions if q.id == args.question_id)
        question.status = "answered"
        question.answer = args.answer
        answered = [q for q in state.questions if q.status == "answered"]
        for old in answered[: max(0, len(answered) - ANSWERED_QUESTIONS_KEEP)]:
            state.questions.remove(old)
        return f"question {args.question_id} answered"
    raise EventError(f"unhandled op {event.op}")  # pragma: no cover - EVENT_ARGS is exhaustive


def _trim_notes(state: ProjectState) -> None:
    """Keep the newest notes within NOTES_KEEP_BYTES (the newest always stays)."""
    sizes = [len(n.encode("utf-8")) for n in state.notes]
    total, drop = sum(sizes), 0
    while total > NOTES_KEEP_BYTES and drop < len(sizes) - 1:
        total -= sizes[drop]
        drop += 1
    if drop:
        del state.notes[:drop]
        state.notes_archived += drop


def _trim_human_messages(state: ProjectState) -> None:
    """Keep the newest messages within HUMAN_TEXT_KEEP_BYTES (the newest always stays)."""
    sizes = [len(m.encode("utf-8")) for m in state.human_messages]
    total = sum(sizes)
    drop = 0
    while total > HUMAN_TEXT_KEEP_BYTES and drop < len(sizes) - 1:
        total -= sizes[drop]
        drop += 1
    if drop:
        del state.human_messages[:drop]
        state.human_messages_archived += drop


def _phase_milestone(state: ProjectState, phase: str) -> None:
    if not phase:
        return
    in_phase = [t for t in state.tasks.values() if t.phase == phase]
    if in_phase and all(t.status in DONE_STATUSES for t in in_phase):
        label = f"phase {phase} complete"
        if label not in state.milestones:
            state.milestones.append(label)


# ---- importers ------------------------------------------------------------------


def _dict(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise ValueError(f"{where}: expected text, got {type(value).__name__}")
    return str(value)


def _status(value: Any, where: str) -> TaskStatus:
    text = _text(value, where).lower() or "pending"
    return TaskStatus(text) if text in TaskStatus._value2member_map_ else TaskStatus.PENDING


def _hours(value: Any, where: str) -> float:
    if value is None or value == "":
        return 1.0
    try:
        hours = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a number of hours, got {value!r}") from None
    if not hours >= 0:  # also rejects NaN
        raise ValueError(f"{where}: hours must be ≥ 0, got {value!r}")
    return hours


def _raw_tasks(value: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        return [{**_dict(v, f"{where}[{k!r}]"), "id": k} for k, v in value.items()]
    items = [_dict(v, f"{where}[{i}]") for i, v in enumerate(_list(value, where))]
    for i, item in enumerate(items):
        if _text(item.get("id"), f"{where}[{i}].id") == "":
            raise ValueError(f"{where}[{i}].id: missing task id")
    return items


def _import_task(raw: dict[str, Any], where: str, phase: str) -> Task:
    deps = raw.get("dependencies") if raw.get("dependencies") is not None else raw.get("depends_on")
    return Task(
        id=_text(raw["id"], f"{where}.id"),
        title=_text(raw.get("title") or raw.get("name") or raw.get("description"), f"{where}.title"),
        phase=_text(raw.get("phase"), f"{where}.phase") or phase,
        status=_status(raw.get("status"), f"{where}.status"),
        depends_on=[_text(d, f"{where}.dependencies") for d in _list(deps, f"{where}.dependencies")],
        estimate_h=_hours(raw.get("estimate_h", raw.get("estimated_hours")), f"{where}.estimate_h"),
    )


def _env(value: Any, where: str) -> dict[str, str]:
    return {str(k): _text(v, f"{where}.{k}") for k, v in _dict(value, where).items()}


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
