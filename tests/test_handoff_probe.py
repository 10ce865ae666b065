"""The probe check: every critical item of a handoff document is in its rendered prompt,
or the level is escalated, or the miss is recorded (payload, summary, session memo)."""

from __future__ import annotations

import asyncio
import json

from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from temporal_handoff.activities.handoff_activity import BuildHandoffInput, render_payload
from temporal_handoff.activities.tokenizer import count_tokens
from temporal_handoff.chain import session_chain
from temporal_handoff.documents.build import build_document
from temporal_handoff.documents.probe import PROBE_TEXT_CHARS, derive_probes, find_misses
from temporal_handoff.documents.render import render_prompt
from temporal_handoff.schemas.config import CompressionLevel
from temporal_handoff.schemas.handoff import HandoffPayload
from temporal_handoff.schemas.lifecycle import LifecycleState, TerminationReason
from temporal_handoff.schemas.project import ProjectState
from temporal_handoff.schemas.session import AbortArgs, DecideArgs, SessionResult
from temporal_handoff.schemas.state_events import apply_event
from temporal_handoff.schemas.visibility import PROBE_MISSES
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.synthetic import synthetic_project
from tests.conftest import running_worker
from tests.helpers import start_session
from tests.test_handoff_document import ctx_for, ev
from tests.test_never_stuck import RecordingBrain, request_generation
from tests.test_visibility_waits import _listed, _until_listed
from tests.waits import guarded, wait_status

# A human decision longer than the minimal level shows of a critical text (120 chars).
LONG_DECISION = (
    "Use postgres for the ledger tables, not sqlite: we need row-level locks for the "
    "nightly reconciliation job, and the audit log must stay in the existing "
    "append-only store."
)
RATIONALE = "ops already runs postgres 16 with backups"
TINY = {"minimal": 200, "standard": 200, "full": 200}
"""Budgets that hold the critical ids but not their texts."""


def _state() -> ProjectState:
    """Every kind of critical item: phase, open blocker, human decision, failed task."""
    state = synthetic_project(20, 2, 0)
    tasks = list(state.tasks)
    for tid in tasks[:4]:
        apply_event(state, ev("complete_task", task_id=tid, summary="ok"))
    apply_event(state, ev("set_phase", phase_id=state.tasks[tasks[4]].phase))
    apply_event(
        state,
        ev("record_decision", by="human:ana", decision_id="D-db", title=LONG_DECISION,
           rationale=RATIONALE),
    )
    apply_event(state, ev("fail_task", task_id=tasks[4], error="pip install timed out (mirror)"))
    apply_event(
        state,
        ev("add_blocker", blocker_id="B-key", blocker_type="human_decision",
           description="needs an API key", task_id=tasks[5]),
    )
    return state


def test_probes_cover_every_critical_item() -> None:
    doc = build_document(_state(), ctx_for())
    kinds = {(p.kind, p.item) for p in derive_probes(doc)}
    assert ("human decision", "D-db") in kinds
    assert ("open blocker", "B-key") in kinds
    assert ("phase", doc.progress.current_phase) in kinds
    assert {("failed task", f.id) for f in doc.failed_tasks} <= kinds
    assert {("next eligible", t.id) for t in doc.next_eligible} <= kinds
    decision = next(p for p in derive_probes(doc) if p.item == "D-db")
    assert [part for part, _ in decision.needles] == ["id", "text", "rationale"]
    # A full render holds every item.
    payload = render_prompt(doc, "full", count=count_tokens)
    assert find_misses(derive_probes(doc), payload.prompt) == []


def test_a_render_that_drops_a_decision_text_is_caught() -> None:
    doc = build_document(_state(), ctx_for())
    probes = derive_probes(doc)
    good = render_prompt(doc, "standard", count=count_tokens).prompt
    assert find_misses(probes, good) == []
    # The id is kept but the human's text is gone (what an ids-only line does).
    forged = good.replace(LONG_DECISION[:PROBE_TEXT_CHARS], "(see recall)")
    (miss,) = find_misses(probes, forged)
    assert (miss[0].item, miss[1]) == ("D-db", ["text"])
    # The real renderer at a budget that only holds ids drops the texts.
    tiny = render_prompt(doc, "full", budgets=TINY, count=count_tokens)
    missed = {(p.item, tuple(parts)) for p, parts in find_misses(probes, tiny.prompt)}
    assert ("D-db", ("text", "rationale")) in missed


def test_a_clipped_decision_escalates_to_the_level_that_holds_it() -> None:
    state = _state()
    payload = render_payload(BuildHandoffInput(state=state, context=ctx_for(), level="minimal"))
    assert payload.requested_level == CompressionLevel.MINIMAL
    assert payload.level == CompressionLevel.STANDARD and payload.escalated
    assert "probe: critical items incomplete at minimal (1)" in payload.note
    assert LONG_DECISION[:PROBE_TEXT_CHARS] in payload.prompt
    assert (payload.probes, payload.probe_missed, payload.probe_misses) == (
        len(derive_probes(build_document(state, ctx_for()))), 0, []
    )
    assert payload.prompt_tokens <= payload.budget


def test_what_the_top_level_cannot_hold_is_recorded() -> None:
    payload = render_payload(
        BuildHandoffInput(state=_state(), context=ctx_for(), level="minimal", budgets=TINY)
    )
    assert payload.level == CompressionLevel.FULL
    assert "human decision `D-db`: text, rationale missing" in payload.probe_misses
    assert payload.probe_missed == len(payload.probe_misses) > 0
    assert f"{payload.probe_missed} probe miss(es)" in payload.summary()
    assert f"{payload.probe_missed} probe miss(es)" in payload.seed().summary()
    assert "incomplete even at full" in payload.note


async def _decide_and_flush(client: Client, handle: WorkflowHandle) -> None:
    wid = handle.id
    st = await wait_status(
        client, wid, lambda s: s.lifecycle == LifecycleState.AWAITING_DECISION, "a blocker"
    )
    await handle.execute_update(
        "decide",
        DecideArgs(blocker_id=st.open_blockers[0]["id"], decision=LONG_DECISION,
                   rationale=RATIONALE, by="ana"),
        result_type=str,
    )
    await handle.signal("flush")
    await wait_status(client, wid, lambda s: s.generation >= 1, "the handoff")


async def _roomy_and_tight(
    client: Client, task_queue: str, roomy_prefix: str, tight_prefix: str
) -> tuple[WorkflowHandle, WorkflowHandle]:
    """Two sessions at the minimal level, each handed off after a human decision: one
    whose critical items fit once the level escalates (the decision is clipped at the
    minimal level), one whose budgets hold only ids (a probe miss)."""
    roomy = await start_session(
        client, task_queue, synthetic_project(12, 2), prefix=roomy_prefix,
        compression_level="minimal",
    )
    tight = await start_session(
        client, task_queue, synthetic_project(12, 2), prefix=tight_prefix,
        compression_level="minimal", level_budgets=TINY,
    )
    await asyncio.gather(_decide_and_flush(client, roomy), _decide_and_flush(client, tight))
    return roomy, tight


async def test_the_handoff_child_escalates_or_records_before_the_successor_starts(
    client: Client, task_queue: str
) -> None:
    brain = RecordingBrain(ScriptedAgentBrain(blocker_every=4, decision_every=0))
    with FakeAnthropicServer(brain=brain) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            roomy, tight = await _roomy_and_tight(client, task_queue, "probe-esc", "probe-miss")
            payloads: list[HandoffPayload] = []
            memos = []
            for h in (roomy, tight):
                child = client.get_workflow_handle(
                    f"{h.id}-handoff-0", result_type=HandoffPayload
                )
                payloads.append(await guarded(client, h.id, child.result(), "child result"))
                gen0 = (await session_chain(client, h.id))[0]
                desc = await client.get_workflow_handle(h.id, run_id=gen0.run_id).describe()
                memos.append(await desc.memo())
                await h.signal("abort", AbortArgs(reason="done"))
                result: SessionResult = await guarded(client, h.id, h.result(), "abort")
                assert result.reason == TerminationReason.USER_ABORT

    esc, miss = payloads
    # Escalated: the successor's prompt holds the whole start of the human's decision.
    assert esc.requested_level == CompressionLevel.MINIMAL
    assert esc.level == CompressionLevel.STANDARD and esc.probe_missed == 0
    assert LONG_DECISION[:PROBE_TEXT_CHARS] in esc.prompt
    assert "handoff_probe_misses" not in memos[0]
    # Recorded: the payload, its summary (memo) and the memo key say what is missing.
    assert miss.probe_missed > 0
    assert any(
        x.startswith("human decision `HD-") and "text" in x for x in miss.probe_misses
    ), miss.probe_misses
    assert memos[1]["handoff_probe_misses"] == "; ".join(miss.probe_misses)
    assert "probe miss(es)" in memos[1]["handoff_summary"]
    # The successor of the escalated session started from that prompt.
    first = next(
        r for r in brain.requests
        if request_generation(r) == 1 and roomy.id in json.dumps(r["messages"][0])
    )
    assert esc.prompt in "".join(b["text"] for b in first["system"])


async def test_probe_misses_are_a_search_attribute(
    env: WorkflowEnvironment, client: Client, task_queue: str
) -> None:
    """`HandoffProbeMisses > 0` lists the session whose successor started without some
    critical item; `= 0` lists the clean one (the temporal CLI, as an operator would)."""
    brain = ScriptedAgentBrain(blocker_every=4, decision_every=0)
    with FakeAnthropicServer(brain=brain) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            roomy, tight = await _roomy_and_tight(client, task_queue, "sa-clean", "sa-miss")
            both = f"WorkflowId IN ('{roomy.id}', '{tight.id}')"
            await _until_listed(env, f"{both} AND HandoffProbeMisses > 0")
            await _until_listed(env, f"{both} AND HandoffProbeMisses = 0")
            missed = [r["execution"]["workflowId"] for r in await _listed(
                env, f"{both} AND HandoffProbeMisses > 0 AND ExecutionStatus = 'Running'"
            )]
            clean = [r["execution"]["workflowId"] for r in await _listed(
                env, f"{both} AND HandoffProbeMisses = 0 AND ExecutionStatus = 'Running'"
            )]
            # The successor (generation 1, running) carries its handoff's count.
            miss = await client.get_workflow_handle(f"{tight.id}-handoff-0").result()
            desc = await tight.describe()
            for h in (roomy, tight):
                await h.signal("abort", AbortArgs(reason="done"))
                await guarded(client, h.id, h.result(), "abort")
    assert missed == [tight.id] and clean == [roomy.id]
    assert desc.typed_search_attributes.get(PROBE_MISSES) == miss["probe_missed"] > 0
