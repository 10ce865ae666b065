"""End to end: real dev server, real worker, real anthropic client, fake Messages API
with the scripted agent brain. The brain only knows what the prompts tell it."""

from __future__ import annotations

import itertools

from temporalio.client import Client, WorkflowExecutionStatus

from temporal_handoff.chain import session_chain
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.project import TaskStatus
from temporal_handoff.schemas.session import SessionInput
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.synthetic import synthetic_project
from tests.conftest import running_worker
from tests.helpers import start_session

WINDOW = 8_000


async def test_169_tasks_across_generations(client: Client, task_queue: str) -> None:
    brain = ScriptedAgentBrain(tasks_per_turn=2, decision_every=5)
    with FakeAnthropicServer(brain=brain, context_windows={"claude-sonnet-4-6": WINDOW}) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start_session(
                client, task_queue, synthetic_project(169, 6), prefix="e2e",
                context_window=WINDOW, max_tokens=300,
            )
            result = await handle.result()
        requests = fake.message_requests()

    assert result.reason == TerminationReason.TASK_COMPLETED
    assert result.generation >= 3
    tasks = result.project.tasks.values()
    assert all(t.status == TaskStatus.COMPLETED for t in tasks)
    # Each task completed exactly once: 169 successful completions, no re-completion.
    assert result.health.tasks_completed == 169
    assert result.project.duplicate_completions == 0
    assert result.health.decisions_recorded == len(result.project.decisions) > 0

    # The Temporal history: one continue-as-new per handoff, one completed child each.
    chain = await session_chain(client, handle.id)
    assert [r.generation for r in chain] == list(range(result.generation + 1))
    assert all(r.status == "CONTINUED_AS_NEW" for r in chain[:-1])
    assert chain[-1].status == "COMPLETED"
    for row in chain[:-1]:
        assert row.termination == "CONTEXT_HANDOFF"
        assert row.payload_tokens is not None and row.payload_tokens <= 1200
        child = await client.get_workflow_handle(f"{handle.id}-handoff-{row.generation}").describe()
        assert child.status == WorkflowExecutionStatus.COMPLETED

    # Every decision recorded in generation 0 (read back from the history of the
    # run that generation 0 handed to) is in the final state.
    gen1 = client.get_workflow_handle(handle.id, run_id=chain[1].run_id)
    first = await gen1.fetch_history()
    attrs = first.events[0].workflow_execution_started_event_attributes
    (gen1_input,) = await client.data_converter.decode(attrs.input.payloads, [SessionInput])
    gen0_decisions = {d.id for d in gen1_input.project.decisions if d.generation == 0}
    assert gen0_decisions
    assert gen0_decisions <= {d.id for d in result.project.decisions}

    # Thresholds: no request exceeded the window; once a reply pushed the context past
    # 90%, the next request belongs to a new generation (its prompt is smaller).
    assert all(r.status == 200 for r in requests)
    assert max(r.input_tokens or 0 for r in requests) <= WINDOW
    for prev, nxt in itertools.pairwise(requests):
        assert prev.usage is not None
        occupied = sum(prev.usage.values())
        if occupied >= 0.9 * WINDOW:
            assert (nxt.input_tokens or 0) < (prev.input_tokens or 0)


async def test_loop_guard_stops_at_max_generations(client: Client, task_queue: str) -> None:
    # A window so small that every generation overflows after a few tasks.
    with FakeAnthropicServer(brain=ScriptedAgentBrain(summary_words=120)) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start_session(
                client, task_queue, synthetic_project(60, 3), prefix="guard",
                context_window=3_500, max_tokens=300, max_generations=3,
            )
            result = await handle.result()
    assert result.reason == TerminationReason.MAX_GENERATIONS
    assert result.generation == 2
    assert 0 < result.project.completed_count < 60
    # The final document is returned so the work can be resumed later.
    assert result.final_handoff is not None
    assert "Next eligible tasks:" in result.final_handoff.prompt
