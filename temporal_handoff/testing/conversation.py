"""`ConversationBrain`: a scripted conversational agent for free-form sessions.

Like `ScriptedAgentBrain` it sees only the request (system prompt, messages, tools) and
keeps no memory between requests, so what the session forgets across a handoff, this
agent forgets too. It speaks the session's conversation protocol:

* Human text is a quoted ``<human_message>`` / ``<human_decision>`` block
  (`temporal_handoff.human_text`; ``[human] `` lines in older runs) in a user text
  block. The newest such text in the messages, unquoted, is "the question".
* An `Exchange` answers a question containing its ``when`` (case-insensitive): first its
  ``tool`` (a user tool, say) with ``tool_input``, plus ``add_note`` with its ``note``;
  once the tool's result is in the messages, its ``reply`` (``{result}`` is replaced by
  the tool's result text), and ``finish`` with its summary if ``finish`` is set.
* No question in the messages (generation 0's opening, or a successor's first turn):
  the greeting, or after a handoff a resume line quoting the last human block of the
  handoff (in the system prompt), if the handoff kept one.
* A question no exchange matches gets ``fallback``.
* The session's handoff-note request (`agent_note`): ``note``, with the question it was
  answering last, no tools.

``filler_words`` pads every reply with deterministic text, so a small window fills and
the session hands off.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from temporal_handoff.agent_note import is_note_request
from temporal_handoff.schemas.model_io import block_text, message_text, prompt_text
from temporal_handoff.schemas.transcript import human_text, split_human
from temporal_handoff.testing.brain import BrainReply, filler

_HANDOFF_MARK = "Handoff from your previous generation"
_HUMAN_BLOCK = re.compile(r"<human_message(?: [^<>]*)?>([^<>]*)</human_message>")


@dataclass(frozen=True)
class Exchange:
    """One scripted answer: when the human's message contains `when`."""

    when: str
    reply: str
    tool: str | None = None
    tool_input: dict[str, Any] = field(default_factory=dict)
    note: str | None = None
    finish: str | None = None
    """Call `finish` with this summary after the reply."""


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content", "")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content if isinstance(b, dict)]


def _human_of(text: str) -> str | None:
    _, part = split_human(text)
    return human_text(part) or None


@dataclass
class ConversationBrain:
    """A stateless, scripted chat agent (see the module docstring)."""

    exchanges: list[Exchange]
    greeting: str = "Hello. I have read the goal; what would you like to know?"
    resume: str = "I am the next generation of this session; you last said: {last}"
    fallback: str = "I cannot help with that yet: {question}"
    filler_words: int = 0
    note: str = "I was answering the human's last question: {question}"

    def respond(self, request: dict[str, Any]) -> BrainReply:
        messages: list[dict[str, Any]] = list(request.get("messages") or [])
        asked_at, question = self._question(messages)
        if messages and messages[-1].get("role") == "user" and is_note_request(
            message_text(messages[-1])
        ):
            text = self.note.format(question=question or "(none yet)")
            return BrainReply(content=[{"type": "text", "text": text}])
        if question is None:
            return self._reply(request, [self._opening(request)], [])
        rule = next((x for x in self.exchanges if x.when.lower() in question.lower()), None)
        if rule is None:
            return self._reply(request, [self.fallback.format(question=question)], [])
        later = messages[asked_at + 1 :]
        calls = [
            b for m in later if m.get("role") == "assistant" for b in _blocks(m)
            if b.get("type") == "tool_use"
        ]
        if rule.tool is not None and not any(c.get("name") == rule.tool for c in calls):
            uses: list[tuple[str, dict[str, Any]]] = [(rule.tool, dict(rule.tool_input))]
            if rule.note:
                uses.append(("add_note", {"text": rule.note}))
            return self._reply(request, [], uses)
        result = self._result(later, rule.tool)
        text = rule.reply.replace("{result}", result)
        uses = [("finish", {"summary": rule.finish})] if rule.finish else []
        return self._reply(request, [text], uses)

    @staticmethod
    def _question(messages: list[dict[str, Any]]) -> tuple[int, str | None]:
        for index in range(len(messages) - 1, -1, -1):
            message = messages[index]
            if message.get("role") != "user":
                continue
            for block in reversed(_blocks(message)):
                if block.get("type") == "text":
                    human = _human_of(str(block.get("text", "")))
                    if human:
                        return index, human
        return -1, None

    def _opening(self, request: dict[str, Any]) -> str:
        system = request.get("system")
        text = system if isinstance(system, str) else "\n".join(
            block_text(b) for b in system or [] if isinstance(b, dict)
        )
        if _HANDOFF_MARK not in text:
            return self.greeting
        said = [human_text(f"<human_message>{x}</human_message>") for x in _HUMAN_BLOCK.findall(text)]
        return self.resume.format(last=said[-1].strip() if said else "(nothing kept)")

    @staticmethod
    def _result(later: list[dict[str, Any]], tool: str | None) -> str:
        if tool is None:
            return ""
        ids = {
            b.get("id") for m in later if m.get("role") == "assistant" for b in _blocks(m)
            if b.get("type") == "tool_use" and b.get("name") == tool
        }
        for message in later:
            for block in _blocks(message):
                if block.get("type") == "tool_result" and block.get("tool_use_id") in ids:
                    return block_text(block).strip()
        return "(no result)"

    def _reply(
        self, request: dict[str, Any], texts: list[str], uses: list[tuple[str, dict[str, Any]]]
    ) -> BrainReply:
        base = prompt_text(request.get("messages") or [], request.get("system"), request.get("tools"))
        content: list[dict[str, Any]] = []
        for text in texts:
            pad = filler(text + base[-200:], self.filler_words)
            content.append({"type": "text", "text": f"{text} {pad}".strip() if pad else text})
        for index, (name, tool_input) in enumerate(uses):
            digest = hashlib.sha256(f"{base}\x00{index}".encode()).hexdigest()
            content.append(
                {"type": "tool_use", "id": f"toolu_{digest[:24]}", "name": name, "input": tool_input}
            )
        return BrainReply(content=content)
