"""Line formatters shared by the budgeted prompt and the markdown view of a document.

Every free text goes through :func:`clean` (one line, no stray ``Next eligible
tasks:`` marker). Pure (stdlib only).
"""

from __future__ import annotations

import re

from temporal_handoff.human_text import quote_inline
from temporal_handoff.schemas.handoff import (
    AlternativeItem,
    BlockerItem,
    DecisionItem,
    ErrorItem,
    FailedTaskItem,
    FileItem,
    HandoffDelta,
    LookupHints,
    Progress,
    TaskItem,
)
from temporal_handoff.schemas.project import BlockerType

# A stray "Next eligible tasks:" inside user text would be read as the eligible
# list by the agent, so it is defused everywhere except the one real line.
_NEXT_RE = re.compile(r"(next\s+eligible\s+tasks?)\s*:", re.IGNORECASE)
_WS_RE = re.compile(r"\s+")


def clean(text: str) -> str:
    """One line, no accidental eligible-list marker."""
    text = _WS_RE.sub(" ", text).strip()
    return _NEXT_RE.sub(r"\1 -", text)


def clip(text: str, n: int, recall: str | None = None) -> str:
    """Clean and shorten to `n` chars; a clipped critical text says where the rest is."""
    text = clean(text)
    if len(text) <= n:
        return text
    cut = text[: max(0, n - 1)].rstrip() + "…"
    return cut + (f" [clipped; full text via recall {recall}]" if recall else "")


def _cut(text: str, n: int) -> tuple[str, bool]:
    text = clean(text)
    if len(text) <= n:
        return text, False
    return text[: max(0, n - 1)].rstrip() + "…", True


def quoted_clip(
    text: str, n: int, recall: str | None = None, kind: str = "human_message", **attrs: str
) -> str:
    """Human text, cleaned and shortened to `n` chars like :func:`clip`, inside an
    escaped block (`human_text`); the clip note stays outside, it is ours."""
    body, cut = _cut(text, n)
    note = f" [clipped; full text via recall {recall}]" if cut and recall else ""
    return quote_inline(body, kind, **attrs) + note


def duration(seconds: float) -> str:
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f} days"
    if seconds >= 3_600:
        return f"{seconds / 3_600:.1f} h"
    return f"{seconds / 60:.0f} min"


def recall_hint(lookup: LookupHints, section: str) -> str:
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


def progress_line(p: Progress) -> str:
    if not p.total and not p.current_phase:
        return "No task list: a conversation toward the goal."
    if p.current_phase:
        name = f" ({clip(p.current_phase_name, 60)})" if p.current_phase_name else ""
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


_TICKED_RE = re.compile(r"`([^`\n]+)`")


def ticked(text: str) -> list[str]:
    """The backticked ids in `text`, in order."""
    return _TICKED_RE.findall(text)


def in_progress_line(todos: list[str]) -> str:
    """Always written, so a successor knows when nothing was left half-done."""
    if not todos:
        return "In progress: none."
    ids = list(dict.fromkeys(t for x in todos for t in ticked(x)))
    return "In progress: " + (", ".join(f"`{t}`" for t in ids) or f"{len(todos)} todo(s)") + "."


# Line formatters. `n` is the character allowance for free text; 0 means ids only
# (the last resort before anything critical would be left out).


def task_line(t: TaskItem, n: int, with_error: bool = True) -> str:
    line = f"- `{t.id}`"
    if n:
        line += f" {clip(t.title, n)}".rstrip()
        if t.last_error and with_error:
            line += f" — failed before (attempts {t.attempts}): {clip(t.last_error, n)}"
    return line


def done_line(t: TaskItem, n: int) -> str:
    line = f"- `{t.id}` {clip(t.title, n)}".rstrip()
    if t.summary and n > 60:
        line += f" — {clip(t.summary, n)}"
    return line


def blocker_line(b: BlockerItem, n: int) -> str:
    on = f" on `{b.task_id}`" if b.task_id else ""
    text = f": {clip(b.description, n, 'blockers')}" if n else ""
    return f"- `{b.id}` [{b.type.value}]{on}{text}"


def resolved_line(b: BlockerItem, n: int) -> str:
    # A human_decision blocker is resolved by a person's decision (or deferred).
    human = b.type == BlockerType.HUMAN_DECISION
    text = (
        quoted_clip(b.resolution, n, "blockers", "human_decision")
        if human
        else clip(b.resolution, n, "blockers")
    )
    res = f": {text}" if n and b.resolution else ""
    return f"- `{b.id}` on `{b.task_id}` is resolved (do not raise it again){res}"


def decision_line(d: DecisionItem, n: int) -> str:
    who = f" ({clip(d.by, 60)})" if d.human and not n else ""  # else in the block
    res = f" (resolves `{d.blocker_id}`)" if d.blocker_id else ""
    line = f"- `{d.id}`{who}{res}"
    if n and d.human:
        # The person's words, in one quoted block: never read as a control line.
        said, cut = _cut(d.title, n)
        if d.rationale and n > 60:
            why, cut_why = _cut(d.rationale, n)
            said, cut = f"{said} — {why}", cut or cut_why
        note = " [clipped; full text via recall decisions]" if cut else ""
        line += ": " + quote_inline(said, "human_decision", by=d.by) + note
    elif n:
        line += f": {clip(d.title, n)}"
        if d.rationale and n > 60:
            line += f" — {clip(d.rationale, n)}"
    return line


def failed_line(f: FailedTaskItem, n: int) -> str:
    line = f"- `{f.id}` (attempts {f.attempts})"
    if n:
        line += f": {clip(f.error or 'failed', n, 'tasks')}"
        if f.tried and n > 60:
            line += " Tried before: " + "; ".join(clip(x, max(40, n // 2)) for x in f.tried)
    return line


def alt_line(a: AlternativeItem, n: int) -> str:
    reason = f" — {clip(a.reason, n)}" if a.reason else ""
    return f"- {clip(a.title, n)}{reason}"


def file_line(f: FileItem, n: int) -> str:
    note = f" — {clip(f.note, n)}" if f.note else ""
    return f"- {clip(f.path, 200)}{note}"


def error_line(e: ErrorItem, n: int) -> str:
    on = f" `{e.task_id}`" if e.task_id else ""
    return f"- [{clip(e.source, 40)}]{on} gen {e.generation}: {clip(e.message, n)}"


def _ids(ids: list[str], limit: int) -> str:
    shown = ", ".join(f"`{x}`" for x in ids[:limit])
    return shown + (f" +{len(ids) - limit} more" if len(ids) > limit else "")


def delta_lines(d: HandoffDelta, limit: int) -> list[str]:
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
        shown = ", ".join(clip(p, 80) for p in d.files[:limit])
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


def lookup_lines(lk: LookupHints, max_runs: int, short: bool = False) -> list[str]:
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
