"""The handoff contracts: document, payload, context and delta (pydantic models only).

A :class:`HandoffDocument` is everything a successor generation needs to resume a
session; a :class:`HandoffPayload` is the document plus its budgeted continuation
prompt. Building a document from the project state lives in
:mod:`temporal_handoff.documents.build`, rendering it (budgeted prompt, markdown) in
:mod:`temporal_handoff.documents.render` and :mod:`temporal_handoff.documents.markdown`.

This module is pure (pydantic + stdlib): it is imported by workflow code.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pydantic import Field, field_validator

from temporal_handoff.schemas.base import DurableModel, validate_human
from temporal_handoff.schemas.config import CompressionLevel
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.project import BlockerType
from temporal_handoff.schemas.state_events import StateEvent
from temporal_handoff.schemas.tokens import TokenLedger

__all__ = [
    "RECALL_SECTIONS",
    "TEMPLATES",
    "PAYLOAD_TOO_LARGE",
    "HUMAN_TEXT_CAP_CHARS",
    "RunRef",
    "HandoffContext",
    "AgentInfo",
    "TokenSummary",
    "Progress",
    "TaskItem",
    "FailedTaskItem",
    "DecisionItem",
    "BlockerItem",
    "AlternativeItem",
    "FileItem",
    "ErrorItem",
    "LookupHints",
    "HandoffDelta",
    "HandoffDocument",
    "HandoffPayload",
]

RECALL_SECTIONS = (
    "tasks",
    "decisions",
    "blockers",
    "files",
    "todos",
    "errors",
    "environment",
    "human_messages",
    "notes",
    "questions",
)
"""Sections the successor's ``recall`` tool accepts."""

TEMPLATES = ("standard", "minimal", "error_recovery", "multi_day")
"""Prompt templates; chosen by `documents.build.choose_template` unless overridden."""

PAYLOAD_TOO_LARGE = "HandoffPayloadTooLarge"
"""ApplicationError type of `build_handoff` when the payload is over `max_payload_bytes`."""

HUMAN_TEXT_CAP_CHARS = 2_000
"""A human message longer than this is cut in the handoff document (not in the model's turn)."""




class RunRef(DurableModel):
    """One run (generation) of a session: what ``recall`` needs to find its history."""

    generation: int = Field(ge=0)
    workflow_id: str
    run_id: str


class HandoffContext(DurableModel):
    """What the session knows besides the project state when it hands off."""

    session_id: str
    """Workflow id of the session."""
    generation: int = Field(ge=0)
    """Generation being handed off (the predecessor)."""
    run_id: str = ""
    reason: TerminationReason
    model: str = ""
    ledger: TokenLedger = Field(default_factory=TokenLedger)
    lineage: list[RunRef] = Field(default_factory=list)
    """Every run of this session so far, including this one."""
    events_since_last_handoff: list[StateEvent] = Field(default_factory=list)
    recent_human_input: list[str] = Field(default_factory=list)
    recent_exchange: list[str] = Field(default_factory=list)
    """The conversation's last lines, `[human] …` / `[agent] …` (free-form sessions)."""
    tool_state: dict[str, str] = Field(default_factory=dict)
    paused_seconds: float = Field(default=0.0, ge=0)
    """Longest pause this generation; a long one selects the multi-day template."""
    template: str | None = None
    """Override of the automatic template choice (one of :data:`TEMPLATES`)."""
    agent_note: str = ""
    """The predecessor model's own note to its successor (`agent_note`; "" if none)."""

    @field_validator("template")
    @classmethod
    def _known_template(cls, v: str | None) -> str | None:
        if v is not None and v not in TEMPLATES:
            raise ValueError(f"unknown template {v!r}; expected one of {', '.join(TEMPLATES)}")
        return v


# ---- document sections --------------------------------------------------------------


class AgentInfo(DurableModel):
    """Who is handing off to whom, and why."""

    session_id: str
    generation: int
    next_generation: int
    run_id: str = ""
    model: str = ""
    reason: TerminationReason
    template: str = "standard"


class TokenSummary(DurableModel):
    """Context occupancy at handoff and cumulative spend over all generations."""

    context_window: int = 0
    occupancy: int = 0
    usage_fraction: float = 0.0
    total_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    calls: int = 0
    calls_this_generation: int = 0
    cost_usd: float = 0.0
    calibration: float = 1.0
    peak_prompt_tokens: int = 0


class Progress(DurableModel):
    """Current phase and how far the plan has got."""

    current_phase: str | None = None
    current_phase_name: str = ""
    phase_done: int = 0
    phase_total: int = 0
    done: int = 0
    total: int = 0
    counts: dict[str, int] = Field(default_factory=dict)
    milestones: list[str] = Field(default_factory=list)
    critical_path: list[str] = Field(default_factory=list)
    """First tasks of the longest remaining chain."""
    critical_path_length: int = 0


class TaskItem(DurableModel):
    """A task reference: completed work or a next eligible task."""

    id: str
    title: str = ""
    phase: str = ""
    summary: str = ""
    generation: int | None = None
    """Generation that completed it (for completed work)."""
    attempts: int = 0
    last_error: str = ""
    """For tasks still to do: the latest error recorded for it (a retry)."""


class FailedTaskItem(DurableModel):
    """A failed task: its current error and what was tried before."""

    id: str
    title: str = ""
    error: str = ""
    attempts: int = 0
    tried: list[str] = Field(default_factory=list)
    """Earlier error messages for this task: what was already tried."""


class DecisionItem(DurableModel):
    """A recorded decision; ``by`` starting with "human" makes it critical."""

    id: str
    title: str = ""
    rationale: str = ""
    by: str = "agent"
    blocker_id: str | None = None
    generation: int = 0
    at: datetime | None = None

    @property
    def human(self) -> bool:
        """Whether a human made this decision."""
        return self.by.startswith("human")


class BlockerItem(DurableModel):
    """An open blocker (critical), or a resolved one whose task is still to do."""

    id: str
    type: BlockerType = BlockerType.TECHNICAL
    description: str = ""
    task_id: str | None = None
    opened_at: datetime | None = None
    resolution: str = ""


class AlternativeItem(DurableModel):
    """An approach that was considered and rejected."""

    title: str
    reason: str = ""


class FileItem(DurableModel):
    """A file the agent touched or noted."""

    path: str
    note: str = ""


class ErrorItem(DurableModel):
    """An error recorded in some generation."""

    source: str
    message: str
    task_id: str | None = None
    generation: int = 0


class QuestionItem(DurableModel):
    id: str
    text: str = ""


class LookupHints(DurableModel):
    """How the successor finds what the compact prompt left out."""

    workflow_id: str
    generation: int
    """Generation whose full state ``recall`` returns for this handoff."""
    lineage: list[RunRef] = Field(default_factory=list)
    recall_tool: str = "recall"
    recall_sections: list[str] = Field(default_factory=lambda: list(RECALL_SECTIONS))

    def pointer(self, section: str, ids: Iterable[str] = ()) -> str:
        """The JSON input of a ``recall`` call for one section (stable key order)."""
        body: dict[str, Any] = {"generation": self.generation, "section": section}
        ids = list(ids)
        if ids:
            body["ids"] = ids
        return json.dumps(body, ensure_ascii=False)


class HandoffDelta(DurableModel):
    """What changed since the previous handoff, summarized from the state events."""

    events: int = 0
    completed: list[str] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)
    retried: list[str] = Field(default_factory=list)
    decisions: list[str] = Field(default_factory=list)
    human_decisions: list[str] = Field(default_factory=list)
    blockers_opened: list[str] = Field(default_factory=list)
    blockers_resolved: list[str] = Field(default_factory=list)
    phase: str | None = None
    files: list[str] = Field(default_factory=list)
    todos: int = 0
    human_messages: int = 0
    errors: int = 0
    other: dict[str, int] = Field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """True when no event was recorded since the previous handoff."""
        return self.events == 0


class HandoffDocument(DurableModel):
    """Everything a successor generation needs; render with `documents.render.render_prompt`.

    Unbounded sections keep their most relevant items (most recent first) and the
    full counts in ``totals``; the rest is one ``recall`` away. Critical sections
    (``open_blockers``, ``human_decisions``, ``failed_tasks``, ``next_eligible``) are
    never capped.
    """

    schema_version: int = 1
    agent: AgentInfo
    tokens: TokenSummary = Field(default_factory=TokenSummary)
    original_request: str = ""
    goal: str = ""
    progress: Progress = Field(default_factory=Progress)
    work_completed: list[TaskItem] = Field(default_factory=list)
    decisions: list[DecisionItem] = Field(default_factory=list)
    """Agent decisions, most recent first."""
    human_decisions: list[DecisionItem] = Field(default_factory=list)
    rejected_alternatives: list[AlternativeItem] = Field(default_factory=list)
    open_blockers: list[BlockerItem] = Field(default_factory=list)
    resolved_blockers: list[BlockerItem] = Field(default_factory=list)
    """Resolved blockers whose task is still to do: the successor must not re-raise them."""
    files: list[FileItem] = Field(default_factory=list)
    todos: list[str] = Field(default_factory=list)
    """Open todos, newest first: not about a task in progress, nor only about done tasks."""
    in_progress: list[str] = Field(default_factory=list)
    """Todos naming a task still to do, newest first: what the predecessor was in the
    middle of (critical). Todos naming only done tasks are finished: left to `recall`."""
    next_eligible: list[TaskItem] = Field(default_factory=list)
    failed_tasks: list[FailedTaskItem] = Field(default_factory=list)
    errors: list[ErrorItem] = Field(default_factory=list)
    tool_state: dict[str, str] = Field(default_factory=dict)
    environment: dict[str, str] = Field(default_factory=dict)
    recent_human_input: list[str] = Field(default_factory=list)
    free_form: bool = False
    """A session without tasks: a conversation toward the goal, ended by `finish`."""
    notes: list[str] = Field(default_factory=list)
    """The agent's notes, newest first."""
    open_questions: list[QuestionItem] = Field(default_factory=list)
    recent_exchange: list[str] = Field(default_factory=list)
    """The conversation's last lines, oldest first."""
    lookup: LookupHints
    since_last_handoff: HandoffDelta = Field(default_factory=HandoffDelta)
    totals: dict[str, int] = Field(default_factory=dict)
    """Full item count per section in the state (the lists above may be capped)."""
    paused_seconds: float = 0.0
    agent_note: str = ""
    """The predecessor model's note to its successor, in its own words: shown quoted
    in an ``<agent_note>`` block, never trusted as state, dropped first when the
    prompt's budget is tight ("" if none)."""

    # ---- reads ------------------------------------------------------------------
    def critical_ids(self) -> list[str]:
        """Ids that every rendered prompt must contain (backticked)."""
        out: list[str] = []
        if self.progress.current_phase:
            out.append(self.progress.current_phase)
        out += [b.id for b in self.open_blockers]
        out += [d.id for d in self.human_decisions]
        out += [t.id for t in self.failed_tasks]
        out += [t.id for t in self.next_eligible]
        return list(dict.fromkeys(out))

    def total(self, section: str) -> int:
        """Items of `section` in the state (its list here may be capped)."""
        return self.totals.get(section, 0)

    # ---- exports ----------------------------------------------------------------
    def to_json(self) -> str:
        """Stable JSON: sorted keys, two-space indent, trailing newline (diffs cleanly)."""
        return (
            json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=2, ensure_ascii=False)
            + "\n"
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> HandoffDocument:
        """Parse and validate a document written or edited by hand; unknown fields (at
        any depth) and wrong types are errors naming the field. A document decoded from
        a payload ignores unknown fields instead (see `schemas.base`)."""
        return validate_human(cls, text)

    def summary(self) -> str:
        """One line for memos and the CLI."""
        p = self.progress
        pct = round(100 * p.done / p.total) if p.total else 100
        parts = [
            f"gen {self.agent.generation}→{self.agent.next_generation}",
            self.agent.reason.value.lower(),
            f"phase {p.current_phase or '-'}",
            f"{p.done}/{p.total} tasks ({pct}%)",
        ]
        if self.open_blockers:
            human = sum(1 for b in self.open_blockers if b.type == BlockerType.HUMAN_DECISION)
            parts.append(
                f"{len(self.open_blockers)} open blocker(s)"
                + (f", {human} awaiting human" if human else "")
            )
        if self.failed_tasks:
            parts.append(f"{len(self.failed_tasks)} failed")
        nxt = [t.id for t in self.next_eligible]
        if nxt:
            more = f" +{len(nxt) - 3}" if len(nxt) > 3 else ""
            parts.append("next " + ", ".join(nxt[:3]) + more)
        elif p.total and p.done >= p.total:
            parts.append("all done")
        if self.agent.template != "standard":
            parts.append(self.agent.template)
        return " · ".join(parts)

class HandoffPayload(DurableModel):
    """The result of a handoff: the document plus its budgeted continuation prompt."""

    document: HandoffDocument | None = None
    """The full document; None in a successor's input, which carries only the prompt
    and `summary_line` (the child workflow's result keeps the document)."""
    prompt: str
    """The continuation prompt text."""
    prompt_tokens: int
    """Calibrated tiktoken count of `prompt`."""
    level: CompressionLevel
    """Level actually used (may be above `requested_level` after escalation)."""
    requested_level: CompressionLevel
    budget: int
    escalated: bool = False
    note: str = ""
    template: str = "standard"
    delta_tokens: int = 0
    """Calibrated tokens of the "since last handoff" section in `prompt`."""
    omitted: dict[str, int] = Field(default_factory=dict)
    """Items per section left out of the prompt (replaced by a recall pointer)."""
    summary_line: str = ""
    """`summary()` of the document, kept when the document is dropped."""
    probes: int = 0
    """Critical items probed in `prompt` (`documents.probe`); 0: not probed (older payload)."""
    probe_missed: int = 0
    """Critical items still missing from `prompt` after escalating to the top level."""
    probe_misses: list[str] = Field(default_factory=list)
    """One label per missed item (ids and part names only; at most 50, the last one
    counting the rest); empty when every probe found its item."""

    def summary(self) -> str:
        """One line: the document summary plus how the prompt was packed."""
        if self.document is None:
            return self.summary_line
        esc = f", escalated from {self.requested_level.value}" if self.escalated else ""
        miss = f" · {self.probe_missed} probe miss(es)" if self.probe_missed else ""
        return (
            f"{self.document.summary()} · prompt {self.prompt_tokens}/{self.budget} tokens "
            f"({self.level.value}{esc}){miss}"
        )

    def seed(self) -> HandoffPayload:
        """What a successor needs: the prompt and the summary line, not the document.

        The document is a full copy of the state (6-8x the prompt); carrying it in
        every successor's input made the input grow each generation."""
        if self.document is None:
            return self
        return self.model_copy(update={"document": None, "summary_line": self.summary()})


# ---- building ---------------------------------------------------------------------
