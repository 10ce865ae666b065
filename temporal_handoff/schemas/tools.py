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


def state_tool_specs() -> list[ToolSpec]:
    """The built-in tools, in a stable order (the prompt prefix must not change)."""
    return list(_SPECS)
