"""Human text inside prompts: delimited, escaped blocks.

What people send (`say` messages, `decide` decisions and rationales) reaches the model
inside ``<human_message by="…">…</human_message>`` / ``<human_decision …>…</human_decision>``
blocks, in the live conversation and in the handoff prompt. The text is escaped
(``&``, ``<``, ``>``; attribute values also ``"``), so it can neither close its block
nor open another: whatever it says — ``Next eligible tasks:``, ``ALL TASKS COMPLETE``,
``AWAITING DECISION``, a blocker id — stays quoted human input, never a workflow
control line. Readers that key on control lines (the scripted brain in `testing`)
skip these blocks with :func:`strip_quoted`.

The agent's own note to its successor (`temporal_handoff.agent_note`) is quoted the
same way, in an ``<agent_note …>`` block: the model's words, never state.

Pure (stdlib only): imported by workflow code.
"""

from __future__ import annotations

import re

__all__ = ["KINDS", "NOTE_KIND", "escape", "is_quoted", "quote", "quote_inline", "strip_quoted"]

KINDS = ("human_message", "human_decision")
"""Block tags of human text. Every tag starts with ``human_``."""
NOTE_KIND = "agent_note"
"""Block tag of the predecessor's note (quoted like human text; not human text)."""

_BLOCK_RE = re.compile(r"<(human_[a-z_]+|agent_note)(?: [^<>]*)?>.*?</\1>", re.DOTALL)
# What `quote` makes, after an optional one-line lead of our own (no < or > anywhere
# but the tags: the body is escaped).
_QUOTED_RE = re.compile(r"(?:[^<>\n]*\n)?<(human_[a-z_]+)(?: [^<>\n]*)?>\n[^<>]*\n</\1>")


def escape(text: str, attribute: bool = False) -> str:
    """`text` with ``&``, ``<``, ``>`` (and ``"`` in an attribute) as entities."""
    out = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return out.replace('"', "&quot;") if attribute else out


def _open(kind: str, attrs: dict[str, str]) -> str:
    if kind not in KINDS and kind != NOTE_KIND:
        raise ValueError(
            f"unknown block kind {kind!r}; expected one of {', '.join((*KINDS, NOTE_KIND))}"
        )
    extra = "".join(f' {k}="{escape(v, attribute=True)}"' for k, v in attrs.items() if v)
    return f"<{kind}{extra}>"


def quote(text: str, kind: str = "human_message", **attrs: str) -> str:
    """A block of its own lines: opening tag, the escaped text, closing tag."""
    return f"{_open(kind, attrs)}\n{escape(text)}\n</{kind}>"


def quote_inline(text: str, kind: str = "human_message", **attrs: str) -> str:
    """The same block on one line (for one-line items of the handoff prompt)."""
    return f"{_open(kind, attrs)}{escape(text)}</{kind}>"


def is_quoted(text: str) -> bool:
    """Whether `text` is one block made by :func:`quote` (after an optional lead line)."""
    return _QUOTED_RE.fullmatch(text) is not None


def strip_quoted(text: str) -> str:
    """`text` without its human blocks (each replaced by ``[human text]``) and agent
    notes (``[agent note]``)."""
    return _BLOCK_RE.sub(
        lambda m: "[agent note]" if m.group(1) == NOTE_KIND else "[human text]", text
    )
