"""Property: random *valid* human commands, sent while a session runs and hands off,
are each applied exactly once and never leave the session stuck.

Hypothesis draws a small project and brain (blockers, first-attempt failures) and a
list of abstract actions (`tests/command_driver.Action`): decide / say / skip / retry
/ pause / resume / flush, sleeps, `await_handoff` (the next actions land while the
session is sealing a handoff) and bursts (`together`, often the same command twice).
`CommandDriver` resolves each action against the live `status`/`project` queries so
only valid commands are sent, logs every command with a unique marker, and ends the
session (abort, rarely, as the last command; else resume and decide until it
completes). Then, for every example:

* no workflow task failed in any run (across continue-as-new) or handoff child, and
  the session completed with a `SessionResult` (`assert_never_stuck`);
* every accepted command was applied exactly once and no rejected one was applied
  (`check_exactly_once`).

How hypothesis runs against the real dev server: pytest-asyncio (1.x, `asyncio_mode =
"auto"`, test loop scope "session" in pyproject) recognises an ``async def`` test
decorated with ``@given`` and runs hypothesis' inner test on the session-scoped event
loop (its `AsyncHypothesisTest` item), so each example is one coroutine on the loop
that owns the session fixtures (`client`). No threads are needed (the alternative, a
sync ``@given`` function driven through ``asyncio.to_thread`` +
``asyncio.run_coroutine_threadsafe``, is what `tests/test_fuzz.py` does). Each
example gets its own task queue, worker and fake model (function-scoped fixtures
would be shared across examples, so none are used). Shrinking is off: every example
is a real session whose outcome depends on timing, so a shrink would mostly
reproduce flakily and cost minutes; the failure message lists the commands instead.

`pytest --hypothesis-show-statistics` shows how many commands landed during handoffs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from temporalio.client import Client

from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.synthetic import synthetic_project
from tests.command_driver import (
    COMMAND_WEIGHTS,
    WAITS,
    Action,
    CommandDriver,
    SessionCheck,
    check_exactly_once,
    check_session,
)
from tests.conftest import running_worker
from tests.helpers import start_session


@dataclass(frozen=True)
class Scenario:
    tasks: int
    blocker_every: int
    fail_first: tuple[str, ...]
    actions: tuple[Action, ...]
    abort: bool


_KINDS = [k for k, w in COMMAND_WEIGHTS.items() for _ in range(w)]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """Like `command_driver.random_actions`: bursts of 1-4 commands, each after a wait
    (none, a sleep, or the next handoff), a command often repeating the previous one."""
    tasks = draw(st.integers(20, 30))
    ids = list(synthetic_project(tasks, 3).tasks)
    actions: list[Action] = []
    for _ in range(draw(st.integers(2, 8))):
        wait = draw(st.sampled_from(WAITS))
        if wait != "none":
            actions.append(Action(wait, draw(st.integers(0, 3))))
        for j in range(draw(st.integers(1, 4))):
            together = j > 0 or wait != "none"
            if j > 0 and draw(st.booleans()):
                actions.append(Action(actions[-1].kind, actions[-1].pick, together=True))
            else:
                kind = draw(st.sampled_from(_KINDS))
                actions.append(Action(kind, draw(st.integers(0, 3)), together=together))
    return Scenario(
        tasks=tasks,
        blocker_every=draw(st.sampled_from([0, 5, 7])),
        fail_first=tuple(sorted(draw(st.sets(st.sampled_from(ids), max_size=6)))),
        actions=tuple(actions),
        abort=draw(st.integers(0, 5)) == 0,
    )


def _a(kind: str, pick: int = 0, together: bool = False) -> Action:
    return Action(kind, pick, together)


# Handoff races worth trying on every run, whatever hypothesis draws.
TWO_RETRIES_DURING_HANDOFF = Scenario(
    tasks=24, blocker_every=0, fail_first=("P1-T002", "P1-T004"),
    actions=(_a("skip"), _a("await_handoff"), _a("retry"), _a("retry", together=True),
             _a("say", together=True)),
    abort=False,
)
BURST_DURING_HANDOFF = Scenario(
    tasks=24, blocker_every=5, fail_first=("P1-T003",),
    actions=(_a("await_handoff"), _a("decide"), _a("decide", together=True),
             _a("skip", 1, together=True), _a("skip", 1, together=True),
             _a("say", together=True), _a("pause", together=True), _a("resume"),
             _a("flush"), _a("say", together=True), _a("await_handoff"), _a("say")),
    abort=False,
)


def describe(driver: CommandDriver, check: SessionCheck | None) -> str:
    lines = [f"session {driver.workflow_id}: trouble={driver.trouble!r}"]
    if check is not None:
        lines.append(f"handoffs={check.handoffs} problems={check.problems[:3]}")
    lines += [
        f"  #{e.seq} b{e.batch} {e.kind} {e.target} [{e.lifecycle} gen {e.generation}] "
        f"-> {e.outcome}: {e.result[:70]}"
        + (f" (resent after {e.closed_run_refusals} closed-run refusals)" if e.closed_run_refusals else "")
        for e in driver.ledger
    ]
    return "\n".join(lines)


@pytest.mark.timeout(540)
@settings(
    max_examples=12,
    deadline=None,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow],
)
@given(sc=scenarios())
@example(sc=TWO_RETRIES_DURING_HANDOFF)
@example(sc=BURST_DURING_HANDOFF)
async def test_valid_commands_apply_exactly_once(client: Client, sc: Scenario) -> None:
    brain = ScriptedAgentBrain(
        tasks_per_turn=1, summary_words=30, blocker_every=sc.blocker_every,
        fail_first=sc.fail_first,
    )
    task_queue = f"prop-{uuid.uuid4()}"
    check: SessionCheck | None = None
    with FakeAnthropicServer(brain=brain, latency_s=0.01) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start_session(
                client, task_queue, synthetic_project(sc.tasks, 3), prefix="prop",
                context_window=4_000, max_tokens=300, max_generations=100,
            )
            driver = CommandDriver(client, handle)
            try:
                await driver.run(list(sc.actions))
                await driver.finish(abort=sc.abort, timeout_s=180)
                check = await check_session(client, handle, driver.first_run_id)
            finally:
                await driver.terminate_if_running("property test: session stuck or not ended")
    counts = driver.counts()
    event(f"handoffs: {min(check.handoffs, 4)}{'+' if check.handoffs >= 4 else ''}")
    event(f"commands while sealing: {'yes' if counts['during_handoff'] else 'no'}")
    event(f"queued for a successor: {'yes' if counts['queued'] else 'no'}")

    info = describe(driver, check)
    assert not check.problems, "stuck:\n" + info
    assert driver.trouble is None, info
    result = check.result
    assert result is not None, info
    ledger = check_exactly_once(driver.ledger, check)
    assert not ledger.problems, "\n".join(ledger.problems[:5]) + "\n" + info
    assert result.reason in (TerminationReason.TASK_COMPLETED, TerminationReason.USER_ABORT), info
    if result.reason == TerminationReason.TASK_COMPLETED:
        assert result.project.completed_count == sc.tasks
    assert check.handoffs == result.generation
