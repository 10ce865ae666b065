"""Build the handoff document from the project state (state → :class:`HandoffDocument`).

Pure (pydantic + stdlib, no I/O): the `build_handoff` activity calls it, tests and
benchmarks call it directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from temporal_handoff.schemas.config import CompressionLevel
from temporal_handoff.schemas.handoff import (
    HUMAN_TEXT_CAP_CHARS,
    AgentInfo,
    AlternativeItem,
    BlockerItem,
    DecisionItem,
    ErrorItem,
    FailedTaskItem,
    FileItem,
    HandoffContext,
    HandoffDelta,
    HandoffDocument,
    LookupHints,
    Progress,
    QuestionItem,
    TaskItem,
    TokenSummary,
)
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.project import DONE_STATUSES, ProjectState, TaskStatus
from temporal_handoff.schemas.state_events import StateEvent

__all__ = ["MULTI_DAY_PAUSE_S", "build_document", "choose_template", "summarize_events"]

MULTI_DAY_PAUSE_S = 8 * 3600.0
"""A pause longer than this makes the successor re-check its environment first."""

# The document keeps the most relevant items of the unbounded sections only: the
# payload crosses continue-as-new (2 MiB hard limit) and the rest is recallable.
_DOC_CAP = 60
_TEXT_CAP = HUMAN_TEXT_CAP_CHARS
NOTE_DOC_CAP_CHARS = 8_000
"""The agent's note in the document (the session already cut it to its token budget)."""


def _cap(text: str, n: int = _TEXT_CAP) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


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


_IN_PROGRESS_CAP = 20
"""In-progress todos kept (newest first); more is a project the agent has scattered."""
_TICKED_RE = re.compile(r"`([^`\n]+)`")


def _todos(state: ProjectState) -> tuple[list[str], list[str]]:
    """(in progress, open) todos, newest first, without repeats.

    A todo that names (backticked) a task still to do is work in progress: the
    successor must finish it, not start the task over. One that names only done
    tasks is finished (there is no op to close a todo): it stays in the state and
    `recall`, out of the prompt. The rest are open todos.
    """
    in_progress: list[str] = []
    open_todos: list[str] = []
    for text in dict.fromkeys(reversed(state.todos)):
        named = [t for t in _TICKED_RE.findall(text) if t in state.tasks]
        if not named:
            open_todos.append(text)
        elif any(state.tasks[t].status not in DONE_STATUSES for t in named):
            in_progress.append(text)
    return in_progress, open_todos


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
    exchange = ctx.recent_exchange[-10:] if state.free_form else []
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

    in_progress, open_todos = _todos(state)
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
        todos=[_cap(x, 500) for x in open_todos[:_DOC_CAP]],
        in_progress=[_cap(x, 500) for x in in_progress[:_IN_PROGRESS_CAP]],
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
        # This generation's human input, after the latest messages of earlier ones (a
        # message said two generations ago is not dropped because a blocker was decided
        # since).
        recent_human_input=[
            _cap(x)
            for x in list(dict.fromkeys([*state.human_messages[-5:], *ctx.recent_human_input]))[-10:]
        ],
        free_form=state.free_form,
        notes=[_cap(x, 500) for x in reversed(state.notes[-_DOC_CAP:])],
        open_questions=[
            QuestionItem(id=q.id, text=_cap(q.text, 500)) for q in state.open_questions()
        ][-_DOC_CAP:],
        # A task session's progress lives in its state; the exchange (agent chatter and
        # human lines) would crowd out the recent human input there.
        recent_exchange=[_cap(x, 1_000) for x in exchange],
        lookup=LookupHints(workflow_id=ctx.session_id, generation=ctx.generation, lineage=lineage),
        since_last_handoff=summarize_events(ctx.events_since_last_handoff, state),
        totals={
            "work_completed": len(completed),
            "decisions": len(agent_decisions),
            "human_decisions": len(human_decisions),
            "rejected_alternatives": len(state.rejected_alternatives),
            "open_blockers": len(state.open_blockers()),
            "files": len(state.files),
            "todos": len(open_todos),
            "in_progress": len(in_progress),
            "next_eligible": len(eligible),
            "failed_tasks": len(failed),
            "errors": len(state.errors),
            "environment": len(state.environment),
            "tool_state": len(ctx.tool_state),
            "human_messages": len(state.human_messages),
            "notes": len(state.notes) + state.notes_archived,
            "open_questions": len(state.open_questions()),
            "recent_exchange": len(exchange),
        },
        paused_seconds=ctx.paused_seconds,
        agent_note=_cap(ctx.agent_note, NOTE_DOC_CAP_CHARS),
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
