"""The handoff document and its packing into a budgeted continuation prompt.

A :class:`HandoffDocument` is everything a successor generation needs to resume a
session, built by :func:`build_document` from the project state and a
:class:`HandoffContext`. :func:`render_prompt` packs it into a continuation prompt
under a hard token budget per :class:`CompressionLevel`:

* **Critical items** — current phase, open blockers, human decisions, failed
  tasks and the ``Next eligible tasks:`` line — are always included by id. If they
  do not fit the requested level, the level is escalated and the payload says so.
* **Everything else** is packed by priority: whole items while budget remains,
  then ``… and N more (recall with `recall` tool: {...})`` pointers, because the
  successor can read every predecessor generation through the ``recall`` tool.

This module is pure (pydantic + stdlib): it is imported by workflow code. Token
counting is injected (``count``); the activity passes tiktoken, anything else
(tests, a workflow fallback) may pass :func:`approx_tokens`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import Field, field_validator

from temporal_handoff.schemas.base import DurableModel, validate_human
from temporal_handoff.schemas.config import DEFAULT_LEVEL_BUDGETS, CompressionLevel
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.project import (
    DONE_STATUSES,
    BlockerType,
    ProjectState,
    StateEvent,
    TaskStatus,
)
from temporal_handoff.schemas.tokens import TokenLedger

__all__ = [
    "RECALL_SECTIONS",
    "TEMPLATES",
    "MULTI_DAY_PAUSE_S",
    "LEVEL_ORDER",
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
    "approx_tokens",
    "build_document",
    "choose_template",
    "default_budgets",
    "summarize_events",
    "render_prompt",
    "next_eligible_line",
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
"""Prompt templates; chosen by :func:`choose_template` unless overridden."""

MULTI_DAY_PAUSE_S = 8 * 3600.0
"""A pause longer than this makes the successor re-check its environment first."""

LEVEL_ORDER = (CompressionLevel.MINIMAL, CompressionLevel.STANDARD, CompressionLevel.FULL)
"""Escalation order: a level whose budget cannot hold the critical items moves right."""

# The document keeps the most relevant items of the unbounded sections only: the
# payload crosses continue-as-new (2 MiB hard limit) and the rest is recallable.
_DOC_CAP = 60
PAYLOAD_TOO_LARGE = "HandoffPayloadTooLarge"
"""ApplicationError type of `build_handoff` when the payload is over `max_payload_bytes`."""

_TEXT_CAP = 2_000
HUMAN_TEXT_CAP_CHARS = _TEXT_CAP
"""A human message longer than this is cut in the handoff document (not in the model's turn)."""


def default_budgets() -> dict[CompressionLevel, int]:
    """The default token budget per level (minimal 500, standard 1,200, full 2,000)."""
    return {CompressionLevel(k): v for k, v in DEFAULT_LEVEL_BUDGETS.items()}


def approx_tokens(text: str) -> int:
    """A tokenizer-free upper-ish estimate (≈ 3.5 characters per token).

    For pure contexts (workflow code, quick tests); the activity uses tiktoken.
    """
    return math.ceil(len(text) / 3.5) if text else 0


# ---- context ----------------------------------------------------------------------


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
    """Everything a successor generation needs; render with :func:`render_prompt`.

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

    def to_markdown(self) -> str:
        """The whole document for people (not budgeted)."""
        a, t, p = self.agent, self.tokens, self.progress
        out = [
            f"# Handoff `{a.session_id}` generation {a.generation} → {a.next_generation}",
            "",
            f"- Reason: {a.reason.value} · template: {a.template} · model: {a.model or '-'}",
            f"- Context: {t.occupancy:,}/{t.context_window:,} tokens "
            f"({t.usage_fraction:.0%}) · spend {t.total_tokens:,} tokens, ${t.cost_usd:.2f}, "
            f"{t.calls} calls",
        ]
        if self.paused_seconds:
            out.append(f"- Longest pause: {_duration(self.paused_seconds)}")
        out += ["", "## Goal", "", self.goal or "-", "", "## Original request", ""]
        out.append(self.original_request or "-")
        out += ["", "## Progress", "", _progress_line(p)]
        if p.milestones:
            out.append("- Milestones: " + "; ".join(p.milestones))
        if p.critical_path:
            out.append("- Critical path: " + ", ".join(f"`{x}`" for x in p.critical_path))

        def section(title: str, lines: list[str], key: str | None = None) -> None:
            shown = len(lines)
            total = self.total(key) if key else shown
            head = f"## {title} ({total})" if key else f"## {title}"
            out.extend(["", head, ""])
            out.extend(lines or ["- (none)"])
            if key and total > shown:
                out.append(f"- … and {total - shown} more ({_recall_hint(self.lookup, key)})")

        section("Next eligible tasks", [_task_line(x, 10_000) for x in self.next_eligible])
        section("Open blockers", [_blocker_line(b, 10_000) for b in self.open_blockers])
        if self.resolved_blockers:
            section(
                "Resolved blockers on tasks still to do",
                [_resolved_line(b, 10_000) for b in self.resolved_blockers],
            )
        section("Human decisions", [_decision_line(d, 10_000) for d in self.human_decisions])
        section("Failed tasks", [_failed_line(f, 10_000) for f in self.failed_tasks])
        section("Since last handoff", _delta_lines(self.since_last_handoff, 10_000))
        section("Agent decisions", [_decision_line(d, 10_000) for d in self.decisions], "decisions")
        section(
            "Rejected alternatives",
            [_alt_line(x, 10_000) for x in self.rejected_alternatives],
            "rejected_alternatives",
        )
        section(
            "Work completed", [_done_line(x, 10_000) for x in self.work_completed], "work_completed"
        )
        section("Todos", [f"- {_clean(x)}" for x in self.todos], "todos")
        section("Files", [_file_line(f, 10_000) for f in self.files], "files")
        section("Errors", [_error_line(e, 10_000) for e in self.errors], "errors")
        section("Recent human input", [f"- {_clean(x)}" for x in self.recent_human_input])
        section("Tool state", [f"- {k}: {_clean(v)}" for k, v in sorted(self.tool_state.items())])
        section("Environment", [f"- {k}: {_clean(v)}" for k, v in sorted(self.environment.items())])
        section("Lookup hints", _lookup_lines(self.lookup, 10_000))
        return "\n".join(out) + "\n"


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

    def summary(self) -> str:
        """One line: the document summary plus how the prompt was packed."""
        if self.document is None:
            return self.summary_line
        esc = f", escalated from {self.requested_level.value}" if self.escalated else ""
        return (
            f"{self.document.summary()} · prompt {self.prompt_tokens}/{self.budget} tokens "
            f"({self.level.value}{esc})"
        )

    def seed(self) -> HandoffPayload:
        """What a successor needs: the prompt and the summary line, not the document.

        The document is a full copy of the state (6-8x the prompt); carrying it in
        every successor's input made the input grow each generation."""
        if self.document is None:
            return self
        return self.model_copy(update={"document": None, "summary_line": self.summary()})


# ---- building ---------------------------------------------------------------------


def choose_template(
    state: ProjectState, ctx: HandoffContext, level: CompressionLevel | None = None
) -> str:
    """Pick the prompt template from the session's situation.

    Order: explicit override, then a long pause (``multi_day``: re-check the
    environment), then failures (``error_recovery``: what failed, what was tried),
    then ``minimal`` when the minimal level was requested, else ``standard``.
    """
    if ctx.template:
        return ctx.template
    if ctx.paused_seconds > MULTI_DAY_PAUSE_S:
        return "multi_day"
    recent_errors = any(e.generation == ctx.generation for e in state.errors)
    if state.failed_tasks() or recent_errors or ctx.reason == TerminationReason.MODEL_ERROR:
        return "error_recovery"
    if level == CompressionLevel.MINIMAL:
        return "minimal"
    return "standard"


def _arg(event: StateEvent, key: str) -> str:
    v = event.args.get(key)
    return str(v) if v is not None else ""


def summarize_events(
    events: Iterable[StateEvent], state: ProjectState | None = None
) -> HandoffDelta:
    """Summarize state events into a :class:`HandoffDelta` (ids, not texts).

    Decisions and blockers recorded without an explicit id get theirs from `state`
    (the newest unclaimed record with the same title / description), since
    :func:`apply_event` assigns them.

    Args:
        events: The events since the previous handoff, in order.
        state: The state after those events, to resolve assigned ids.

    Returns:
        The delta: ids per kind of change, counts for the rest.
    """
    d = HandoffDelta()
    taken: set[str] = set()

    def newest(candidates: Iterable[tuple[str, bool]]) -> str:
        # The events are the latest changes, so match the newest unclaimed record.
        for cid, ok in candidates:
            if ok and cid not in taken:
                taken.add(cid)
                return cid
        return "?"

    for ev in events:
        d.events += 1
        op = ev.op
        if op == "complete_task":
            d.completed.append(_arg(ev, "task_id"))
        elif op == "fail_task":
            d.failed.append(_arg(ev, "task_id"))
        elif op == "skip_task":
            d.skipped.append(_arg(ev, "task_id"))
        elif op == "retry_task":
            d.retried.append(_arg(ev, "task_id"))
        elif op == "record_decision":
            did = _arg(ev, "decision_id") or ("?" if state is None else "")
            if not did and state is not None:
                title = _arg(ev, "title")
                did = newest(
                    (x.id, x.title == title and x.by == ev.by) for x in reversed(state.decisions)
                )
            (d.human_decisions if ev.by.startswith("human") else d.decisions).append(did)
        elif op == "add_blocker":
            bid = _arg(ev, "blocker_id")
            if not bid and state is not None:
                desc = _arg(ev, "description")
                bid = newest((b.id, b.description == desc) for b in reversed(state.blockers))
            d.blockers_opened.append(bid or "?")
        elif op == "resolve_blocker":
            d.blockers_resolved.append(_arg(ev, "blocker_id"))
        elif op == "set_phase":
            d.phase = _arg(ev, "phase_id") or d.phase
        elif op == "note_file":
            path = _arg(ev, "path")
            if path not in d.files:
                d.files.append(path)
        elif op == "add_todo":
            d.todos += 1
        elif op == "human_message":
            d.human_messages += 1
        elif op == "record_error":
            d.errors += 1
        else:
            d.other[op] = d.other.get(op, 0) + 1
    return d


def build_document(state: ProjectState, ctx: HandoffContext) -> HandoffDocument:
    """Build the handoff document for `ctx.generation` from the project state (pure).

    Args:
        state: The project state at the handoff (all events applied).
        ctx: Session facts: ids, reason, ledger, lineage, events since the previous
            handoff, recent human input, tool state, pause, template override.

    Returns:
        The document. Critical sections are complete; long sections keep their
        most recent items (counts in ``totals``), the rest is recallable.
    """
    led = ctx.ledger
    tasks = list(state.tasks.values())
    order = {tid: i for i, tid in enumerate(state.tasks)}
    counts = state.counts()
    done = state.completed_count
    phase = state.current_phase
    in_phase = [t for t in tasks if t.phase == phase] if phase else []
    phase_name = next((p.name for p in state.phases if p.id == phase), "")
    crit = state.critical_path()

    completed = [t for t in tasks if t.status == TaskStatus.COMPLETED]
    # Most recent first: generation that completed it, then plan order.
    completed.sort(key=lambda t: (t.completed_generation or -1, order[t.id]), reverse=True)
    agent_decisions = [d for d in state.decisions if not d.by.startswith("human")]
    human_decisions = [d for d in state.decisions if d.by.startswith("human")]
    errors_by_task: dict[str, list[str]] = {}
    for e in state.errors:
        if e.task_id:
            errors_by_task.setdefault(e.task_id, []).append(e.message)

    failed = [
        FailedTaskItem(
            id=t.id,
            title=t.title,
            error=_cap(t.error),
            attempts=t.attempts,
            # The last message is the current error; earlier ones are what was tried.
            tried=[_cap(m, 500) for m in errors_by_task.get(t.id, [])[:-1][-3:]],
        )
        for t in state.failed_tasks()
    ]
    eligible = [
        TaskItem(
            id=tid,
            title=state.tasks[tid].title,
            phase=state.tasks[tid].phase,
            attempts=state.tasks[tid].attempts,
            last_error=_cap(errors_by_task[tid][-1], 300) if tid in errors_by_task else "",
        )
        for tid in state.next_eligible()
    ]
    # Errors about tasks still to do come first: they tell the successor what not
    # to repeat; then the most recent.
    pending_ids = {t.id for t in tasks if t.status not in DONE_STATUSES}
    errs = list(enumerate(state.errors))
    errs.sort(key=lambda ie: (ie[1].task_id in pending_ids, ie[0]), reverse=True)

    lineage = sorted(ctx.lineage, key=lambda r: r.generation)
    template = choose_template(state, ctx)
    return HandoffDocument(
        agent=AgentInfo(
            session_id=ctx.session_id,
            generation=ctx.generation,
            next_generation=ctx.generation + 1,
            run_id=ctx.run_id,
            model=ctx.model,
            reason=ctx.reason,
            template=template,
        ),
        tokens=TokenSummary(
            context_window=led.context_window,
            occupancy=led.occupancy,
            usage_fraction=round(led.usage_fraction, 4),
            total_tokens=led.total_tokens,
            input_tokens=led.field_total("input_tokens"),
            output_tokens=led.field_total("output_tokens"),
            cache_creation_input_tokens=led.field_total("cache_creation_input_tokens"),
            cache_read_input_tokens=led.field_total("cache_read_input_tokens"),
            calls=led.calls,
            calls_this_generation=led.calls_this_generation,
            cost_usd=round(led.cost_usd, 6),
            calibration=round(led.calibration, 6),
            peak_prompt_tokens=led.peak_prompt_tokens,
        ),
        original_request=_cap(state.original_request, 4 * _TEXT_CAP),
        goal=_cap(state.goal, 4 * _TEXT_CAP),
        progress=Progress(
            current_phase=phase,
            current_phase_name=phase_name,
            phase_done=sum(1 for t in in_phase if t.status in DONE_STATUSES),
            phase_total=len(in_phase),
            done=done,
            total=len(tasks),
            counts=counts,
            milestones=list(state.milestones[-20:]),
            critical_path=crit[:12],
            critical_path_length=len(crit),
        ),
        work_completed=[
            TaskItem(
                id=t.id,
                title=t.title,
                phase=t.phase,
                summary=_cap(t.summary, 500),
                generation=t.completed_generation,
            )
            for t in completed[:_DOC_CAP]
        ],
        decisions=[_decision_item(d) for d in reversed(agent_decisions[-_DOC_CAP:])],
        human_decisions=[_decision_item(d) for d in human_decisions],
        rejected_alternatives=[
            AlternativeItem(title=_cap(a.title, 500), reason=_cap(a.reason, 500))
            for a in reversed(state.rejected_alternatives[-_DOC_CAP:])
        ],
        open_blockers=[_blocker_item(b) for b in state.open_blockers()],
        resolved_blockers=[
            _blocker_item(b)
            for b in state.blockers
            if b.status == "resolved"
            and b.task_id in state.tasks
            and state.tasks[b.task_id].status not in DONE_STATUSES
        ][-20:],
        files=[
            FileItem(path=f.path, note=_cap(f.note, 500)) for f in reversed(state.files[-_DOC_CAP:])
        ],
        todos=[_cap(x, 500) for x in reversed(state.todos[-_DOC_CAP:])],
        next_eligible=eligible,
        failed_tasks=failed,
        errors=[
            ErrorItem(
                source=e.source,
                message=_cap(e.message, 500),
                task_id=e.task_id,
                generation=e.generation,
            )
            for _, e in errs[:_DOC_CAP]
        ],
        tool_state={k: _cap(v, 500) for k, v in list(ctx.tool_state.items())[:_DOC_CAP]},
        environment={k: _cap(v, 500) for k, v in list(state.environment.items())[:_DOC_CAP]},
        recent_human_input=[_cap(x) for x in ctx.recent_human_input[-10:]]
        or [_cap(x) for x in state.human_messages[-5:]],
        free_form=state.free_form,
        notes=[_cap(x, 500) for x in reversed(state.notes[-_DOC_CAP:])],
        open_questions=[
            QuestionItem(id=q.id, text=_cap(q.text, 500)) for q in state.open_questions()
        ][-_DOC_CAP:],
        recent_exchange=[_cap(x, 1_000) for x in ctx.recent_exchange[-10:]],
        lookup=LookupHints(workflow_id=ctx.session_id, generation=ctx.generation, lineage=lineage),
        since_last_handoff=summarize_events(ctx.events_since_last_handoff, state),
        totals={
            "work_completed": len(completed),
            "decisions": len(agent_decisions),
            "human_decisions": len(human_decisions),
            "rejected_alternatives": len(state.rejected_alternatives),
            "open_blockers": len(state.open_blockers()),
            "files": len(state.files),
            "todos": len(state.todos),
            "next_eligible": len(eligible),
            "failed_tasks": len(failed),
            "errors": len(state.errors),
            "environment": len(state.environment),
            "tool_state": len(ctx.tool_state),
            "human_messages": len(state.human_messages),
            "notes": len(state.notes) + state.notes_archived,
            "open_questions": len(state.open_questions()),
            "recent_exchange": len(ctx.recent_exchange[-10:]),
        },
        paused_seconds=ctx.paused_seconds,
    )


def _blocker_item(b: Any) -> BlockerItem:
    return BlockerItem(
        id=b.id,
        type=b.type,
        description=_cap(b.description),
        task_id=b.task_id,
        opened_at=b.opened_at,
        resolution=_cap(b.resolution, 1_000),
    )


def _decision_item(d: Any) -> DecisionItem:
    return DecisionItem(
        id=d.id,
        title=_cap(d.title, 1_000),
        rationale=_cap(d.rationale, 1_000),
        by=d.by,
        blocker_id=d.blocker_id,
        generation=d.generation,
        at=d.at,
    )


# ---- text helpers -------------------------------------------------------------------

# A stray "Next eligible tasks:" inside user text would be read as the eligible
# list by the agent, so it is defused everywhere except the one real line.
_NEXT_RE = re.compile(r"(next\s+eligible\s+tasks?)\s*:", re.IGNORECASE)
_WS_RE = re.compile(r"\s+")


def _cap(text: str, n: int = _TEXT_CAP) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _clean(text: str) -> str:
    """One line, no accidental eligible-list marker."""
    text = _WS_RE.sub(" ", text).strip()
    return _NEXT_RE.sub(r"\1 -", text)


def _clip(text: str, n: int, recall: str | None = None) -> str:
    """Clean and shorten to `n` chars; a clipped critical text says where the rest is."""
    text = _clean(text)
    if len(text) <= n:
        return text
    cut = text[: max(0, n - 1)].rstrip() + "…"
    return cut + (f" [clipped; full text via recall {recall}]" if recall else "")


def _duration(seconds: float) -> str:
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f} days"
    if seconds >= 3_600:
        return f"{seconds / 3_600:.1f} h"
    return f"{seconds / 60:.0f} min"


def _recall_hint(lookup: LookupHints, section: str) -> str:
    return f"recall with `recall` tool: {lookup.pointer(_RECALL_OF.get(section, section))}"


# Document section → recall section holding its full data.
_RECALL_OF = {
    "work_completed": "tasks",
    "next_eligible": "tasks",
    "failed_tasks": "tasks",
    "rejected_alternatives": "decisions",
    "human_decisions": "decisions",
    "open_blockers": "blockers",
    "tool_state": "environment",
    "recent_human_input": "human_messages",
    "since_last_handoff": "tasks",
}


def _progress_line(p: Progress) -> str:
    if not p.total and not p.current_phase:
        return "No task list: a conversation toward the goal."
    if p.current_phase:
        name = f" ({_clip(p.current_phase_name, 60)})" if p.current_phase_name else ""
        phase = f"Current phase: `{p.current_phase}`{name}"
        if p.phase_total:
            phase += f", {p.phase_done}/{p.phase_total} done in phase"
    else:
        phase = "Current phase: (none set)"
    pct = round(100 * p.done / p.total) if p.total else 100
    extra = []
    for key in ("in_progress", "failed", "skipped"):
        if p.counts.get(key):
            extra.append(f"{p.counts[key]} {key.replace('_', ' ')}")
    tail = f" ({', '.join(extra)})" if extra else ""
    return f"{phase}. Overall {p.done}/{p.total} tasks done ({pct}%){tail}."


# Line formatters. `n` is the character allowance for free text; 0 means ids only
# (the last resort before anything critical would be left out).


def _task_line(t: TaskItem, n: int, with_error: bool = True) -> str:
    line = f"- `{t.id}`"
    if n:
        line += f" {_clip(t.title, n)}".rstrip()
        if t.last_error and with_error:
            line += f" — failed before (attempts {t.attempts}): {_clip(t.last_error, n)}"
    return line


def _done_line(t: TaskItem, n: int) -> str:
    line = f"- `{t.id}` {_clip(t.title, n)}".rstrip()
    if t.summary and n > 60:
        line += f" — {_clip(t.summary, n)}"
    return line


def _blocker_line(b: BlockerItem, n: int) -> str:
    on = f" on `{b.task_id}`" if b.task_id else ""
    text = f": {_clip(b.description, n, 'blockers')}" if n else ""
    return f"- `{b.id}` [{b.type.value}]{on}{text}"


def _resolved_line(b: BlockerItem, n: int) -> str:
    res = f": {_clip(b.resolution, n, 'blockers')}" if n and b.resolution else ""
    return f"- `{b.id}` on `{b.task_id}` is resolved (do not raise it again){res}"


def _decision_line(d: DecisionItem, n: int) -> str:
    who = f" ({_clip(d.by, 60)})" if d.human else ""
    res = f" (resolves `{d.blocker_id}`)" if d.blocker_id else ""
    line = f"- `{d.id}`{who}{res}"
    if n:
        line += f": {_clip(d.title, n, 'decisions' if d.human else None)}"
        if d.rationale and n > 60:
            line += f" — {_clip(d.rationale, n, 'decisions' if d.human else None)}"
    return line


def _failed_line(f: FailedTaskItem, n: int) -> str:
    line = f"- `{f.id}` (attempts {f.attempts})"
    if n:
        line += f": {_clip(f.error or 'failed', n, 'tasks')}"
        if f.tried and n > 60:
            line += " Tried before: " + "; ".join(_clip(x, max(40, n // 2)) for x in f.tried)
    return line


def _alt_line(a: AlternativeItem, n: int) -> str:
    reason = f" — {_clip(a.reason, n)}" if a.reason else ""
    return f"- {_clip(a.title, n)}{reason}"


def _file_line(f: FileItem, n: int) -> str:
    note = f" — {_clip(f.note, n)}" if f.note else ""
    return f"- {_clip(f.path, 200)}{note}"


def _error_line(e: ErrorItem, n: int) -> str:
    on = f" `{e.task_id}`" if e.task_id else ""
    return f"- [{_clip(e.source, 40)}]{on} gen {e.generation}: {_clip(e.message, n)}"


def _ids(ids: list[str], limit: int) -> str:
    shown = ", ".join(f"`{x}`" for x in ids[:limit])
    return shown + (f" +{len(ids) - limit} more" if len(ids) > limit else "")


def _delta_lines(d: HandoffDelta, limit: int) -> list[str]:
    """The "since last handoff" section: ids of what changed, counts of the rest."""
    if d.empty:
        return ["- No state changes recorded since the last handoff."]
    out = []
    # Most consequential first: the packer keeps a prefix of these lines.
    for label, ids in (
        ("Blockers opened", d.blockers_opened),
        ("Blockers resolved", d.blockers_resolved),
        ("Human decisions", d.human_decisions),
        ("Failed", d.failed),
        ("Agent decisions", d.decisions),
        ("Completed", d.completed),
        ("Skipped", d.skipped),
        ("Retried", d.retried),
    ):
        if ids:
            out.append(f"- {label} ({len(ids)}): {_ids(ids, limit)}")
    if d.phase:
        out.append(f"- Phase set to `{d.phase}`")
    if d.files:
        shown = ", ".join(_clip(p, 80) for p in d.files[:limit])
        more = f" +{len(d.files) - limit} more" if len(d.files) > limit else ""
        out.append(f"- Files noted ({len(d.files)}): {shown}{more}")
    misc = [
        f"{n} {label}"
        for n, label in (
            (d.todos, "todos added"),
            (d.human_messages, "human messages"),
            (d.errors, "errors recorded"),
        )
        if n
    ] + [f"{n} {op}" for op, n in sorted(d.other.items())]
    if misc:
        out.append("- Also: " + ", ".join(misc))
    return out


def _lookup_lines(lk: LookupHints, max_runs: int, short: bool = False) -> list[str]:
    recall = (
        f'- `{lk.recall_tool}` tool input: {{"generation": <int>, "section": <section>, '
        f'"ids": [optional]}}; sections: {", ".join(lk.recall_sections)}. '
        f"This handoff is generation {lk.generation}."
    )
    if short or max_runs <= 0:
        return [recall]
    runs = lk.lineage[-max_runs:]
    earlier = len(lk.lineage) - len(runs)
    runs_txt = ", ".join(f"gen {r.generation} `{r.run_id}`" for r in runs) or "(none)"
    if earlier:
        runs_txt += f" (+{earlier} earlier, recall by generation)"
    return [f"- Workflow `{lk.workflow_id}`, runs: {runs_txt}.", recall]


def next_eligible_line(ids: list[str], more: int = 0) -> str:
    """The one line the agent parses for its next tasks (ids backticked).

    Args:
        ids: The eligible task ids, in order.
        more: Eligible ids left off the line (only when even ids cannot fit the
            top budget); written without backticks so they are not misread as ids.
    """
    if not ids and not more:
        return "Next eligible tasks: (none)"
    line = "Next eligible tasks: " + ", ".join(f"`{x}`" for x in ids)
    return line + (f" and {more} more" if more else "")


# ---- rendering --------------------------------------------------------------------


@dataclass
class _Section:
    """One block of the prompt: a header, always-kept lines, optional items."""

    key: str
    header: str | None
    fixed: list[str] = field(default_factory=list)
    """Critical sections: one line per critical item. Others: always-kept lines."""
    items: list[str] = field(default_factory=list)
    """Optional lines in preference order (non-critical sections)."""
    total: int = 0
    """Items in the state for this section (≥ len(items)); the excess is pointed to."""
    recall: str = "tasks"
    priority: int = 100
    critical: bool = False
    cap: int = 1_000
    ids: list[str] = field(default_factory=list)
    """Ids-only rendering of a critical section (the `next` section always): one
    line ``label: `a`, `b``` whose tail can be cut as the very last resort."""
    id_label: str = ""
    droppable: bool = False
    """Critical-frame text that goes before any critical id does (lead, instructions)."""
    oldest_first: bool = False
    """Items are offered newest first (the packer keeps a prefix) but shown reversed."""
    refs: list[_Section] = field(default_factory=list)
    """The `index` section only: the optional sections it summarizes."""
    # Packing results.
    included: bool = False
    n_items: int = 0
    id_cut: int = 0
    """Ids left off the section's id line, replaced by a count and a recall hint."""


def _pointer(lk: LookupHints, recall: str) -> str:
    return f"(recall with `recall` tool: {lk.pointer(recall)})"


def _block_lines(s: _Section, lk: LookupHints) -> list[str]:
    lines = [s.header] if s.header else []
    if s.id_label:
        shown = s.ids[: len(s.ids) - s.id_cut]
        # No backticks after the ids: the agent reads every backticked token on
        # the eligible line as a task id.
        more = f' (recall section "{s.recall}")' if s.id_cut else ""
        if s.key == "next":
            lines.append(next_eligible_line(shown, s.id_cut) + more)
        else:
            tail = f" and {s.id_cut} more" if s.id_cut else ""
            lines.append(f"{s.id_label}: {', '.join(f'`{x}`' for x in shown)}{tail}{more}")
    lines += s.fixed
    if s.key == "index":
        # One terse entry per optional section that shows no items at all.
        entries = [
            f'{_LABELS.get(r.key, r.key)}: {r.total} (section "{r.recall}")'
            for r in s.refs
            if r.total > 0 and r.n_items == 0
        ]
        if entries:
            lines.append("; ".join(entries) + ".")
        return lines
    kept = s.items[: s.n_items]
    lines += kept[::-1] if s.oldest_first else kept
    omitted = s.total - s.n_items
    if not s.critical and omitted > 0 and s.key != "since_last_handoff":
        # (The delta's lines are themselves counts; it needs no pointer.)
        lines.append(f"… and {omitted} more {_pointer(lk, s.recall)}")
    return lines


_LABELS = {
    "recent_exchange": "Recent exchange",
    "notes": "Notes",
    "open_questions": "Open questions",
    "since_last_handoff": "Since last handoff",
    "recent_human_input": "Recent human input",
    "decisions": "Agent decisions",
    "work_completed": "Work completed",
    "errors": "Errors",
    "rejected_alternatives": "Rejected alternatives",
    "todos": "Todos",
    "files": "Files",
    "tool_state": "Tool state",
    "environment": "Environment",
}


def _assemble(secs: list[_Section], lk: LookupHints) -> str:
    blocks = ["\n".join(_block_lines(s, lk)) for s in secs if s.included]
    return "\n\n".join(blocks) + "\n"


# Per level: characters per free-text field of optional / critical items, and how
# many items each optional section may show at most (the budget usually binds first).
_TEXT_N = {CompressionLevel.MINIMAL: 60, CompressionLevel.STANDARD: 110, CompressionLevel.FULL: 180}
_CRIT_N = {
    CompressionLevel.MINIMAL: 120,
    CompressionLevel.STANDARD: 300,
    CompressionLevel.FULL: 500,
}
_CAPS: dict[str, tuple[int, int, int]] = {
    "recent_exchange": (2, 6, 10),
    "notes": (3, 8, 16),
    "open_questions": (2, 6, 12),
    "since_last_handoff": (6, 12, 14),
    "recent_human_input": (1, 3, 5),
    "decisions": (2, 8, 20),
    "work_completed": (0, 8, 24),
    "errors": (1, 4, 10),
    "rejected_alternatives": (0, 3, 8),
    "todos": (1, 4, 10),
    "files": (0, 4, 12),
    "tool_state": (0, 4, 10),
    "environment": (0, 4, 12),
}

# Packing priority (lower first) per template.
_PRIORITY: dict[str, dict[str, int]] = {
    "standard": {
        "goal": 10,
        "open_questions": 14,
        "notes": 16,
        "recent_exchange": 13,
        "since_last_handoff": 20,
        "recent_human_input": 25,
        "decisions": 30,
        "work_completed": 40,
        "errors": 50,
        "todos": 55,
        "rejected_alternatives": 60,
        "files": 65,
        "tool_state": 70,
        "environment": 80,
    },
    "minimal": {
        "goal": 10,
        "open_questions": 14,
        "notes": 16,
        "recent_exchange": 13,
        "since_last_handoff": 20,
        "recent_human_input": 25,
        "decisions": 30,
        "todos": 40,
        "errors": 45,
        "work_completed": 90,
        "rejected_alternatives": 90,
        "files": 90,
        "tool_state": 90,
        "environment": 90,
    },
    "error_recovery": {
        "goal": 10,
        "open_questions": 14,
        "notes": 16,
        "recent_exchange": 13,
        "since_last_handoff": 12,
        "errors": 15,
        "recent_human_input": 25,
        "decisions": 30,
        "rejected_alternatives": 35,
        "work_completed": 45,
        "todos": 55,
        "files": 60,
        "tool_state": 70,
        "environment": 75,
    },
    "multi_day": {
        "goal": 10,
        "open_questions": 14,
        "notes": 16,
        "recent_exchange": 13,
        "environment": 12,
        "tool_state": 14,
        "recent_human_input": 18,
        "since_last_handoff": 20,
        "files": 25,
        "decisions": 30,
        "errors": 40,
        "work_completed": 50,
        "todos": 55,
        "rejected_alternatives": 60,
    },
}

_LEADS = {
    "error_recovery": (
        "## Error recovery",
        "The previous generation hit failures. Read each failed task's error and what was "
        "tried before; do not repeat a failed approach unchanged. Retry with a different "
        "approach, or open a blocker if it needs a human.",
        "Failures happened: do not repeat a failed approach unchanged.",
    ),
    "multi_day": (
        "## Resuming after a long pause",
        "The session was paused for {pause}. Before working on any task, re-check the "
        "environment: tool versions, services, credentials and the files listed below may "
        "have changed. Record differences with set_environment or record_error.",
        "Paused for {pause}: re-check the environment before any task.",
    ),
}


def _sections(
    doc: HandoffDocument, template: str, level: CompressionLevel, mode: str
) -> list[_Section]:
    """All prompt sections in display order, critical ones flagged.

    `mode` shrinks critical texts as a last resort before leaving anything out:
    ``verbose`` → ``compact`` (short texts) → ``ids`` (ids only, terse frame).
    """
    a, lk = doc.agent, doc.lookup
    n = _TEXT_N[level]
    cn = {"verbose": _CRIT_N[level], "compact": 80, "ids": 0}[mode]
    terse = mode == "ids"
    prio = _PRIORITY[template]
    li = LEVEL_ORDER.index(level)
    secs: list[_Section] = []

    def add(key: str, header: str | None, **kw: Any) -> None:
        s = _Section(key=key, header=header, **kw)
        if not s.critical:
            s.priority = prio.get(key, 100)
            cap = _CAPS.get(key, (3, 6, 12))[li]
            if template == "multi_day" and key in ("environment", "tool_state", "files"):
                cap *= 2  # what the successor must re-check after a long pause
            s.cap = min(s.cap, cap)
        secs.append(s)

    title = (
        f"# Handoff: session `{a.session_id}`, generation {a.generation} → "
        f"{a.next_generation} ({a.reason.value})"
    )
    frame = [title]
    if li > 0 and not terse:
        frame.append(
            "You continue this session in a fresh context. This compact handoff is your "
            "memory; fetch anything omitted with the `recall` tool."
        )
    if not terse:
        frame.append(_usage_line(doc, short=li == 0))
    add("header", None, critical=True, fixed=frame)
    if template in _LEADS:
        head, text, short = _LEADS[template]
        lead = (short if terse or li == 0 else text).format(pause=_duration(doc.paused_seconds))
        add("lead", None if terse else head, critical=True, fixed=[lead], droppable=terse)

    # Goal and request are short context the agent cannot work without; clipped
    # texts say so (the full request is in every generation's recallable state).
    gn = 80 if terse else 3 * n
    goal = []
    if doc.goal:
        goal.append(f"Goal: {_clip(doc.goal, gn, 'tasks')}")
    if doc.original_request and doc.original_request != doc.goal:
        goal.append(f"Original request: {_clip(doc.original_request, gn, 'tasks')}")
    if goal and not terse:
        add("goal", "## Goal", critical=True, fixed=goal)
    elif goal:
        # Last resort: the goal competes with other content (it is recallable).
        add("goal", None, items=goal, total=len(goal), cap=len(goal), recall="tasks")
        secs[-1].priority = 5

    prog = [_progress_line(doc.progress)]
    if doc.progress.milestones and not terse and li > 0:
        prog.append("Milestones: " + "; ".join(_clip(m, 60) for m in doc.progress.milestones[-3:]))
    add("progress", None if terse else "## Progress", critical=True, fixed=prog)

    def crit(key: str, header: str, label: str, ids: list[str], lines: list[str], rec: str) -> None:
        # Ids mode: one "label: `a`, `b`" line, no header, no texts.
        if terse:
            add(key, None, critical=True, ids=ids, id_label=label, recall=rec)
        else:
            add(key, header, critical=True, fixed=lines, recall=rec)

    if doc.open_blockers:
        crit(
            "open_blockers",
            f"## Open blockers ({len(doc.open_blockers)})",
            "Open blockers",
            [b.id for b in doc.open_blockers],
            [_blocker_line(b, cn) for b in doc.open_blockers],
            "blockers",
        )
    if doc.resolved_blockers:
        crit(
            "resolved_blockers",
            "## Resolved blockers on tasks still to do",
            "Resolved blockers (do not raise again)",
            [b.id for b in doc.resolved_blockers],
            [_resolved_line(b, cn // 2) for b in doc.resolved_blockers],
            "blockers",
        )
    if doc.human_decisions:
        crit(
            "human_decisions",
            f"## Human decisions ({len(doc.human_decisions)}) — follow them",
            "Human decisions (follow them)",
            [d.id for d in doc.human_decisions],
            [_decision_line(d, cn) for d in doc.human_decisions],
            "decisions",
        )
    if doc.failed_tasks:
        head = "## Failed tasks" + (
            " — what failed, what was tried" if template == "error_recovery" else ""
        )
        crit(
            "failed_tasks",
            f"{head} ({len(doc.failed_tasks)})",
            "Failed tasks",
            [f.id for f in doc.failed_tasks],
            [_failed_line(f, cn) for f in doc.failed_tasks],
            "tasks",
        )
    # Detail lines (titles, earlier errors) for a short eligible list; the ids line
    # itself is what the agent acts on.
    failed_ids = {f.id for f in doc.failed_tasks}
    failed_err = {f.id: f.error for f in doc.failed_tasks}
    details = [
        _task_line(t, min(cn, 100), with_error=t.id not in failed_ids)
        for t in doc.next_eligible[:8]
        if cn and (li > 0 or (t.last_error and t.id not in failed_ids))
    ]
    if not doc.free_form:  # no task list, nothing to be eligible
        add(
            "next",
            None if terse else "## Next",
            critical=True,
            ids=[t.id for t in doc.next_eligible],
            id_label="Next eligible tasks",
            fixed=details,
            recall="tasks",
        )

    _free_form_sections(doc, n, add)
    if not doc.since_last_handoff.empty:
        delta = _delta_lines(doc.since_last_handoff, 12 if li else 5)
        add(
            "since_last_handoff",
            f"## Since last handoff ({doc.since_last_handoff.events} events)",
            items=delta,
            total=len(delta),
            recall="tasks",
        )
    human = [f"- {_clip(x, 2 * n)}" for x in reversed(doc.recent_human_input)]
    add(
        "recent_human_input",
        "## Recent human input (newest first)",
        items=human,
        total=len(human),
        recall="human_messages",
    )
    add(
        "decisions",
        f"## Agent decisions ({doc.total('decisions')}, newest first)",
        items=[_decision_line(d, n) for d in doc.decisions],
        total=doc.total("decisions"),
        recall="decisions",
    )
    add(
        "work_completed",
        f"## Work completed ({doc.total('work_completed')}, newest first)",
        items=[_done_line(t, n) for t in doc.work_completed],
        total=doc.total("work_completed"),
        recall="tasks",
    )
    add(
        "errors",
        f"## Errors ({doc.total('errors')}, tasks still to do first)",
        # A failed task's current error is already in its critical line.
        items=[
            _error_line(e, n)
            for e in doc.errors
            if not (e.task_id in failed_ids and e.message == failed_err.get(e.task_id))
        ],
        total=doc.total("errors"),
        recall="errors",
    )
    add(
        "rejected_alternatives",
        f"## Rejected alternatives ({doc.total('rejected_alternatives')})",
        items=[_alt_line(x, n) for x in doc.rejected_alternatives],
        total=doc.total("rejected_alternatives"),
        recall="decisions",
    )
    add(
        "todos",
        f"## Todos ({doc.total('todos')}, newest first)",
        items=[f"- {_clip(x, n)}" for x in doc.todos],
        total=doc.total("todos"),
        recall="todos",
    )
    add(
        "files",
        f"## Files ({doc.total('files')}, newest first)",
        items=[_file_line(f, n) for f in doc.files],
        total=doc.total("files"),
        recall="files",
    )
    add(
        "tool_state",
        "## Tool state",
        items=[f"- {_clip(k, 60)}: {_clip(v, n)}" for k, v in sorted(doc.tool_state.items())],
        total=max(doc.total("tool_state"), len(doc.tool_state)),
        recall="environment",
    )
    add(
        "environment",
        "## Environment" + (" — re-check first" if template == "multi_day" else ""),
        items=[f"- {_clip(k, 60)}: {_clip(v, n)}" for k, v in sorted(doc.environment.items())],
        total=max(doc.total("environment"), len(doc.environment)),
        recall="environment",
    )
    add(
        "index",
        f"## Not shown (recall with `recall` tool, generation {lk.generation})",
        refs=[x for x in secs if not x.critical],
        recall="tasks",
    )
    add(
        "lookup",
        None if terse else "## Lookup hints",
        critical=True,
        fixed=_lookup_lines(lk, 3 * li, short=terse),
    )
    add(
        "instructions",
        None if terse else "## Instructions",
        critical=True,
        fixed=[_instructions(doc, template, terse or li == 0)],
        droppable=terse,
    )
    return secs


def _free_form_sections(doc: HandoffDocument, n: int, add: Callable[..., None]) -> None:
    """Open questions, notes and the recent exchange (free-form sessions; empty
    otherwise, and then not shown)."""
    add(
        "open_questions",
        f"## Open questions ({doc.total('open_questions')})",
        items=[f"- `{q.id}`: {_clip(q.text, 2 * n)}" for q in doc.open_questions],
        total=doc.total("open_questions"),
        recall="questions",
    )
    add(
        "notes",
        f"## Your notes ({doc.total('notes')}, newest first)",
        items=[f"- {_clip(x, 2 * n)}" for x in doc.notes],
        total=doc.total("notes"),
        recall="notes",
    )
    # The packer keeps a prefix of the items: offered newest first, shown oldest first
    # (as a conversation reads).
    exchange = [f"{_clip(x, 2 * n)}" for x in doc.recent_exchange]
    add(
        "recent_exchange",
        "## Recent exchange (oldest first)",
        items=exchange[::-1],
        total=len(exchange),
        recall="human_messages",
        oldest_first=True,
    )


def _usage_line(doc: HandoffDocument, short: bool = False) -> str:
    t = doc.tokens
    if short:
        return (
            f"Context at handoff: {t.usage_fraction:.0%} of {t.context_window:,}; "
            f"spend ${t.cost_usd:.2f}."
        )
    model = f"Model {doc.agent.model}; " if doc.agent.model else ""
    return (
        f"{model}context was {t.occupancy:,}/{t.context_window:,} tokens "
        f"({t.usage_fraction:.0%}); session spend {t.total_tokens:,} tokens, "
        f"${t.cost_usd:.2f}, {t.calls} calls."
    )


def _instructions(doc: HandoffDocument, template: str, terse: bool = False) -> str:
    p = doc.progress
    if doc.free_form:
        return (
            "Continue the conversation toward the goal: answer the human, keep notes "
            "(add_note), decisions and open questions current, and call `finish` with a "
            "summary when the goal is met."
        )
    if not doc.next_eligible and p.total and p.done >= p.total:
        return "All tasks are done: verify the goal is met and finish."
    wait = any(b.type == BlockerType.HUMAN_DECISION for b in doc.open_blockers)
    if terse:
        return "Continue with the next eligible tasks; record progress with the state tools." + (
            " Wait for human decisions on open blockers." if wait else ""
        )
    parts = []
    if template == "multi_day":
        parts.append("Re-check the environment first.")
    if wait:
        parts.append("Do not work around open human_decision blockers; wait for the decision.")
    parts.append(
        "Continue with the next eligible tasks in order and record progress with the state "
        "tools (complete_task, fail_task, record_decision, add_blocker)."
    )
    return " ".join(parts)


def render_prompt(
    doc: HandoffDocument,
    level: CompressionLevel | str = CompressionLevel.STANDARD,
    budgets: dict[CompressionLevel, int] | dict[str, int] | None = None,
    count: Callable[[str], int] = approx_tokens,
    calibration: float = 1.0,
    template: str | None = None,
) -> HandoffPayload:
    """Pack `doc` into a continuation prompt within a level's token budget.

    Critical items (current phase, open blockers, human decisions, failed tasks,
    next eligible tasks) are always included by id. If they do not fit the
    requested level, the next level is tried (``escalated=True`` with a ``note``).
    At the top level their texts are shortened (ids kept), and only if even the
    ids cannot fit are some replaced by a count plus recall pointer — again flagged
    in ``escalated``/``note``. Nothing is ever cut silently.

    Args:
        doc: The document to render.
        level: Requested compression level.
        budgets: Token budget per level; missing levels use the defaults.
        count: Raw token counter (tiktoken in the activity).
        calibration: Multiplier from raw counts to the model's tokens; a prompt's
            tokens are ``ceil(count(prompt) * calibration)``.
        template: Override of the document's template.

    Returns:
        The payload. ``prompt_tokens <= budget`` unless the budget cannot hold even
        the ids-only frame (then ``escalated`` and ``note`` say so).
    """
    requested = CompressionLevel(level)
    bud = default_budgets()
    for k, v in (budgets or {}).items():
        bud[CompressionLevel(k)] = int(v)
    cal = calibration if calibration > 0 else 1.0
    tpl = template or doc.agent.template
    # The document's automatic choice does not know the level: a minimal request
    # in an otherwise ordinary situation uses the minimal template.
    if template is None and tpl == "standard" and requested == CompressionLevel.MINIMAL:
        tpl = "minimal"
    if tpl not in TEMPLATES:
        raise ValueError(f"unknown template {tpl!r}; expected one of {', '.join(TEMPLATES)}")

    cache: dict[str, int] = {}

    def raw(text: str) -> int:
        # Lines recur across attempts (levels, modes) and packing steps: count once.
        got = cache.get(text)
        if got is None:
            got = cache[text] = count(text)
        return got

    def calibrated(x: int) -> int:
        return math.ceil(x * cal - 1e-9) if x else 0

    top = CompressionLevel.FULL
    attempts = [(lv, "verbose") for lv in LEVEL_ORDER[LEVEL_ORDER.index(requested) :]]
    attempts += [(top, "compact"), (top, "ids")]
    for i, (lv, mode) in enumerate(attempts):
        packed = _pack(doc, tpl, lv, mode, bud[lv], raw, calibrated, force=i == len(attempts) - 1)
        if packed is None:
            continue
        prompt, secs = packed
        tokens = calibrated(count(prompt))
        dropped = sum(s.id_cut for s in secs if s.critical)
        notes = []
        if lv != requested:
            notes.append(
                f"critical items did not fit the {requested.value} budget "
                f"({bud[requested]} tokens); escalated to {lv.value} ({bud[lv]} tokens)"
            )
        if mode != "verbose":
            notes.append(f"critical item texts shortened ({mode}); ids kept, full text via recall")
        if dropped:
            notes.append(
                f"{dropped} critical item(s) did not fit even the {lv.value} budget; they are "
                "counted with a recall pointer instead"
            )
        if tokens > bud[lv]:
            notes.append(f"the {lv.value} budget ({bud[lv]}) cannot hold the prompt frame")
        delta = next((s for s in secs if s.key == "since_last_handoff" and s.included), None)
        return HandoffPayload(
            document=doc,
            prompt=prompt,
            prompt_tokens=tokens,
            level=lv,
            requested_level=requested,
            budget=bud[lv],
            escalated=bool(notes),
            note="; ".join(notes),
            template=tpl,
            delta_tokens=calibrated(raw("\n".join(_block_lines(delta, doc.lookup))))
            if delta
            else 0,
            omitted={
                s.key: s.total - s.n_items
                for s in secs
                if not s.critical and s.key != "index" and s.total - s.n_items > 0
            },
        )
    raise AssertionError("unreachable: the last attempt is forced")  # pragma: no cover


def _pack(
    doc: HandoffDocument,
    template: str,
    level: CompressionLevel,
    mode: str,
    budget: int,
    raw: Callable[[str], int],
    calibrated: Callable[[int], int],
    force: bool,
) -> tuple[str, list[_Section]] | None:
    """One packing attempt; None when the critical items do not fit (unless `force`)."""
    secs = _sections(doc, template, level, mode)
    lk = doc.lookup
    # Summing per-line counts slightly overestimates the joined text; the final
    # prompt is verified once below, and the margin makes re-trimming rare.
    limit = budget - max(4, budget // 50)

    def cost(s: _Section) -> int:
        lines = _block_lines(s, lk)
        # Newlines mostly merge with the line's last token (".\n", ")\n"):
        # measured ≈ 0.3 token per line; the final count is verified anyway.
        return sum(raw(x) for x in lines) + (len(lines) + 2) // 3 + 1

    crit = [s for s in secs if s.critical]
    for s in crit:
        s.included = True
    used = sum(cost(s) for s in crit)
    if calibrated(used) > limit:
        if not force:
            return None
        _cut_critical(crit, lambda: calibrated(sum(cost(s) for s in crit if s.included)) > limit)
        used = sum(cost(s) for s in crit if s.included)

    # Every optional section starts as one terse entry in the index ("Work
    # completed: 60 (section "tasks")"), so each kind of content is at least
    # counted and pointed to; then whole items are added by section priority.
    index = next(s for s in secs if s.key == "index")
    optional = sorted(index.refs, key=lambda s: s.priority)

    def try_index() -> None:
        nonlocal used
        if not index.included and calibrated(used + cost(index)) <= limit:
            index.included = True
            used += cost(index)

    # At the minimal level content beats the index (the lookup hints already say
    # everything is recallable); above it, the index is reserved first.
    if level != CompressionLevel.MINIMAL:
        try_index()
    for s in optional:
        while s.n_items < min(s.cap, len(s.items)):
            before = (cost(s) if s.included else 0) + (cost(index) if index.included else 0)
            s.n_items += 1
            was, s.included = s.included, True
            after = cost(s) + (cost(index) if index.included else 0)
            if calibrated(used + after - before) > limit:
                s.n_items -= 1
                s.included = was
                break
            used += after - before
    try_index()

    # Verify the real count once; joining rarely changes it, but if it does, trim
    # the lowest-priority items (then the index) until it fits.
    prompt = _assemble(secs, lk)

    def over() -> bool:
        return calibrated(raw(prompt)) > budget

    while over():
        victim = next((s for s in reversed(optional) if s.n_items), None)
        if victim is not None:
            victim.n_items -= 1
            victim.included = victim.n_items > 0
        elif index.included:
            index.included = False
        else:
            break
        prompt = _assemble(secs, lk)
    if over():
        if not force:
            return None

        def still_over() -> bool:
            nonlocal prompt
            prompt = _assemble(secs, lk)
            return over()

        _cut_critical(crit, still_over)
    return prompt, secs


def _cut_critical(crit: list[_Section], too_big: Callable[[], bool]) -> None:
    """Last resort (ids mode, top level): shed frame text, then trailing ids.

    Droppable frame sections (lead, instructions) go first; then one id at a time
    from the id line that still shows the most, each cut counted on its line with
    the recall section to fetch it from. Nothing disappears without a count.
    """
    for s in crit:
        if s.droppable and too_big():
            s.included = False
    while too_big():
        best, shown = None, 0
        for s in crit:
            n = len(s.ids) - s.id_cut if s.id_label and s.included else 0
            if n > shown:
                best, shown = s, n
        if best is None:
            return
        best.id_cut += 1
