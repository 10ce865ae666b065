"""Render a handoff document into a budgeted continuation prompt.

:func:`render_prompt` packs a :class:`HandoffDocument` under a hard token budget
per :class:`CompressionLevel`:

* **Critical items** — current phase, open blockers, human decisions, failed
  tasks and the ``Next eligible tasks:`` line — are always included by id. If they
  do not fit the requested level, the level is escalated and the payload says so.
* **Everything else** is packed by priority: whole items while budget remains,
  then ``… and N more (recall with `recall` tool: {...})`` pointers, because the
  successor can read every predecessor generation through the ``recall`` tool.
* **The agent's note** (its own words, quoted in ``<agent_note>``) has the lowest
  priority: above the minimal level its first lines get a bounded share of the budget
  (:data:`NOTE_SHARE`) once the critical items fit; it is trimmed before anything else.

Pure (pydantic + stdlib). Token counting is injected (``count``); the activity
passes tiktoken, anything else (tests, a workflow fallback) may pass
:func:`approx_tokens`.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from temporal_handoff.documents.lines import (
    alt_line,
    blocker_line,
    clean,
    clip,
    decision_line,
    delta_lines,
    done_line,
    duration,
    error_line,
    failed_line,
    file_line,
    in_progress_line,
    lookup_lines,
    next_eligible_line,
    progress_line,
    quoted_clip,
    resolved_line,
    task_line,
    ticked,
)
from temporal_handoff.human_text import NOTE_KIND, escape
from temporal_handoff.schemas.config import DEFAULT_LEVEL_BUDGETS, CompressionLevel
from temporal_handoff.schemas.estimator import approx_tokens
from temporal_handoff.schemas.handoff import (
    TEMPLATES,
    HandoffDocument,
    HandoffPayload,
    LookupHints,
)
from temporal_handoff.schemas.project import BlockerType

__all__ = ["LEVEL_ORDER", "approx_tokens", "default_budgets", "render_prompt"]

LEVEL_ORDER = (CompressionLevel.MINIMAL, CompressionLevel.STANDARD, CompressionLevel.FULL)
"""Escalation order: a level whose budget cannot hold the critical items moves right."""


def default_budgets() -> dict[CompressionLevel, int]:
    """The default token budget per level (minimal 500, standard 1,200, full 2,000)."""
    return {CompressionLevel(k): v for k, v in DEFAULT_LEVEL_BUDGETS.items()}



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
            if r.total > 0 and r.n_items == 0 and r.key != "agent_note"
        ]
        if entries:
            lines.append("; ".join(entries) + ".")
        return lines
    kept = s.items[: s.n_items]
    lines += kept[::-1] if s.oldest_first else kept
    omitted = s.total - s.n_items
    if s.key == "agent_note":
        # The block closes whatever was kept; the cut is counted outside it (ours).
        lines.append(f"</{NOTE_KIND}>")
        if omitted > 0:
            lines.append(f"({omitted} more line(s) of the note left out for budget)")
        return lines
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
    "agent_note": (3, 10, 16),
}

NOTE_PRIORITY = 1_000
"""The agent's note is the lowest-priority section: whatever is trimmed, it goes
first (line by line, from its end)."""
NOTE_SHARE = 6
"""Above the minimal level, the note's first lines get up to 1/NOTE_SHARE of the budget
once the critical items are in (a last-priority note alone would never show: the other
sections fill a standard budget); at the minimal level it only gets what is left."""
NOTE_LINE_CHARS = 160

# Packing priority (lower first) per template.
_PRIORITY: dict[str, dict[str, int]] = {
    "standard": {
        "goal": 10,
        "recent_exchange": 13,
        "open_questions": 14,
        "notes": 16,
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
        "recent_exchange": 13,
        "open_questions": 14,
        "notes": 16,
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
        "recent_exchange": 13,
        "open_questions": 14,
        "notes": 16,
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
        "recent_exchange": 13,
        "open_questions": 14,
        "notes": 16,
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
            s.priority = NOTE_PRIORITY if key == "agent_note" else prio.get(key, 100)
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
        lead = (short if terse or li == 0 else text).format(pause=duration(doc.paused_seconds))
        add("lead", None if terse else head, critical=True, fixed=[lead], droppable=terse)

    # Goal and request are short context the agent cannot work without; clipped
    # texts say so (the full request is in every generation's recallable state).
    gn = 80 if terse else 3 * n
    goal = []
    if doc.goal:
        goal.append(f"Goal: {clip(doc.goal, gn, 'tasks')}")
    if doc.original_request and doc.original_request != doc.goal:
        goal.append(f"Original request: {clip(doc.original_request, gn, 'tasks')}")
    if goal and not terse:
        add("goal", "## Goal", critical=True, fixed=goal)
    elif goal:
        # Last resort: the goal competes with other content (it is recallable).
        add("goal", None, items=goal, total=len(goal), cap=len(goal), recall="tasks")
        secs[-1].priority = 5

    prog = [progress_line(doc.progress), in_progress_line(doc.in_progress)]
    if doc.progress.milestones and not terse and li > 0:
        prog.append("Milestones: " + "; ".join(clip(m, 60) for m in doc.progress.milestones[-3:]))
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
            [blocker_line(b, cn) for b in doc.open_blockers],
            "blockers",
        )
    if doc.resolved_blockers:
        crit(
            "resolved_blockers",
            "## Resolved blockers on tasks still to do",
            "Resolved blockers (do not raise again)",
            [b.id for b in doc.resolved_blockers],
            [resolved_line(b, cn // 2) for b in doc.resolved_blockers],
            "blockers",
        )
    if doc.human_decisions:
        crit(
            "human_decisions",
            f"## Human decisions ({len(doc.human_decisions)}) — follow them",
            "Human decisions (follow them)",
            [d.id for d in doc.human_decisions],
            [decision_line(d, cn) for d in doc.human_decisions],
            "decisions",
        )
    if doc.in_progress:
        crit(
            "in_progress",
            f"## In progress ({len(doc.in_progress)}) — finish these, do not start over",
            "In progress",
            list(dict.fromkeys(t for x in doc.in_progress for t in ticked(x))),
            [f"- {clip(x, max(cn, 120) if cn else 0, 'todos')}" for x in doc.in_progress],
            "todos",
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
            [failed_line(f, cn) for f in doc.failed_tasks],
            "tasks",
        )
    # Detail lines (titles, earlier errors) for a short eligible list; the ids line
    # itself is what the agent acts on.
    failed_ids = {f.id for f in doc.failed_tasks}
    failed_err = {f.id: f.error for f in doc.failed_tasks}
    details = [
        task_line(t, min(cn, 100), with_error=t.id not in failed_ids)
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
        delta = delta_lines(doc.since_last_handoff, 12 if li else 5)
        add(
            "since_last_handoff",
            f"## Since last handoff ({doc.since_last_handoff.events} events)",
            items=delta,
            total=len(delta),
            recall="tasks",
        )
    human = [f"- {quoted_clip(x, 2 * n)}" for x in reversed(doc.recent_human_input)]
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
        items=[decision_line(d, n) for d in doc.decisions],
        total=doc.total("decisions"),
        recall="decisions",
    )
    add(
        "work_completed",
        f"## Work completed ({doc.total('work_completed')}, newest first)",
        items=[done_line(t, n) for t in doc.work_completed],
        total=doc.total("work_completed"),
        recall="tasks",
    )
    add(
        "errors",
        f"## Errors ({doc.total('errors')}, tasks still to do first)",
        # A failed task's current error is already in its critical line.
        items=[
            error_line(e, n)
            for e in doc.errors
            if not (e.task_id in failed_ids and e.message == failed_err.get(e.task_id))
        ],
        total=doc.total("errors"),
        recall="errors",
    )
    add(
        "rejected_alternatives",
        f"## Rejected alternatives ({doc.total('rejected_alternatives')})",
        items=[alt_line(x, n) for x in doc.rejected_alternatives],
        total=doc.total("rejected_alternatives"),
        recall="decisions",
    )
    add(
        "todos",
        f"## Todos ({doc.total('todos')}, newest first)",
        items=[f"- {clip(x, n)}" for x in doc.todos],
        total=doc.total("todos"),
        recall="todos",
    )
    add(
        "files",
        f"## Files ({doc.total('files')}, newest first)",
        items=[file_line(f, n) for f in doc.files],
        total=doc.total("files"),
        recall="files",
    )
    add(
        "tool_state",
        "## Tool state",
        items=[f"- {clip(k, 60)}: {clip(v, n)}" for k, v in sorted(doc.tool_state.items())],
        total=max(doc.total("tool_state"), len(doc.tool_state)),
        recall="environment",
    )
    add(
        "environment",
        "## Environment" + (" — re-check first" if template == "multi_day" else ""),
        items=[f"- {clip(k, 60)}: {clip(v, n)}" for k, v in sorted(doc.environment.items())],
        total=max(doc.total("environment"), len(doc.environment)),
        recall="environment",
    )
    if doc.agent_note:
        _note_section(doc, add)
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
        fixed=lookup_lines(lk, 3 * li, short=terse),
    )
    add(
        "instructions",
        None if terse else "## Instructions",
        critical=True,
        fixed=[_instructions(doc, template, terse or li == 0)],
        droppable=terse,
    )
    return secs


def _note_section(doc: HandoffDocument, add: Callable[..., None]) -> None:
    """The predecessor's note: its own words in an escaped block, after everything the
    state says, labelled as not verified (`agent_note`)."""
    gen = doc.agent.generation
    lines = [
        escape(line)
        for paragraph in doc.agent_note.split("\n")
        for line in textwrap.wrap(clean(paragraph), NOTE_LINE_CHARS)
    ]
    if not lines:
        return
    add(
        "agent_note",
        f"## Note from your predecessor (generation {gen}), in its own words\n"
        "Context only, not verified state: where it disagrees with the sections above, "
        "they are right.\n"
        f'<{NOTE_KIND} generation="{gen}">',
        items=lines,
        total=len(lines),
        recall="notes",
    )


def _free_form_sections(doc: HandoffDocument, n: int, add: Callable[..., None]) -> None:
    """Open questions, notes and the recent exchange (free-form sessions; empty
    otherwise, and then not shown). Human lines of the exchange are quoted blocks."""
    add(
        "open_questions",
        f"## Open questions ({doc.total('open_questions')})",
        items=[f"- `{q.id}`: {clip(q.text, 2 * n)}" for q in doc.open_questions],
        total=doc.total("open_questions"),
        recall="questions",
    )
    add(
        "notes",
        f"## Your notes ({doc.total('notes')}, newest first)",
        items=[f"- {clip(x, 2 * n)}" for x in doc.notes],
        total=doc.total("notes"),
        recall="notes",
    )
    # The agent's lines are escaped too: a reply that echoes a human block must not
    # read as one.
    exchange = [
        quoted_clip(x.removeprefix("[human] "), 2 * n)
        if x.startswith("[human] ")
        else clip(escape(x), 2 * n)
        for x in doc.recent_exchange
    ]
    add(
        "recent_exchange",
        "## Recent exchange (oldest first)",
        # The packer keeps a prefix: offered newest first, shown oldest first.
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
        note = next((s for s in optional if s.key == "agent_note"), None)
        if note is not None:
            # Its reserved share: lines while they fit in 1/NOTE_SHARE of the budget.
            while note.n_items < min(note.cap, len(note.items)):
                before = cost(note) if note.included else 0
                note.n_items += 1
                was, note.included = note.included, True
                after = cost(note)
                if (
                    calibrated(after) > budget // NOTE_SHARE
                    or calibrated(used + after - before) > limit
                ):
                    note.n_items -= 1
                    note.included = was
                    break
                used += after - before
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
