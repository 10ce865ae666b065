"""Model faults survived; non-retryable errors become blockers; 413 forces a handoff."""

from __future__ import annotations

import asyncio

from temporalio.client import Client

from temporal_handoff.chain import session_chain
from temporal_handoff.schemas.lifecycle import LifecycleState, TerminationReason
from temporal_handoff.schemas.session import DecideArgs, SessionStatus
from temporal_handoff.schemas.tokens import TokenUsage
from temporal_handoff.testing import FakeAnthropicServer, Fault, ScriptedAgentBrain
from temporal_handoff.testing.synthetic import synthetic_project
from tests.conftest import running_worker
from tests.helpers import start_session

MODEL = "claude-sonnet-4-6"
FAST_RETRY = {"model_retry_initial_s": 0.05}


def fault_mix() -> list[Fault]:
    """~30% of model requests fail, spread over six kinds (rolled in order)."""
    rate = 0.058  # 1 - (1 - 0.058) ** 6 ≈ 0.30
    return [
        Fault(status=429, retry_after_ms=50, rate=rate),
        Fault(status=529, rate=rate),
        Fault(status=500, rate=rate),
        Fault(status=504, rate=rate),
        Fault(drop_connection=True, rate=rate),
        Fault(delay_s=2.0, rate=rate),  # slower than the 1 s activity timeout
    ]


async def test_faults_at_30_percent_over_a_169_task_session(
    client: Client, task_queue: str
) -> None:
    brain = ScriptedAgentBrain(tasks_per_turn=2)
    with FakeAnthropicServer(brain=brain, faults=fault_mix(), seed=7) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start_session(
                client, task_queue, synthetic_project(169, 6), prefix="faults",
                context_window=8_000, max_tokens=300, model_call_timeout_s=1.0, **FAST_RETRY,
            )
            result = await handle.result()
        requests = fake.message_requests()
    faulted = [r for r in requests if r.fault is not None]
    assert len(faulted) / len(requests) > 0.2
    assert {r.fault.split()[0] for r in faulted} >= {"429", "529", "500", "504", "drop_connection"}
    assert result.reason == TerminationReason.TASK_COMPLETED
    assert result.project.completed_count == 169 and result.project.duplicate_completions == 0
    # Each successful call counted once: the ledger's calls equal the 200 responses
    # whose activity attempt was still alive (not the ones past the timeout).
    answered = [r for r in requests if r.status == 200 and not (r.fault or "").startswith("delay")]
    chain = await session_chain(client, handle.id)
    # (The handoff note's turns are calls too, counted apart from the conversation's.)
    notes = sum(row.note_calls for row in chain)
    assert notes == result.ledger.note_calls
    assert result.ledger.calls == sum(row.turns for row in chain) + notes == len(answered)
    total = sum((row.usage for row in chain), TokenUsage())
    assert result.ledger.total_tokens == total.total
    # Retries are visible in history as activity attempts.
    attempts = sum(row.model_attempts for row in chain)
    assert attempts > sum(row.turns for row in chain)
    print(
        f"\nRELIABILITY faults: {len(faulted)} of {len(requests)} model requests faulted "
        f"({len(faulted) / len(requests):.0%}); {attempts} attempts for {result.ledger.calls} "
        f"calls; tasks 169/169, duplicates 0"
    )


async def test_non_retryable_error_raises_a_blocker(client: Client, task_queue: str) -> None:
    message = "invalid x-api-key (rotated?)"
    with FakeAnthropicServer(brain=ScriptedAgentBrain()) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start_session(client, task_queue, synthetic_project(10, 2), **FAST_RETRY)
            deadline = asyncio.get_running_loop().time() + 20
            while (await handle.query("status", result_type=SessionStatus)).tasks_done < 2:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            fake.add_fault(Fault(status=401, message=message, times=3))
            while True:
                st = await handle.query("status", result_type=SessionStatus)
                if st.lifecycle == LifecycleState.AWAITING_DECISION:
                    break
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            blocker = st.open_blockers[0]
            assert message in blocker["description"] and "401" in blocker["description"]
            calls = len(fake.message_requests())
            await asyncio.sleep(0.5)
            assert len(fake.message_requests()) == calls  # no loop, no retries
            fake.clear_faults()  # the operator fixes the key ...
            await handle.execute_update(
                "decide", DecideArgs(blocker_id=blocker["id"], decision="key rotated, retry")
            )
            result = await handle.result()
    assert result.reason == TerminationReason.TASK_COMPLETED
    assert result.project.completed_count == 10
    assert any("401" in e.message for e in result.project.errors)


async def test_prompt_too_long_forces_a_handoff(client: Client, task_queue: str) -> None:
    with FakeAnthropicServer(brain=ScriptedAgentBrain()) as fake:
        fake.add_fault(
            Fault(status=400, message="prompt is too long: 210000 tokens > 200000 maximum",
                  match="P1-T004", times=1)
        )
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start_session(client, task_queue, synthetic_project(12, 2), **FAST_RETRY)
            result = await handle.result()
    assert result.reason == TerminationReason.TASK_COMPLETED
    assert result.generation == 1
    chain = await session_chain(client, handle.id)
    assert chain[0].termination == "CONTEXT_HANDOFF"
    assert result.project.completed_count == 12


async def test_context_window_exceeded_stop_reason_forces_a_handoff(
    client: Client, task_queue: str
) -> None:
    with FakeAnthropicServer(brain=ScriptedAgentBrain()) as fake:
        fake.add_fault(Fault(stop_reason="model_context_window_exceeded", times=1, match="P1-T003"))
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start_session(client, task_queue, synthetic_project(8, 2), **FAST_RETRY)
            result = await handle.result()
    assert result.reason == TerminationReason.TASK_COMPLETED
    assert result.generation == 1
