"""The ledger counts what Anthropic bills: every answer the API gave, including those
whose activity result was lost (a worker SIGKILLed after the answer came, a
start-to-close timeout after it, an attempt that failed for good after it), and budgets
are checked against that billed total."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from temporal_handoff.schemas.lifecycle import LifecycleState, TerminationReason
from temporal_handoff.schemas.session import DecideArgs, SessionResult, SessionStatus
from temporal_handoff.schemas.tokens import USAGE_FIELDS, TokenUsage
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.fake_server import Fault, RequestRecord
from temporal_handoff.testing.synthetic import synthetic_project
from tests.conftest import running_worker
from tests.helpers import start_session
from tests.test_crashes import spawn_worker

STREAMED = {"max_tokens": 2048, "stream_threshold": 1024, "handoff_note": False}
"""Every call streams, so a held reply is fully received before its call returns. (The
handoff note's turn, 400 tokens, would not stream: a held answer to it is used, not lost,
which these counts of held = lost answers do not model; it is off here.
tests/test_handoff_note.py counts its calls in the ledger.)"""


def answered(fake: FakeAnthropicServer) -> list[RequestRecord]:
    return [r for r in fake.requests if r.path == "/v1/messages" and r.answered]


def answered_usage(fake: FakeAnthropicServer) -> TokenUsage:
    def usage(r: RequestRecord) -> TokenUsage:
        raw = r.usage or {}
        one_hour = (raw.get("cache_creation") or {}).get("ephemeral_1h_input_tokens", 0)
        return TokenUsage(
            **{f: raw.get(f, 0) for f in USAGE_FIELDS},
            cache_creation_1h_input_tokens=one_hour or 0,
        )

    return sum((usage(r) for r in answered(fake)), TokenUsage())


def held(fake: FakeAnthropicServer) -> list[RequestRecord]:
    return [r for r in answered(fake) if (r.fault or "").startswith("hold")]


def gap_line(name: str, result: SessionResult, fake: FakeAnthropicServer) -> str:
    billed = answered_usage(fake).total
    used = result.ledger.total_tokens
    return (
        f"\nBILLING {name}: answered {billed:,} tokens in {len(answered(fake))} answers; "
        f"ledger used {used:,} ({result.ledger.calls} calls) = "
        f"{100 * (billed - used) / billed:.1f}% missing without the lost line; "
        f"billed {result.ledger.billed_tokens:,} ({result.ledger.lost_answers} lost answers)"
    )


def assert_ledger_is_what_was_answered(result: SessionResult, fake: FakeAnthropicServer) -> None:
    ledger = result.ledger
    assert ledger.billed_usage() == answered_usage(fake)
    assert ledger.calls + ledger.lost_answers == len(answered(fake))
    assert ledger.lost_answers == len(held(fake)) > 0


async def decide_until_done(
    handle: WorkflowHandle[Any, SessionResult], result: asyncio.Future[SessionResult]
) -> SessionResult:
    """Answer every open blocker until the session closes."""
    while not result.done():
        try:
            st = await handle.query("status", result_type=SessionStatus)
            for b in st.open_blockers:
                await handle.execute_update(
                    "decide", DecideArgs(blocker_id=b["id"], decision="yes")
                )
        except Exception:
            pass  # closed, or continuing as new: ask again
        await asyncio.sleep(0.05)
    return await result


async def heartbeat_after(client: Client, workflow_id: str, t: float) -> bool:
    """The session's model call has heartbeated since `t` (a usage heartbeat)."""
    desc = await client.get_workflow_handle(workflow_id).describe()
    for pa in desc.raw_description.pending_activities:
        if pa.activity_type.name == "call_model" and pa.HasField("last_heartbeat_time"):
            if pa.last_heartbeat_time.ToDatetime().timestamp() > t:
                return True
    return False


async def test_ledger_equals_answers_with_worker_kills_and_model_faults(
    env: WorkflowEnvironment, client: Client
) -> None:
    """SIGKILLed workers (each killed with an answer fully received, its call not yet
    returned), replies held past the 2 s start-to-close timeout, 529s and dropped
    connections: the ledger's billed usage equals the fake's answers, field by field."""
    address = env.client.service_client.config.target_host
    task_queue = f"billing-{uuid.uuid4()}"
    faults = [
        Fault(hold_s=4.0, rate=0.3),
        Fault(status=529, rate=0.1),
        Fault(drop_connection=True, rate=0.05),
    ]
    kills_wanted, kills = 3, 0
    killed_at: set[str] = set()
    with FakeAnthropicServer(brain=ScriptedAgentBrain(), latency_s=0.05, faults=faults) as fake:
        handle = await start_session(
            client, task_queue, synthetic_project(24, 2), prefix="billing",
            context_window=4_000, model_call_timeout_s=2.0, model_retry_initial_s=0.1,
            **STREAMED,
        )
        result_task = asyncio.ensure_future(handle.result())
        decider = asyncio.ensure_future(decide_until_done(handle, result_task))
        while not result_task.done():
            proc = spawn_worker(address, task_queue, fake.base_url)
            try:
                # Kill this worker once it holds a fully received answer whose usage it
                # heartbeated, before its call returns; the last worker runs to the end.
                while not result_task.done() and kills < kills_wanted:
                    # (held for 4 s, its attempt times out 2 s after it started)
                    pending = [
                        r for r in held(fake)
                        if time.time() - r.t < 1.5 and r.request_id not in killed_at
                    ]
                    # (its heartbeat comes within milliseconds; a worker that never
                    # heartbeats it is killed 1 s into the hold all the same)
                    if pending and (
                        time.time() - pending[-1].t > 1.0
                        or await heartbeat_after(client, handle.id, pending[-1].t)
                    ):
                        killed_at.add(pending[-1].request_id)
                        break
                    await asyncio.sleep(0.05)
                else:
                    await result_task
            finally:
                if not result_task.done():
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
                else:
                    proc.terminate()
                proc.wait(timeout=30)
        result = await decider

    print(gap_line(f"{kills} SIGKILLs + faults", result, fake))
    assert kills == kills_wanted
    assert result.reason == TerminationReason.TASK_COMPLETED
    assert result.project.completed_count == 24
    assert_ledger_is_what_was_answered(result, fake)


async def test_answers_lost_before_the_call_fails_for_good(
    client: Client, task_queue: str
) -> None:
    """The call's last attempt times out after its answer came (the timeout failure's
    heartbeat details carry it), or an attempt after a lost answer fails with a
    non-retryable 400 (its error details carry it): the session raises a blocker, and
    the lost answers are in the ledger all the same."""
    faults = [
        # turn 1: attempt 1 answered, then held past its timeout (lost); attempt 2 is
        # refused (400, non-retryable) -> a blocker; the error's details carry the answer
        Fault(hold_s=3.0, times=1),
        Fault(status=400, times=1),
        # after the decision: both attempts answered and held past the timeout -> a
        # blocker; the timeout failure's last heartbeat details carry both answers
        Fault(hold_s=3.0, times=2),
    ]
    with FakeAnthropicServer(brain=ScriptedAgentBrain(), latency_s=0.02, faults=faults) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start_session(
                client, task_queue, synthetic_project(3, 1), prefix="billing-fail",
                model_call_timeout_s=1.5, model_retry_initial_s=0.1, model_max_attempts=2,
                **STREAMED,
            )
            result = await decide_until_done(handle, asyncio.ensure_future(handle.result()))
            st = await handle.query("status", result_type=SessionStatus)
    assert st.billed_tokens == result.ledger.billed_tokens > st.total_tokens
    print(gap_line("failed calls", result, fake))
    assert result.reason == TerminationReason.TASK_COMPLETED
    errors = [e.message for e in result.project.errors if e.source == "model"]
    assert len(errors) == 2, errors
    assert_ledger_is_what_was_answered(result, fake)


async def test_token_and_usd_budgets_count_lost_answers(client: Client, task_queue: str) -> None:
    """A budget between what the first turn used and what it was billed stops the
    session after that turn (it was billed twice: the first answer was lost)."""
    with FakeAnthropicServer(brain=ScriptedAgentBrain(), latency_s=0.02) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            probe = await start_session(
                client, task_queue, synthetic_project(5, 1), prefix="billing-probe",
                token_budget=1, **STREAMED,
            )
            first = (await probe.result()).ledger
    assert first.calls == 1
    budgets: list[dict[str, Any]] = [
        {"token_budget": first.total_tokens * 3 // 2},
        {"usd_budget": first.cost_usd * 1.5},
    ]
    for budget in budgets:
        faults = [Fault(hold_s=3.0, times=1)]
        with FakeAnthropicServer(
            brain=ScriptedAgentBrain(), latency_s=0.02, faults=faults
        ) as fake:
            async with running_worker(client, task_queue, fake.base_url):
                handle = await start_session(
                    client, task_queue, synthetic_project(5, 1), prefix="billing-budget",
                    model_call_timeout_s=1.5, model_retry_initial_s=0.1, **budget, **STREAMED,
                )
                result = await handle.result()
        assert result.reason == TerminationReason.BUDGET_EXHAUSTED, budget
        assert result.ledger.calls == 1, budget
        assert result.ledger.billed_usage() == answered_usage(fake)
        assert result.ledger.billed_tokens == 2 * first.total_tokens


def test_lost_answers_are_a_separate_ledger_line() -> None:
    """Billed-not-used usage counts for spend and budgets, never for occupancy or
    calibration; old ledgers and results decode without it."""
    from temporal_handoff.schemas.model_io import BilledAnswers, ModelResponse
    from temporal_handoff.schemas.tokens import TokenLedger, usage_cost_usd

    ledger = TokenLedger()
    used = TokenUsage(input_tokens=1000, output_tokens=100)
    ledger.record(used, "claude-sonnet-4-6", estimated_new_tokens=900)
    before = ledger.model_copy(deep=True)
    lost = TokenUsage(input_tokens=1000, output_tokens=120)
    ledger.record_lost(lost, "claude-sonnet-4-6")
    assert (ledger.occupancy, ledger.calibration, ledger.calls) == (
        before.occupancy, before.calibration, before.calls
    )
    assert ledger.total_tokens == used.total  # the conversation's calls
    assert ledger.billed_tokens == used.total + lost.total
    assert ledger.billed_usage() == used + lost
    assert ledger.billed_cost_usd == usage_cost_usd(used + lost, "claude-sonnet-4-6")
    assert ledger.new_generation().billed_tokens == ledger.billed_tokens
    assert TokenLedger.model_validate({"calls": 3}).lost_answers == 0
    assert ModelResponse.model_validate({"content": []}).lost_answers == 0
    billed = BilledAnswers().plus(lost).plus(used)
    assert BilledAnswers.from_detail(billed.detail()) == billed
    assert BilledAnswers.from_detail({"status": 400}) is None


def test_fake_reports_each_answer_it_gave() -> None:
    """`RequestRecord.answered` marks replies sent whole (with their `usage`); a held
    stream is answered before it ends; an error reply is not an answer."""
    import anthropic

    body: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hello"}],
    }
    faults = [Fault(status=529, times=1), Fault(hold_s=0.5, times=1)]
    with FakeAnthropicServer(faults=faults) as fake:
        api = anthropic.Anthropic(base_url=fake.base_url, api_key="k", max_retries=0)
        try:
            api.messages.create(**body)
        except anthropic.APIStatusError as err:
            assert err.status_code == 529
        with api.messages.stream(**body) as stream:
            for event in stream:
                if event.type == "message_stop":
                    held_now = fake.requests[-1]
                    assert held_now.answered and held_now.fault
                    assert held_now.fault.startswith("hold")
            streamed = stream.get_final_message()
        plain = api.messages.create(**body)
        records = fake.message_requests()
    assert [r.answered for r in records] == [False, True, True]
    for record, reply in ((records[1], streamed), (records[2], plain)):
        assert record.usage is not None
        assert {f: record.usage[f] for f in USAGE_FIELDS} == {
            f: getattr(reply.usage, f) or 0 for f in USAGE_FIELDS
        }


async def test_pause_keeps_what_an_in_flight_call_was_billed(
    client: Client, task_queue: str
) -> None:
    """Pause while a call holds a whole answer: the attempt, told by heartbeat, hands
    the answer back and the session uses it (not made and paid again after resume).
    Pause while a retry waits for its answer after an earlier attempt's answer was
    lost: that lost answer is counted."""
    from temporal_handoff.workers.plugin import HandoffOptions

    faults = [
        # turn 1: answered, then held; the session is paused meanwhile
        Fault(hold_s=30.0, times=1),
        # turn 2: attempt 1 answered, held past the 2 s timeout (lost); attempt 2 is
        # slow to answer, and the session is paused meanwhile
        Fault(hold_s=4.0, times=1),
        Fault(delay_s=30.0, times=1),
    ]
    options = HandoffOptions(heartbeat_every_s=0.2)
    with FakeAnthropicServer(brain=ScriptedAgentBrain(), latency_s=0.02, faults=faults) as fake:
        async with running_worker(client, task_queue, fake.base_url, options=options):
            handle = await start_session(
                client, task_queue, synthetic_project(3, 1), prefix="billing-pause",
                model_call_timeout_s=2.0, model_retry_initial_s=0.1, **STREAMED,
            )
            for pause_when in (
                lambda: len(held(fake)) == 1,
                lambda: len(fake.message_requests()) == 3,  # turn 2's attempt 2 waits
            ):
                while not pause_when():
                    await asyncio.sleep(0.05)
                await handle.signal("pause")
                # PAUSED once the cancelled attempt has stopped
                while (
                    await handle.query("status", result_type=SessionStatus)
                ).lifecycle != LifecycleState.PAUSED:
                    await asyncio.sleep(0.05)
                await handle.signal("resume")
            result = await handle.result()
    print(gap_line("paused calls", result, fake))
    assert result.reason == TerminationReason.TASK_COMPLETED
    assert result.ledger.billed_usage() == answered_usage(fake)
    assert result.ledger.calls + result.ledger.lost_answers == len(answered(fake))
    assert result.ledger.lost_answers == 1  # turn 2's first answer; turn 1's was used
