"""The whole handoff document as markdown, for people (not budgeted)."""

from __future__ import annotations

from temporal_handoff.documents.lines import (
    alt_line,
    blocker_line,
    clean,
    decision_line,
    delta_lines,
    done_line,
    duration,
    error_line,
    failed_line,
    file_line,
    lookup_lines,
    progress_line,
    recall_hint,
    resolved_line,
    task_line,
)
from temporal_handoff.schemas.handoff import HandoffDocument

__all__ = ["to_markdown"]


def to_markdown(doc: HandoffDocument) -> str:
    """The whole document for people (not budgeted)."""
    a, t, p = doc.agent, doc.tokens, doc.progress
    out = [
        f"# Handoff `{a.session_id}` generation {a.generation} → {a.next_generation}",
        "",
        f"- Reason: {a.reason.value} · template: {a.template} · model: {a.model or '-'}",
        f"- Context: {t.occupancy:,}/{t.context_window:,} tokens "
        f"({t.usage_fraction:.0%}) · spend {t.total_tokens:,} tokens, ${t.cost_usd:.2f}, "
        f"{t.calls} calls",
    ]
    if doc.paused_seconds:
        out.append(f"- Longest pause: {duration(doc.paused_seconds)}")
    out += ["", "## Goal", "", doc.goal or "-", "", "## Original request", ""]
    out.append(doc.original_request or "-")
    out += ["", "## Progress", "", progress_line(p)]
    if p.milestones:
        out.append("- Milestones: " + "; ".join(p.milestones))
    if p.critical_path:
        out.append("- Critical path: " + ", ".join(f"`{x}`" for x in p.critical_path))

    def section(title: str, lines: list[str], key: str | None = None) -> None:
        shown = len(lines)
        total = doc.total(key) if key else shown
        head = f"## {title} ({total})" if key else f"## {title}"
        out.extend(["", head, ""])
        out.extend(lines or ["- (none)"])
        if key and total > shown:
            out.append(f"- … and {total - shown} more ({recall_hint(doc.lookup, key)})")

    section("Next eligible tasks", [task_line(x, 10_000) for x in doc.next_eligible])
    section("Open blockers", [blocker_line(b, 10_000) for b in doc.open_blockers])
    if doc.resolved_blockers:
        section(
            "Resolved blockers on tasks still to do",
            [resolved_line(b, 10_000) for b in doc.resolved_blockers],
        )
    section("Human decisions", [decision_line(d, 10_000) for d in doc.human_decisions])
    section("In progress", [f"- {clean(x)}" for x in doc.in_progress])
    section("Failed tasks", [failed_line(f, 10_000) for f in doc.failed_tasks])
    section("Open questions", [f"- `{q.id}`: {clean(q.text)}" for q in doc.open_questions])
    section("Notes", [f"- {clean(x)}" for x in doc.notes], "notes")
    section("Recent exchange", [f"- {clean(x)}" for x in doc.recent_exchange])
    section("Since last handoff", delta_lines(doc.since_last_handoff, 10_000))
    section("Agent decisions", [decision_line(d, 10_000) for d in doc.decisions], "decisions")
    section(
        "Rejected alternatives",
        [alt_line(x, 10_000) for x in doc.rejected_alternatives],
        "rejected_alternatives",
    )
    section(
        "Work completed", [done_line(x, 10_000) for x in doc.work_completed], "work_completed"
    )
    section("Todos", [f"- {clean(x)}" for x in doc.todos], "todos")
    section("Files", [file_line(f, 10_000) for f in doc.files], "files")
    section("Errors", [error_line(e, 10_000) for e in doc.errors], "errors")
    section("Recent human input", [f"- {clean(x)}" for x in doc.recent_human_input])
    section("Tool state", [f"- {k}: {clean(v)}" for k, v in sorted(doc.tool_state.items())])
    section("Environment", [f"- {k}: {clean(v)}" for k, v in sorted(doc.environment.items())])
    if doc.agent_note:
        section(
            "Agent's note to its successor (its own words, not verified state)",
            [f"> {line}" if line else ">" for line in doc.agent_note.split("\n")],
        )
    section("Lookup hints", lookup_lines(doc.lookup, 10_000))
    return "\n".join(out) + "\n"
