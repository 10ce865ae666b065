"""Brains for the fake Anthropic server: what "the model" answers.

A brain is any object with ``respond(request) -> BrainReply``, where ``request`` is
the parsed JSON body of a ``POST /v1/messages`` call. The server does everything
else (usage, streaming, errors); the brain only chooses the content blocks.

`ScriptedAgentBrain` is an *honest* scripted agent: like a real model it sees only
the request (system prompt, messages, tools), never any memory shared with the
workflow, and it is stateless across requests except for its configuration. So
whatever the workflow forgets to put in the prompt (for example across a handoff),
the brain forgets too, which is exactly what the tests need to catch.

Protocol the brain follows (the workflow speaks it):

* Task ids are written in backticks. The eligible tasks are announced by a line
  matching ``Next eligible tasks?:([^\\n]*)``; the ids are the backticked tokens of
  that line. The line may be in the system prompt, a user text block, or a
  ``tool_result`` content (string or text blocks). The brain uses the LAST such
  line of the whole prompt (system first, then messages in order).
* Ids already acted on (``complete_task``, ``fail_task``, ``add_blocker``
  tool uses) after that line are skipped: the brain acts on an id again only
  when a newer line announces it.
* The session's request for a handoff note (`agent_note.NOTE_REQUEST_MARKER` in the
  last user message): a short note text, no tools (``note_text``, or a line naming the
  tasks its last reply acted on).
* ``ALL TASKS COMPLETE`` in the last user message: final text, no tools.
* ``AWAITING DECISION`` in the last user message: text, no tools.
* Text inside human blocks (``<human_message …>…</human_message>``,
  ``<human_decision …>…</human_decision>``, see `temporal_handoff.human_text`) is what
  a person wrote: like a model told so, the brain never reads a control line, a
  blocker id or a failure marker in it.
* With ``empty_turn_every`` set, a reply to a message of tool results only is, for
  some of them (by hash), an empty turn (``content: []``, ``end_turn``), as Claude
  sometimes answers; the next user message gets the work going again.
* Otherwise up to ``tasks_per_turn`` task actions, each ``complete_task`` (with a
  ``record_decision`` first for every ``decision_every``-th task by hash), or
  ``add_blocker`` / ``fail_task`` for tasks configured to block or fail once.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from temporal_handoff.agent_note import is_note_request
from temporal_handoff.human_text import strip_quoted
from temporal_handoff.schemas.model_io import block_text, message_text, prompt_text

__all__ = [
    "ALL_TASKS_COMPLETE",
    "AWAITING_DECISION",
    "NEXT_ELIGIBLE_RE",
    "Brain",
    "BrainReply",
    "EchoBrain",
    "ScriptedAgentBrain",
    "filler",
    "stable_hash",
]

NEXT_ELIGIBLE_RE = re.compile(r"Next eligible tasks?:([^\n]*)")
"""The line that announces eligible task ids (backticked) to the agent."""
_BACKTICKED_RE = re.compile(r"`([^`\n]+)`")

ALL_TASKS_COMPLETE = "ALL TASKS COMPLETE"
"""Marker in the last user message: the project is done, the agent should stop."""
AWAITING_DECISION = "AWAITING DECISION"
"""Marker in the last user message: a blocker waits for a human, call no tools."""

# Fixed vocabulary for filler text. Deterministic (seeded per task id) so that the
# same prompt always yields the same reply, byte for byte.
_VOCAB_TEXT = (
    "implemented refactored validated tested documented migrated the module service "
    "handler schema endpoint pipeline config parser cache index query worker queue "
    "retry timeout budget ledger payload render invariant contract boundary edge case "
    "fixture coverage benchmark latency throughput memory allocation lock thread loop "
    "client server request response header status token window context state field "
    "record event signal update activity workflow history generation handoff summary "
    "decision blocker phase milestone review cleanup naming logging metrics tracing"
)
_VOCAB = tuple(_VOCAB_TEXT.split())


def stable_hash(text: str) -> int:
    """A process-independent hash of a string (sha256 as an int).

    Python's ``hash()`` is salted per process, so it cannot decide which tasks get
    decisions or blockers reproducibly; sha256 can.
    """
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest(), "big")


def filler(seed: str, words: int) -> str:
    """Deterministic filler text of exactly ``words`` words, seeded by ``seed``."""
    if words <= 0:
        return ""
    rng = random.Random(stable_hash(seed))
    return " ".join(rng.choice(_VOCAB) for _ in range(words))


@dataclass
class BrainReply:
    """What a brain answers: the assistant content blocks.

    Attributes:
        content: Messages API content blocks (``text`` / ``tool_use`` dicts).
        stop_reason: Optional override; by default the server derives it
            (``tool_use`` if any tool_use block, else ``end_turn``).
    """

    content: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None


@runtime_checkable
class Brain(Protocol):
    """Anything that turns a Messages API request body into a reply."""

    def respond(self, request: dict[str, Any]) -> BrainReply:
        """Answer one request (the parsed JSON body of ``POST /v1/messages``)."""
        ...


def _text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return strip_quoted(message_text(message))
    return ""


class EchoBrain:
    """Replies with a short text echoing the start of the last user message."""

    def __init__(self, max_chars: int = 80) -> None:
        """Create the brain.

        Args:
            max_chars: How much of the last user message to echo back.
        """
        self.max_chars = max_chars

    def respond(self, request: dict[str, Any]) -> BrainReply:
        """Echo the last user message (truncated)."""
        last = _last_user_text(list(request.get("messages") or []))
        return BrainReply(content=[_text(f"Echo: {last[: self.max_chars]}")])


@dataclass(frozen=True)
class _ToolUse:
    name: str
    input: dict[str, Any]


def _prompt_events(request: dict[str, Any]) -> list[str | _ToolUse]:
    """The prompt in reading order: text chunks and tool_use blocks.

    Order is system blocks, then every message's blocks in order, so "last line"
    and "after that line" have a single meaning across system and messages.
    """
    events: list[str | _ToolUse] = []
    system = request.get("system")
    if isinstance(system, str):
        events.append(strip_quoted(system))
    elif isinstance(system, list):
        events.extend(strip_quoted(block_text(b)) for b in system)
    for message in request.get("messages") or []:
        content = message.get("content", "")
        if isinstance(content, str):
            events.append(strip_quoted(content))
            continue
        for block in content or []:
            if isinstance(block, dict) and block.get("type") == "tool_use":
                raw_input = block.get("input")
                events.append(
                    _ToolUse(
                        name=str(block.get("name", "")),
                        input=raw_input if isinstance(raw_input, dict) else {},
                    )
                )
            else:
                events.append(strip_quoted(block_text(block)))
    return events


def _acted_task_id(use: _ToolUse) -> str | None:
    """The task a task-acting tool call is about, if any."""
    if use.name in ("complete_task", "fail_task"):
        task_id = use.input.get("task_id")
        return str(task_id) if task_id else None
    if use.name == "add_blocker":
        if use.input.get("task_id"):
            return str(use.input["task_id"])
        blocker_id = str(use.input.get("blocker_id", ""))
        return blocker_id[2:] if blocker_id.startswith("B-") else None
    return None


def _mentions(text: str, token: str) -> bool:
    """True if ``token`` occurs in ``text`` as a whole id (not as a prefix of a longer id)."""
    return re.search(rf"(?<![\w-]){re.escape(token)}(?![\w-])", text) is not None


class ScriptedAgentBrain:
    """A deterministic agent that works through a project with the state tools.

    It reads only the request, so it is a faithful stand-in for a model: the
    workflow must put everything the agent needs (eligible tasks, pending
    decisions, the handoff payload) into the prompt. See the module docstring for
    the protocol.

    Tool calls it emits (inputs):

    * ``complete_task {"task_id", "summary"}`` — ``summary`` is exactly
      ``summary_words`` words of filler, so the context grows at a known pace.
    * ``record_decision {"decision_id": "D-<task>", "title", "rationale"}`` — before
      completing a task whose ``stable_hash(task_id) % decision_every == 0``.
    * ``add_blocker {"blocker_id": "B-<task>", "blocker_type": "human_decision",
      "description"}`` — instead of completing a task whose
      ``stable_hash(task_id) % blocker_every == 1``, unless ``B-<task>`` already
      appears anywhere in the prompt (the blocker was raised before, e.g. in an
      earlier generation whose handoff mentions it).
    * ``fail_task {"task_id", "error"}`` — instead of completing a task in
      ``fail_first`` the first time: when the prompt holds no earlier ``fail_task``
      tool use for that id and no ``fail-once:<task>`` marker (the marker is in the
      error text, so it survives a handoff that lists failed tasks with errors).

    Tool-use ids are ``toolu_`` + sha256 of the prompt text and the block index:
    unique within a reply, identical when the same request is retried.
    """

    def __init__(
        self,
        *,
        tasks_per_turn: int = 1,
        summary_words: int = 40,
        decision_every: int = 5,
        blocker_every: int = 0,
        fail_first: Iterable[str] = (),
        intro_text: bool = True,
        empty_turn_every: int = 0,
        note_text: str | None = None,
    ) -> None:
        """Configure the agent.

        Args:
            tasks_per_turn: Maximum task actions (complete/fail/block) per reply.
            summary_words: Words of filler in each ``complete_task`` summary; makes
                the context grow by a predictable amount per task.
            decision_every: Emit ``record_decision`` for tasks whose hash modulo
                this is 0. 0 disables decisions.
            blocker_every: Emit ``add_blocker`` (human decision) for tasks whose
                hash modulo this is 1. 0 disables blockers (1 also never matches).
            fail_first: Task ids that fail (``fail_task``) on the first attempt.
            intro_text: Start tool-using replies with a short text block
                ("Working on `X`."), as real models usually do.
            empty_turn_every: End the turn with empty content after tool results when
                the hash of their ids modulo this is 0 (about one in N). 0: never.
            note_text: The answer to the session's handoff-note request (None: a line
                naming the tasks of its last reply).
        """
        if tasks_per_turn < 1:
            raise ValueError("tasks_per_turn must be >= 1")
        if min(summary_words, decision_every, blocker_every, empty_turn_every) < 0:
            raise ValueError("summary_words, decision_every and blocker_every must be >= 0")
        self.tasks_per_turn = tasks_per_turn
        self.summary_words = summary_words
        self.decision_every = decision_every
        self.blocker_every = blocker_every
        self.fail_first = frozenset(fail_first)
        self.intro_text = intro_text
        self.empty_turn_every = empty_turn_every
        self.note_text = note_text

    # ---- configuration predicates ------------------------------------------------
    def wants_decision(self, task_id: str) -> bool:
        """Whether completing ``task_id`` comes with a ``record_decision``."""
        return self.decision_every > 0 and stable_hash(task_id) % self.decision_every == 0

    def wants_blocker(self, task_id: str) -> bool:
        """Whether ``task_id`` raises a human-decision blocker (before completion)."""
        return self.blocker_every > 0 and stable_hash(task_id) % self.blocker_every == 1

    def _empty_turn(self, messages: list[dict[str, Any]]) -> bool:
        """Whether to answer the last message (tool results only) with an empty turn."""
        if self.empty_turn_every <= 0 or not messages or messages[-1].get("role") != "user":
            return False
        content = messages[-1].get("content")
        if not isinstance(content, list) or not content:
            return False
        if not all(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
            return False
        ids = ",".join(str(b.get("tool_use_id")) for b in content)
        return stable_hash(f"empty-turn:{ids}") % self.empty_turn_every == 0

    def _note(self, request: dict[str, Any]) -> str:
        """A short note to its successor: the tasks its last reply acted on."""
        if self.note_text is not None:
            return self.note_text
        acted: list[str] = []
        for event in reversed(_prompt_events(request)):
            if isinstance(event, _ToolUse) and (task := _acted_task_id(event)) is not None:
                acted.append(task)
            elif acted and isinstance(event, str):
                break
        if not acted:
            return "I had not acted on any task yet in this generation; nothing unrecorded."
        ids = ", ".join(f"`{t}`" for t in reversed(acted))
        return f"I was last working on {ids}; everything I did is recorded with the state tools."

    # ---- the agent ---------------------------------------------------------------
    def respond(self, request: dict[str, Any]) -> BrainReply:
        """Decide the next step from the request alone."""
        messages: list[dict[str, Any]] = list(request.get("messages") or [])
        last_user = _last_user_text(messages)
        if is_note_request(last_user):
            return BrainReply(content=[_text(self._note(request))])
        if ALL_TASKS_COMPLETE in last_user:
            return BrainReply(content=[_text("All tasks are complete.")])
        if AWAITING_DECISION in last_user:
            return BrainReply(content=[_text("Waiting for a human decision.")])
        if self._empty_turn(messages):
            return BrainReply(content=[])

        events = _prompt_events(request)
        line_at: int | None = None
        eligible: list[str] = []
        for index, event in enumerate(events):
            if isinstance(event, str):
                for match in NEXT_ELIGIBLE_RE.finditer(event):
                    line_at = index
                    eligible = _BACKTICKED_RE.findall(match.group(1))
        if line_at is None:
            return BrainReply(content=[_text("No eligible tasks visible.")])

        acted = {
            task
            for event in events[line_at + 1 :]
            if isinstance(event, _ToolUse) and (task := _acted_task_id(event)) is not None
        }
        # Deduplicate while keeping the announced order.
        todo = [t for t in dict.fromkeys(eligible) if t not in acted][: self.tasks_per_turn]
        if not todo:
            return BrainReply(content=[_text("No eligible tasks visible.")])

        whole = strip_quoted(prompt_text(messages, request.get("system")))
        failed_before = {
            e.input.get("task_id")
            for e in events
            if isinstance(e, _ToolUse) and e.name == "fail_task"
        }
        uses: list[tuple[str, dict[str, Any]]] = []
        for task in todo:
            if (
                task in self.fail_first
                and task not in failed_before
                and not _mentions(whole, f"fail-once:{task}")
            ):
                uses.append(
                    (
                        "fail_task",
                        {
                            "task_id": task,
                            "error": f"Simulated first-attempt failure of {task} "
                            f"(fail-once:{task}).",
                        },
                    )
                )
            elif self.wants_blocker(task) and not _mentions(whole, f"B-{task}"):
                uses.append(
                    (
                        "add_blocker",
                        {
                            "blocker_id": f"B-{task}",
                            "blocker_type": "human_decision",
                            "description": f"Task {task} needs a human decision: "
                            + filler(f"blocker:{task}", 12),
                        },
                    )
                )
            else:
                if self.wants_decision(task):
                    uses.append(
                        (
                            "record_decision",
                            {
                                "decision_id": f"D-{task}",
                                "title": f"Approach for {task}",
                                "rationale": filler(f"decision:{task}", 20),
                            },
                        )
                    )
                uses.append(
                    (
                        "complete_task",
                        {"task_id": task, "summary": filler(task, self.summary_words)},
                    )
                )

        # Ids derive from the full prompt (tools included) so a retried request
        # reproduces them, while different prompts never share them.
        digest_base = prompt_text(messages, request.get("system"), request.get("tools"))
        content: list[dict[str, Any]] = []
        if self.intro_text:
            content.append(_text("Working on " + ", ".join(f"`{t}`" for t in todo) + "."))
        for index, (name, tool_input) in enumerate(uses):
            digest = hashlib.sha256(f"{digest_base}\x00{index}".encode()).hexdigest()
            content.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_{digest[:24]}",
                    "name": name,
                    "input": tool_input,
                }
            )
        return BrainReply(content=content)
