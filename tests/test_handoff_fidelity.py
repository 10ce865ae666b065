"""Handoff fidelity, end to end: the successor continues from the payload alone.

Progress hints are off, so no tool result or nudge tells the agent what is done; the
`PayloadAgent` reads only the request (plan in the system prompt, continuation prompt,
its own calls, `recall` results). A small window forces a handoff every few turns.
The same session with the continuation prompt blanked (the agent reads "(nothing)")
must fail visibly, inside this test: that is how we know the test measures the payload.
"""

from __future__ import annotations

from temporalio.client import Client

from temporal_handoff.schemas.config import DEFAULT_LEVEL_BUDGETS
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.testing import FakeAnthropicServer, PayloadAgent, fidelity_plan
from temporal_handoff.testing.fidelity_run import FidelityRun, run_fidelity
from temporal_handoff.testing.synthetic import synthetic_project
from tests.conftest import running_worker

WINDOW = 4_500
SEED = 3


async def _run(
    client: Client, task_queue: str, *, blank: bool, max_generations: int
) -> FidelityRun:
    project = synthetic_project(50, 3, seed=SEED)
    plan = fidelity_plan(project, seed=SEED)
    agent = PayloadAgent(seed=SEED, blank_handoff=blank)
    with FakeAnthropicServer(brain=agent, context_windows={"claude-sonnet-4-6": WINDOW}) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            return await run_fidelity(
                client,
                task_queue,
                project,
                plan,
                agent,
                context_window=WINDOW,
                max_generations=max_generations,
                prefix="blank" if blank else "fidelity",
            )


async def test_successor_continues_from_the_payload_alone(client: Client, task_queue: str) -> None:
    run = await _run(client, task_queue, blank=False, max_generations=30)
    s = run.score
    # No tool result or nudge told the agent what is done (progress hints off).
    assert run.progress_hints_seen == 0, run.summary()
    assert run.result.reason == TerminationReason.TASK_COMPLETED, run.summary()
    assert run.generations >= 6, run.summary()  # ≥ 5 handoffs
    assert s["tasks_repeated"] == 0 and s["tasks_skipped"] == 0, run.summary()
    assert s["decisions_made"] > 0 and s["decisions_honoured"] == s["decisions_made"], run.summary()
    assert run.human_decisions_sent > 0
    assert s["failed_retries"] > 0, run.summary()
    assert s["failed_retries_changed_approach"] == s["failed_retries"], run.summary()
    assert s["steps_resumed"] == s["steps_tasks"] > 0, run.summary()
    # What only the handoff could carry was needed: decisions used and failed tasks
    # finished in a later generation than the one that recorded them.
    assert s["decisions_used_after_a_handoff"] > 0, run.summary()
    assert s["failed_tasks_finished_after_a_handoff"] > 0, run.summary()
    assert run.probe_misses == 0, run.summary()
    assert all(x in (1.0, None) for x in run.critical_survival_by_generation), run.summary()
    # Every prompt within the budget of the level it was rendered at (the probe check
    # escalates a level too small for the critical items; it never overflows one).
    over = [
        (t, lv) for t, lv in zip(run.payload_tokens, run.payload_levels, strict=True)
        if t > DEFAULT_LEVEL_BUDGETS[lv]
    ]
    assert run.payload_tokens and not over, over

    # The control: the same session, the continuation prompt blanked. Given a few more
    # generations than the honest run needed, it must still fail, visibly.
    control = await _run(
        client, f"{task_queue}-blank", blank=True, max_generations=run.generations + 2
    )
    c = control.score
    assert control.result.reason != TerminationReason.TASK_COMPLETED, control.summary()
    assert c["tasks_repeated"] > 0, control.summary()
    assert c["tasks_skipped"] > 0, control.summary()
    assert c["decisions_honoured"] < c["decisions_made"], control.summary()
    assert control.probe_misses > 0, control.summary()
