"""What the agent and the humans said: transcript entries read from a conversation.

One pure function, `transcript_of`, turns a generation's Messages API conversation into
entries. The session's `transcript` query applies it to the live conversation; `handoff
transcript` applies it to a closed run's last model call read from Temporal history, so
both show the same thing.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import Field, ValidationError

from temporal_handoff.schemas.base import DurableModel, HumanInput

HUMAN_PREFIX = "[human] "
"""How human text was marked in conversations before patch quote-human-text-1; since,
it is a delimited, escaped block (`temporal_handoff.human_text`)."""

_BLOCK_RE = re.compile(r"<(human_[a-z_]+)(?: [^<>]*)?>\n?(.*?)\n?</\1>", re.DOTALL)

Role = Literal["session", "human", "agent", "tool"]


class TranscriptEntry(DurableModel):
    """One turn's worth of text from one side."""

    generation: int = 0
    index: int = 0
    """Position in its generation's transcript (0 = the generation's opening message)."""
    role: Role
    """session: the opening and the session's own nudges; human: `say` and decisions;
    agent: the model's reply; tool: a tool result."""
    text: str = ""
    tool_calls: list[str] = Field(default_factory=list)
    """The agent's tool calls in this reply, as `name {input json}` (clipped)."""
    is_error: bool = False
    """A tool result marked `is_error`."""

    def line(self) -> str:
        """One readable line (or a few) for a terminal."""
        head = f"[gen {self.generation} #{self.index}] {self.role}"
        body = self.text
        if self.tool_calls:
            calls = "; ".join(self.tool_calls)
            body = f"{body}\n  -> {calls}" if body else f"-> {calls}"
        return f"{head}: {body}" if body else head


class TranscriptQuery(HumanInput):
    """Argument of the `transcript` query: a page of the current generation."""

    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=50, ge=1, le=500)
    max_chars: int = Field(default=4_000, ge=100, le=100_000)
    """Each entry's text is clipped to this many characters."""

    @classmethod
    def parse(cls, raw: tuple[Any, ...]) -> TranscriptQuery:
        """The query's argument (nothing, None or an object).

        Raises:
            ValueError: one line naming the field.
        """
        if len(raw) > 1:
            raise ValueError(f"transcript takes one JSON object, got {len(raw)} inputs")
        value = raw[0] if raw else None
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise ValueError(
                'transcript takes a JSON object like {"offset": 0, "limit": 50}, '
                f"got {type(value).__name__}"
            )
        try:
            return cls.model_validate(value)
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "input"
            raise ValueError(f"transcript: field '{loc}': {first['msg']}") from None


class TranscriptPage(DurableModel):
    """Answer of the `transcript` query."""

    session_id: str = ""
    generation: int = 0
    total: int = 0
    """Entries in this generation so far."""
    offset: int = 0
    entries: list[TranscriptEntry] = Field(default_factory=list)
    awaiting_input: bool = False
    """The agent has replied and waits for the human's next message."""
    awaiting_decision: list[str] = Field(default_factory=list)
    """Open human-decision blockers the session waits on (`handoff decide`)."""
    closed: bool = False
    """The session is finishing (no more replies in this run)."""


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: max(0, n - 1)] + "…"


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")


def split_human(text: str) -> tuple[str, str]:
    """(session part, human part) of a user text.

    Human text is a quoted block (`human_text.quote`, with an optional lead line of
    ours right above it, as a decision has), or in older runs lines starting with
    `HUMAN_PREFIX`; it follows the session's own text after a blank line, or is the
    whole text, and runs to the end."""
    first = _BLOCK_RE.search(text)
    if first is not None:
        at = first.start()
        line = text.rfind("\n", 0, max(0, at - 1)) + 1 if at else 0
        if at and text[at - 1] == "\n" and line < at - 1 and (line == 0 or text[line - 2 : line] == "\n\n"):
            at = line  # the lead line belongs to the human part
        return text[:at].rstrip("\n"), text[at:]
    if text.startswith(HUMAN_PREFIX):
        return "", text
    at = text.find("\n\n" + HUMAN_PREFIX)
    if at < 0:
        return text, ""
    return text[:at], text[at + 2 :]


def human_text(part: str) -> str:
    """The human part of a user text as people wrote it (blocks unquoted, prefixes gone)."""
    unquoted = _BLOCK_RE.sub(lambda m: _unescape(m.group(2)), part)
    lines = [ln.removeprefix(HUMAN_PREFIX) for ln in unquoted.split("\n")]
    return "\n".join(lines).strip()


def _result_text(block: dict[str, Any]) -> str:
    content = block.get("content", "")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return ""


def _call(block: dict[str, Any], n: int) -> str:
    args = json.dumps(block.get("input", {}), ensure_ascii=False, sort_keys=True)
    return _clip(f"{block.get('name', '?')} {args}", n)


def transcript_of(
    messages: list[dict[str, Any]], generation: int = 0, max_chars: int = 4_000
) -> list[TranscriptEntry]:
    """The entries of one generation's conversation, in order (pure)."""
    out: list[TranscriptEntry] = []

    def add(role: Role, text: str = "", calls: list[str] | None = None, error: bool = False) -> None:
        if not text and not calls:
            return
        out.append(
            TranscriptEntry(
                generation=generation, index=len(out), role=role, text=_clip(text, max_chars),
                tool_calls=calls or [], is_error=error,
            )
        )

    for message in messages:
        content = message.get("content", "")
        blocks: list[Any] = (
            [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
        )
        if message.get("role") == "assistant":
            text = "\n".join(
                str(b.get("text", "")) for b in blocks
                if isinstance(b, dict) and b.get("type") == "text"
            ).strip()
            calls = [
                _call(b, max_chars) for b in blocks
                if isinstance(b, dict) and b.get("type") == "tool_use"
            ]
            add("agent", text, calls)
            continue
        for block in blocks:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_result":
                add("tool", _result_text(block).strip(), error=bool(block.get("is_error")))
            elif block.get("type") == "text":
                session, human = split_human(str(block.get("text", "")))
                add("session", session.strip())
                add("human", human_text(human))
    return out


def last_reply(entries: list[TranscriptEntry]) -> str:
    """The agent's newest text reply ("" if it has not said anything)."""
    return next((e.text for e in reversed(entries) if e.role == "agent" and e.text), "")


def exchange_lines(entries: list[TranscriptEntry], keep: int, max_chars: int) -> list[str]:
    """The newest `keep` human/agent lines, `[human] …` / `[agent] …`, clipped."""
    said = [e for e in entries if e.role in ("human", "agent") and e.text]
    return [f"[{e.role}] {_clip(' '.join(e.text.split()), max_chars)}" for e in said[-keep:]]
