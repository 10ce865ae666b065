"""What operators see of a running session: details line, memo, search attributes,
lifecycle notifications. Only numbers, states and names: never prompt text or secrets."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from temporal_handoff.schemas.config import SessionConfig
    from temporal_handoff.schemas.events import LifecycleEvent
    from temporal_handoff.schemas.handoff import HandoffPayload
    from temporal_handoff.schemas.lifecycle import LifecycleState, TerminationReason
    from temporal_handoff.schemas.project import ProjectState
    from temporal_handoff.schemas.tokens import TokenLedger
    from temporal_handoff.schemas.visibility import search_attribute_updates


RUN_SUMMARY_PATCH = "run-summary-1"
"""From this patch on: every run's details lead with the summary line, and the memo
carries the handoff payload's token count and level beside its summary."""


PROBE_MISSES_SA_PATCH = "probe-misses-sa-1"
"""From this patch on: the `HandoffProbeMisses` search attribute."""


def summary_line(state: ProjectState, generation: int) -> str:
    """What `handoff start` puts in `static_summary`, for every run.

    The SDK (1.35) cannot carry `static_summary` across continue-as-new (neither
    `workflow.continue_as_new` nor its command has user metadata), so runs after
    generation 0 show "No summary"; the details, set by every run, carry it instead.
    """
    return f"agent session: {state.name} · generation {generation}"


def probe_result(payload: HandoffPayload) -> str:
    """`found/probed critical items in the prompt` for the memo."""
    found = payload.probes - payload.probe_missed
    return f"{found}/{payload.probes} critical items in the prompt"


def set_details(
    generation: int, turn: int, lifecycle: LifecycleState, ledger: TokenLedger, state: ProjectState
) -> None:
    status = (
        f"gen {generation} · turn {turn} · {lifecycle.value} · "
        f"context {100 * ledger.usage_fraction:.0f}% · "
        f"tasks {state.completed_count}/{len(state.tasks)} · "
        f"blockers {len(state.open_blockers())}"
    )
    if workflow.patched(RUN_SUMMARY_PATCH):
        status = summary_line(state, generation) + "\n" + status
    workflow.set_current_details(status)


def upsert(
    cfg: SessionConfig,
    generation: int,
    lifecycle: LifecycleState,
    ledger: TokenLedger,
    state: ProjectState,
    payload: HandoffPayload | None,
    *,
    needs_human: bool | None = None,
    end_reason: TerminationReason | None = None,
) -> None:
    """Memo (handoff summary, its payload's tokens and level, probe misses, end reason)
    and the Agent* search attributes (if enabled).

    Args:
        needs_human: also set `NeedsHuman` (None: leave it out, as older runs did).
        end_reason: the session is closing for this reason (memo `end_reason`).
    """
    memo: dict[str, str | int] = {}
    if payload is not None:
        memo["handoff_summary"] = payload.summary()
        if workflow.patched(RUN_SUMMARY_PATCH):
            memo["handoff_tokens"] = payload.prompt_tokens
            memo["handoff_level"] = payload.level.value
        # Critical items the prompt lacks even at the top level (ids only), visible
        # before the successor starts. Sessions recorded before replay without it.
        if payload.probe_misses and workflow.patched("probe-misses-memo-1"):
            memo["handoff_probe_misses"] = "; ".join(payload.probe_misses)
        # The probe's result in one line, misses or not (0 probes: an older payload).
        if payload.probes and workflow.patched("probe-result-memo-1"):
            memo["handoff_probe"] = probe_result(payload)
    if end_reason is not None:
        memo["end_reason"] = end_reason.value
    if memo:
        workflow.upsert_memo(memo)
    if not cfg.search_attributes:
        return
    # The last handoff's probe misses (a payload that was probed), from patch
    # "probe-misses-sa-1" on: `HandoffProbeMisses > 0` lists sessions whose successor
    # started without some critical item in its prompt.
    probe_misses = None
    if payload is not None and payload.probes and workflow.patched(PROBE_MISSES_SA_PATCH):
        probe_misses = payload.probe_missed
    workflow.upsert_search_attributes(
        search_attribute_updates(
            generation=generation,
            context_pct=100 * ledger.usage_fraction,
            lifecycle=lifecycle.value,
            project=state.name,
            user=cfg.user,
            agent_type=cfg.agent_type,
            total_tokens=ledger.total_tokens,
            cost_usd=ledger.cost_usd,
            needs_human=needs_human,
            probe_misses=probe_misses,
        )
    )


def start_notify(
    generation: int,
    event: str,
    lifecycle: LifecycleState,
    ledger: TokenLedger,
    state: ProjectState,
    reason: TerminationReason | None = None,
    summary: str = "",
) -> workflow.ActivityHandle[None]:
    """Schedule a lifecycle notification; await the handle to wait for it."""
    return workflow.start_activity(
        "notify",
        LifecycleEvent(
            session_id=workflow.info().workflow_id,
            generation=generation,
            event=event,
            lifecycle=lifecycle,
            reason=reason,
            context_pct=round(100 * ledger.usage_fraction, 2),
            tasks_done=state.completed_count,
            tasks_total=len(state.tasks),
            summary=summary,
        ),
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=RetryPolicy(maximum_attempts=3),
        summary=f"notify {event}",
    )
