"""The context protocol's session files: one summary per session (generation), and the
append-only `decisions.log` and `blockers.log`.

A summary follows the protocol's template (starting state, accomplishments, blockers,
decisions, files, next steps, context health), built by comparing the state a
generation started from with the state it left.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from temporal_handoff.schemas.project import DONE_STATUSES, BlockerType, ProjectState, TaskStatus
from temporal_handoff.seeds.context_protocol import current_position
from temporal_handoff.seeds.orchestrator import iso

DECISIONS_LOG = "decisions.log"
BLOCKERS_LOG = "blockers.log"
SUMMARIES_DIR = "session-summaries"


@dataclass
class SessionFacts:
    """What the summary needs about one generation besides its two states."""

    number: int
    """The protocol's session number (1-based)."""
    day: date
    agent: str = "Claude"
    duration_s: float | None = None
    context_fraction: float | None = None
    """Peak context occupancy (0-1) when known."""
    ended: str = ""
    """Why the generation ended (a TerminationReason value; "" while it runs)."""


def summary_path(facts: SessionFacts) -> str:
    """`session-summaries/YYYY-MM-DD-session-NN.md`."""
    return f"{SUMMARIES_DIR}/{facts.day.isoformat()}-session-{facts.number:02d}.md"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds >= 3600:
        return f"~{seconds / 3600:.1f} hours"
    return f"~{max(1, round(seconds / 60))} minutes"


def _usage(fraction: float | None) -> str:
    if fraction is None:
        return "UNKNOWN"
    return "LOW" if fraction < 0.5 else "MEDIUM" if fraction < 0.8 else "HIGH"


def _recommendation(ended: str, fraction: float | None) -> str:
    if ended == "CONTEXT_HANDOFF" or (fraction is not None and fraction >= 0.8):
        return "SUMMARIZE_AND_FLUSH"
    if ended and ended != "CONTEXT_HANDOFF":
        return "END_SESSION"
    return "CONTINUE"


def _or_none(lines: list[str], none: str = "- None") -> list[str]:
    return lines or [none]


def _flat(text: str) -> str:
    return " ".join(text.split())


def session_summary(start: ProjectState, end: ProjectState, facts: SessionFacts) -> str:
    """The session summary markdown for one generation (pure)."""
    started = {tid: t.status for tid, t in start.tasks.items()}
    done = [
        t for t in end.tasks.values()
        if t.status in DONE_STATUSES and started.get(t.id) not in DONE_STATUSES
    ]
    partial = [
        t for t in end.tasks.values()
        if t.status in (TaskStatus.IN_PROGRESS, TaskStatus.FAILED)
    ]
    before = {b.id: b for b in start.blockers}
    new_blockers = [b for b in end.blockers if b.id not in before]
    resolved = [
        b for b in end.blockers
        if b.status == "resolved" and (b.id not in before or before[b.id].status == "open")
    ]
    known = {d.id for d in start.decisions}
    decisions = [d for d in end.decisions if d.id not in known]
    old_files = {f.path: f.note for f in start.files}
    files = [f for f in end.files if old_files.get(f.path) != f.note]
    eligible = end.next_eligible(limit=5)
    phase, step, _ = current_position(start)
    out = [
        "# Session Summary",
        "",
        f"**Date:** {facts.day.isoformat()}  ",
        f"**Session Number:** {facts.number:02d}  ",
        f"**Agent:** {facts.agent}  ",
        f"**Duration:** {_duration(facts.duration_s)}  ",
        "",
        "## Starting State",
        f"- Phase: {phase or 'none'}",
        f"- Step: {step or 'none'}",
        "- Previous blockers: "
        + (", ".join(f"{b.id} ({b.type.value})" for b in start.open_blockers()) or "none"),
        "",
        "## Accomplishments",
        "",
        "### Completed Micro-Milestones",
        *_or_none([
            f"{i}. [{t.id}] {_flat(t.title) or t.id} - "
            + ("⏭ Skipped" if t.status == TaskStatus.SKIPPED else "✅ Verified")
            + (f": {_flat(t.summary)}" if t.summary else "")
            for i, t in enumerate(done, 1)
        ]),
        "",
        "### Partial Progress",
        *_or_none([
            f"- [{t.id}] {_flat(t.title) or t.id} - "
            + (f"failed: {_flat(t.error) or 'no error recorded'}, next: retry"
               if t.status == TaskStatus.FAILED else "in progress, next: finish and verify it")
            for t in partial
        ]),
        "",
        "## Blockers Encountered",
        "",
        "### New Blockers",
        *_or_none([
            f"- {b.id}: {_flat(b.description)} (type: {b.type.value})" for b in new_blockers
        ]),
        "",
        "### Resolved Blockers",
        *_or_none([f"- {b.id}: {_flat(b.resolution) or 'resolved'}" for b in resolved]),
        "",
        "## Decisions Made",
        "",
        "### By Agent",
        *_or_none(
            [
                f"- {d.id}: "
                + (f"[{_flat(d.question)}] " if d.question else "")
                + _flat(d.title)
                + (f" - {_flat(d.rationale)}" if d.rationale else "")
                + ("" if d.by == "agent" else f" (by {d.by})")
                for d in decisions
            ],
            "- None requiring human review",
        ),
        "",
        "### Requiring Human Input",
        *_or_none([
            f"- {b.id}: [{_flat(b.description)}]"
            for b in end.open_blockers() if b.type == BlockerType.HUMAN_DECISION
        ]),
        "",
        "## Files Created/Modified",
        *_or_none([
            f"- `{f.path}` - {'Modified' if f.path in old_files else 'Created'}"
            + (f": {_flat(f.note)}" if f.note else "")
            for f in files
        ]),
        "",
        "## Next Steps",
        *_or_none(
            [f"{i}. [{tid}] {_flat(end.tasks[tid].title) or tid}" for i, tid in enumerate(eligible, 1)],
            "1. All tasks complete" if end.tasks and end.all_done else "1. None",
        ),
        "",
        "## Context Health",
        f"- Token usage: {_usage(facts.context_fraction)}"
        + (f" ({facts.context_fraction:.0%} of the window)" if facts.context_fraction is not None else ""),
        f"- Recommendation: {_recommendation(facts.ended, facts.context_fraction)}",
        "",
        "## Notes",
        f"Ended: {facts.ended}." if facts.ended else "Session still running.",
        f"Tasks done: {end.completed_count}/{len(end.tasks)}.",
    ]
    return "\n".join(out) + "\n"


def _when(at: datetime | None) -> str:
    return iso(at) or "-"


def decisions_log(state: ProjectState) -> str:
    """`decisions.log`: one line per decision, in the order they were made."""
    lines = []
    for d in state.decisions:
        parts = [_when(d.at), d.id, f"by={d.by}"]
        if d.question:
            parts.append(f"Q: {_flat(d.question)}")
        parts.append(f"DECISION: {_flat(d.title)}")
        if d.rationale:
            parts.append(f"RATIONALE: {_flat(d.rationale)}")
        lines.append(" | ".join(parts))
    return "".join(line + "\n" for line in lines)


def blockers_log(state: ProjectState) -> str:
    """`blockers.log`: an OPENED line per blocker and a RESOLVED line when resolved."""
    lines = []
    for b in state.blockers:
        lines.append(
            f"{_when(b.opened_at)} | {b.id} | OPENED | type={b.type.value} | {_flat(b.description)}"
        )
        if b.status == "resolved":
            lines.append(
                f"{_when(b.resolved_at)} | {b.id} | RESOLVED | {_flat(b.resolution) or '-'}"
            )
    return "".join(line + "\n" for line in lines)
