"""Free-form sessions: a goal and no tasks, run as a conversation.

The agent works toward the goal with its tools (notes, decisions, questions, files and
the user's own tools), answers the human in plain text, and ends the session with
`finish` and a summary. After a reply without tool calls the session either waits for
the human's next message (`when_quiet="wait"`, the default for free-form sessions:
visible as AWAITING_INPUT) or nudges the model on (task sessions), ending
AGENT_FINISHED after `max_quiet_turns` quiet replies in a row.

Pure helpers for the run loop (no Temporal calls).
"""

from __future__ import annotations

from typing import Any

from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.project import ProjectState
from temporal_handoff.schemas.tools import FINISH_TOOL

SUMMARY_MAX_CHARS = 16_000
EXCHANGE_KEEP = 10
"""Lines of the recent exchange carried to the next handoff document."""
EXCHANGE_LINE_CHARS = 600


def waits_when_quiet(cfg: SessionConfig, free_form: bool) -> bool:
    """Whether a reply without tool calls waits for the human's next message."""
    if cfg.when_quiet == "auto":
        return free_form
    return cfg.when_quiet == "wait"


def opening_text(state: ProjectState) -> str:
    """Generation 0's first user message in a free-form session."""
    lines = [
        f"Session: {state.name}",
        f"Request: {state.original_request}" if state.original_request else "",
        f"Goal: {state.goal}" if state.goal else "Goal: (none given; help the human)",
        "This session is a conversation, not a task list. Work toward the goal with your "
        "tools; keep what matters with add_note, record_decision, ask_question and "
        "note_file (your successor after a context handoff sees those, not this "
        "conversation). Answer the human in plain text; when the goal is met, call "
        f"`{FINISH_TOOL}` with a summary.",
    ]
    return "\n".join(line for line in lines if line)


def nudge_text(free_form: bool) -> str:
    """The session's message after a quiet reply, when it does not wait for a human."""
    return (
        f"Continue toward the goal. Call `{FINISH_TOOL}` with a summary when it is met."
        if free_form
        else ""
    )


def finish_summary(tool_input: dict[str, Any]) -> tuple[str | None, str]:
    """(summary, reply for the model): the summary is None if the input is invalid."""
    summary = tool_input.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        return None, f"error: {FINISH_TOOL}: summary: a non-empty text is required"
    if len(summary) > SUMMARY_MAX_CHARS:
        return None, (
            f"error: {FINISH_TOOL}: summary: at most {SUMMARY_MAX_CHARS:,} characters "
            f"(got {len(summary):,})"
        )
    return summary.strip(), "finished: the session ends after this turn"


def recent_exchange(carried: list[str], current: list[str]) -> list[str]:
    """The newest `EXCHANGE_KEEP` lines: the predecessor's, then this generation's."""
    return (list(carried) + list(current))[-EXCHANGE_KEEP:]
