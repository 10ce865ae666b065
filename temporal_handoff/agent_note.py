"""The agent's own note to its successor, asked for once at the seal of a handoff.

Before a generation hands off, the session may ask the model one last question (one
bounded turn, text only): what was it doing, what did it learn that no state tool
recorded? The reply is cleaned and cut here, rides the seal request into the handoff
document, and reaches the successor inside an escaped ``<agent_note>`` block, labelled
as the predecessor's own words: context, never state (the state tools' record is what
the handoff trusts). The renderer drops it first when the budget is tight.

Pure (stdlib only): imported by workflow code and by the scripted test brains, which
recognise the request by :data:`NOTE_REQUEST_MARKER`.
"""

from __future__ import annotations

import re
from typing import Any

from temporal_handoff.human_text import NOTE_KIND

__all__ = [
    "NOTE_ACTIVITY_ID",
    "NOTE_CHARS_PER_TOKEN",
    "NOTE_REQUEST_MARKER",
    "NOTE_TAG",
    "clean_note",
    "is_note_request",
    "note_char_cap",
    "request_text",
    "without_notes",
]

NOTE_ACTIVITY_ID = "handoff-note"
"""Activity id of the note turn's `call_model` (one per run at most): how readers of
history tell it from the conversation's turns."""

NOTE_REQUEST_MARKER = "[handoff-note-request]"
"""Leads the request (the last user text of the note turn)."""

NOTE_TAG = NOTE_KIND
"""The block the successor reads the note in (see `human_text`: escaped like human text)."""

NOTE_CHARS_PER_TOKEN = 4
"""Characters kept per token of `handoff_note_max_tokens` (the reply is cut to that)."""

_NOTE_BLOCK_RE = re.compile(rf"<{NOTE_TAG}(?: [^<>]*)?>.*?</{NOTE_TAG}>", re.DOTALL)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_BLANKS_RE = re.compile(r"\n{3,}")


def note_char_cap(max_tokens: int) -> int:
    """Characters of a note answered within `max_tokens`."""
    return max(1, max_tokens) * NOTE_CHARS_PER_TOKEN


def request_text(generation: int, max_tokens: int) -> str:
    """The user text of the note turn (appended to the conversation, never kept)."""
    words = max(20, int(max_tokens * 0.6))
    return (
        f"{NOTE_REQUEST_MARKER} Your context is full: generation {generation} of this "
        "session ends now and a successor continues from a handoff built from what you "
        "recorded with the state tools. Write a short note to your successor (at most "
        f"about {words} words, plain text, no tool calls): what you were doing when you "
        "stopped, and what you learned that no state tool recorded (dead ends, hunches, "
        "where to look next). Do not repeat the recorded state. The successor sees this "
        "note quoted, as your words, not as verified state."
    )


def is_note_request(text: str) -> bool:
    """Whether a user text is the session's request for a note."""
    return NOTE_REQUEST_MARKER in text


def clean_note(content: list[dict[str, Any]], max_chars: int) -> str | None:
    """The note in a reply's content blocks, cleaned and cut to `max_chars`.

    None when there is no usable note: a reply that calls a tool (the note turn offers
    none it may call), or one without text.
    """
    if any(isinstance(b, dict) and b.get("type") == "tool_use" for b in content):
        return None
    text = "\n".join(
        str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text"
    )
    text = _CONTROL_RE.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = text.replace(NOTE_REQUEST_MARKER, "")
    lines = [line.rstrip() for line in text.split("\n")]
    text = _BLANKS_RE.sub("\n\n", "\n".join(lines)).strip()
    if not text:
        return None
    if len(text) > max_chars:
        cut = text[: max(1, max_chars - 1)]
        space = cut.rfind(" ")
        if space > max_chars // 2:
            cut = cut[:space]
        text = cut.rstrip() + "…"
    return text


def without_notes(text: str) -> str:
    """`text` without its ``<agent_note>`` blocks (probes must not count what a note
    says as an item the prompt holds)."""
    return _NOTE_BLOCK_RE.sub("[agent note]", text)
