"""The built-in tools offered to the model: state tools (applied in the workflow) and recall."""

from __future__ import annotations

from temporal_handoff.schemas.model_io import ToolSpec
from temporal_handoff.schemas.project import BlockerType
from temporal_handoff.schemas.state_events import EventOp

STATE_TOOLS: dict[str, EventOp] = {
    "complete_task": "complete_task",
    "fail_task": "fail_task",
    "record_decision": "record_decision",
    "add_blocker": "add_blocker",
    "note_file": "note_file",
    "add_todo": "add_todo",
    "set_phase": "set_phase",
}
"""Tool name → project event op."""

FREE_FORM_STATE_TOOLS: dict[str, EventOp] = {
    "add_note": "add_note",
    "ask_question": "ask_question",
    "answer_question": "answer_question",
}
"""State tools offered to free-form sessions only (a user tool of the same name, legal
before they existed, wins over them)."""

FINISH_TOOL = "finish"
"""Free-form sessions: the agent ends the session with a summary (not a state event)."""

_STR = {"type": "string"}

_SPECS = [
    ToolSpec(
        name="complete_task",
        description="Mark a task done once its work is finished. Its dependencies must be done.",
        input_schema={
            "type": "object",
            "properties": {"task_id": _STR, "summary": _STR},
            "required": ["task_id"],
        },
    ),
    ToolSpec(
        name="fail_task",
        description="Mark a task failed, with the error, so it can be retried.",
        input_schema={
            "type": "object",
            "properties": {"task_id": _STR, "error": _STR},
            "required": ["task_id", "error"],
        },
    ),
    ToolSpec(
        name="record_decision",
        description="Record a decision with its rationale and any rejected alternatives.",
        input_schema={
            "type": "object",
            "properties": {
                "decision_id": _STR,
                "title": _STR,
                "rationale": _STR,
                "rejected": {"type": "array", "items": _STR},
            },
            "required": ["title"],
        },
    ),
    ToolSpec(
        name="add_blocker",
        description=(
            "Raise a blocker. Type human_decision pauses the session until a human decides."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "blocker_id": _STR,
                "blocker_type": {"type": "string", "enum": [t.value for t in BlockerType]},
                "description": _STR,
                "task_id": _STR,
            },
            "required": ["description"],
        },
    ),
    ToolSpec(
        name="note_file",
        description="Remember a file that matters, with a short note.",
        input_schema={
            "type": "object",
            "properties": {"path": _STR, "note": _STR},
            "required": ["path"],
        },
    ),
    ToolSpec(
        name="add_todo",
        description="Add a todo item.",
        input_schema={"type": "object", "properties": {"text": _STR}, "required": ["text"]},
    ),
    ToolSpec(
        name="set_phase",
        description="Set the current phase.",
        input_schema={"type": "object", "properties": {"phase_id": _STR}, "required": ["phase_id"]},
    ),
    ToolSpec(
        name="recall",
        description=(
            "Read details a previous generation left out of the handoff: a section "
            "(tasks, decisions, blockers, files, todos, errors, environment, human_messages) "
            "of generation N's state, optionally only some ids."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "generation": {"type": "integer"},
                "section": _STR,
                "ids": {"type": "array", "items": _STR},
            },
            "required": ["generation", "section"],
        },
    ),
]


_FREE_FORM_SPECS = [
    ToolSpec(
        name="add_note",
        description=(
            "Keep a short note for yourself: a fact learned, a result, what you are doing. "
            "Notes are what your successor reads after a handoff."
        ),
        input_schema={"type": "object", "properties": {"text": _STR}, "required": ["text"]},
    ),
    ToolSpec(
        name="ask_question",
        description="Record an open question you still need answered (by a human or later work).",
        input_schema={
            "type": "object",
            "properties": {"question_id": _STR, "text": _STR},
            "required": ["text"],
        },
    ),
    ToolSpec(
        name="answer_question",
        description="Close an open question with its answer.",
        input_schema={
            "type": "object",
            "properties": {"question_id": _STR, "answer": _STR},
            "required": ["question_id", "answer"],
        },
    ),
    ToolSpec(
        name=FINISH_TOOL,
        description=(
            "End the session when the goal is met (or cannot be): a summary of the outcome "
            "for the human. Reply in plain text instead while the conversation goes on."
        ),
        input_schema={"type": "object", "properties": {"summary": _STR}, "required": ["summary"]},
    ),
]

_TASK_ONLY = ("complete_task", "fail_task", "set_phase")


def state_tool_specs(free_form: bool = False, user_tools: tuple[str, ...] = ()) -> list[ToolSpec]:
    """The built-in tools, in a stable order (the prompt prefix must not change).

    A free-form session (a goal, no tasks) gets notes, questions and `finish` instead of
    the task tools, less those a user tool of the same name replaces."""
    if not free_form:
        return list(_SPECS)
    extra = [s for s in _FREE_FORM_SPECS if s.name not in user_tools]
    return [s for s in _SPECS if s.name not in _TASK_ONLY] + extra
