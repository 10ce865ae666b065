"""The handoff note's Temporal side: one bounded model turn at the seal.

When a generation hands off (`SessionConfig.handoff_note`), the session asks the model
once for a short note to its successor (`temporal_handoff.agent_note`), in text, with
no tool call. The tools stay defined and `tool_choice` is not sent: either change would
invalidate the cached prompt (tools, or the messages after a `tool_choice` change), and
the note turn reads the whole conversation from cache (measured on the 80-task caching
test: prompt cost 0.135 vs 0.182 USD with `tool_choice: none`). A reply that calls a tool
anyway is no note (the calls are never run). The turn is optional in every way: it is
skipped when the pre-flight says the prompt plus the note's `max_tokens` would not fit
the window (estimated here first, then measured by the activity), after an overflow,
and every error, timeout or tool call just means no note. It never raises a human
blocker and never fails the handoff. Its usage goes into the ledger as a note call
(`TokenLedger.record_note`); the conversation is left as it was.

The activity is `call_model` with the id :data:`NOTE_ACTIVITY_ID`, so readers of history
(`temporal_handoff.runs`) tell the note turn from the conversation's turns.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, CancelledError

with workflow.unsafe.imports_passed_through():
    from temporal_handoff.agent_note import (
        NOTE_ACTIVITY_ID,
        clean_note,
        note_char_cap,
        request_text,
    )
    from temporal_handoff.schemas.config import SessionConfig
    from temporal_handoff.schemas.model_io import ModelResponse, ToolSpec
    from temporal_handoff.schemas.tokens import TokenLedger
    from temporal_handoff.workflows import _model_turn as turn_io

NOTE_PATCH = "handoff-note-1"
"""Sessions recorded before the note hand off without asking for one."""


@dataclass
class NoteOutcome:
    text: str = ""
    """The cleaned note ("" when there is none)."""
    skipped: str = ""
    """Why there is no note (numbers and states only, never prompt text)."""

    def memo(self) -> str:
        return f"{len(self.text)} chars" if self.text else f"skipped: {self.skipped}"


def note_messages(messages: list[dict[str, Any]], request: str) -> list[dict[str, Any]] | None:
    """The conversation with the note request as its last user text (a copy: the
    conversation itself is not changed). None when it cannot be asked: the last reply
    calls tools whose results were never sent (the API needs them answered first)."""
    if not messages:
        return None
    out = list(messages)
    last = out[-1]
    if last.get("role") == "user":
        content = last.get("content")
        if isinstance(content, str):
            out[-1] = {"role": "user", "content": content + "\n\n" + request}
        else:
            out[-1] = {
                "role": "user",
                "content": list(content or []) + [{"type": "text", "text": request}],
            }
        return out
    content = last.get("content")
    if isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_use" for b in content
    ):
        return None
    out.append({"role": "user", "content": request})
    return out


async def note_turn(
    cfg: SessionConfig,
    ledger: TokenLedger,
    model: str,
    *,
    system: list[dict[str, Any]],
    messages: list[dict[str, Any]],
    tools: list[ToolSpec],
    known_upto: int,
    generation: int,
    turn: int,
) -> NoteOutcome:
    """Ask for the note; its usage (or what a failed call was billed) goes to `ledger`.

    Raises:
        ActivityError: only a cancellation (the session was cancelled: an abort).
    """
    max_tokens = min(cfg.handoff_note_max_tokens, ledger.output_limit or 128_000)
    request = request_text(generation, max_tokens)
    asked = note_messages(messages, request)
    if asked is None:
        return NoteOutcome(skipped="the last reply's tool calls are unanswered")
    window = ledger.context_window
    limit = window - max_tokens
    # The workflow's estimate first (no call when it clearly cannot fit); the
    # activity's pre-flight measures the prompt and refuses if it would not.
    estimate = ledger.next_prompt_tokens + turn_io.appended_tokens(
        ledger, model, {"role": "user", "content": request}
    )
    if estimate > limit:
        return NoteOutcome(
            skipped=f"no room: ~{estimate} prompt tokens + {max_tokens} > window {window}"
        )
    req = turn_io.model_request(
        cfg, ledger, model, system=system, messages=asked, tools=tools,
        max_tokens=max_tokens, turn=turn, generation=generation, known_upto=known_upto,
        preflight_limit=limit,
    )
    # Each attempt is bounded like any model call; all of them by the note's budget.
    timeout = timedelta(seconds=cfg.handoff_note_timeout_s)
    attempt = timedelta(seconds=min(cfg.model_call_timeout_s, cfg.handoff_note_timeout_s))
    try:
        resp = await workflow.execute_activity(
            "call_model",
            req,
            result_type=ModelResponse,
            activity_id=NOTE_ACTIVITY_ID,
            start_to_close_timeout=attempt,
            schedule_to_close_timeout=timeout,
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=min(1.0, cfg.model_retry_initial_s)),
                backoff_coefficient=2.0,
                maximum_attempts=3,
            ),
            summary=f"handoff note · gen {generation}",
        )
    except ActivityError as err:
        if isinstance(err.cause, CancelledError):
            raise
        billed = turn_io.billed_in_failure(err)
        if billed.answers:
            ledger.record_lost(billed.usage, model, billed.answers)
        status, _ = turn_io.error_parts(err)
        return NoteOutcome(
            skipped=f"model call failed ({status or type(err.cause).__name__}, "
            f"{err.retry_state.name if err.retry_state else 'no retry state'})"
        )
    if resp.lost_answers:
        ledger.record_lost(resp.lost_usage, model, resp.lost_answers)
    if resp.preflight_refused:
        turn_io.record_refusal(ledger, resp)
        return NoteOutcome(
            skipped=f"pre-flight: ~{resp.estimated_prompt_tokens} prompt tokens + "
            f"{max_tokens} > window {window}"
        )
    ledger.record_note(resp.usage, model)
    text = clean_note(resp.content, note_char_cap(max_tokens))
    if text is None:
        return NoteOutcome(skipped=f"no text in the reply (stop_reason {resp.stop_reason})")
    return NoteOutcome(text=text)
