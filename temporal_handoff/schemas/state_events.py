"""State events: every change to a `ProjectState`, checked and applied by pure functions.

A state-tool call or a human command becomes a :class:`StateEvent`; :func:`check_event`
validates it against the state without changing it and :func:`apply_event` applies it
in place. The session and the handoff child apply the same events, so both hold the
same state.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, ValidationError

from temporal_handoff.schemas.base import DurableModel
from temporal_handoff.schemas.project import (
    DECISION_TITLE_MAX,
    DONE_STATUSES,
    Alternative,
    Blocker,
    BlockerType,
    Decision,
    ErrorRecord,
    FileNote,
    ProjectState,
    Question,
    Task,
    TaskStatus,
)

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


def _drop_oldest(texts: list[str], budget: int) -> int:
    """Delete the oldest texts until the rest fit `budget` UTF-8 bytes (the newest always
    stays); how many were deleted."""
    sizes = [len(t.encode("utf-8")) for t in texts]
    total, drop = sum(sizes), 0
    while total > budget and drop < len(sizes) - 1:
        total -= sizes[drop]
        drop += 1
    del texts[:drop]
    return drop


def _trim_notes(state: ProjectState) -> None:
    """Keep the newest notes within NOTES_KEEP_BYTES."""
    state.notes_archived += _drop_oldest(state.notes, NOTES_KEEP_BYTES)


def _trim_human_messages(state: ProjectState) -> None:
    """Keep the newest messages within HUMAN_TEXT_KEEP_BYTES."""
    state.human_messages_archived += _drop_oldest(state.human_messages, HUMAN_TEXT_KEEP_BYTES)


def _phase_milestone(state: ProjectState, phase: str) -> None:
    if not phase:
        return
    in_phase = [t for t in state.tasks.values() if t.phase == phase]
    if in_phase and all(t.status in DONE_STATUSES for t in in_phase):
        label = f"phase {phase} complete"
        if label not in state.milestones:
            state.milestones.append(label)
