"""Issue 15: a generation whose first call the pre-flight refuses must not hand off again.

Its successor's prompt (system prompt, tools, continuation prompt) is as large, so it
is refused the same way: generations climbed with zero model calls each until
`max_generations`. The repro: a system prompt of dense lines (a JSON reference table)
that the config's rough sizing (4 characters a token) underestimates, so the window
check at start passes but the real first prompt does not fit beside `max_tokens`
(then the guard lowers `max_tokens`) or under the handoff threshold (then the session
stops with CONFIG_ERROR, naming the numbers, and resumes with a fixed config).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from typing import Any

from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from typer.testing import CliRunner

from temporal_handoff.chain import RunSummary, session_chain
from temporal_handoff.cli import app
from temporal_handoff.resume import resume_session
from temporal_handoff.schemas.lifecycle import TerminationReason
from temporal_handoff.schemas.model_io import ModelRequest
from temporal_handoff.schemas.session import SessionResult
from temporal_handoff.testing import FakeAnthropicServer, Fault, ScriptedAgentBrain
from temporal_handoff.testing.synthetic import synthetic_project
from temporal_handoff.workflows._first_call import first_call_verdict
from tests import waits
from tests.conftest import running_worker
from tests.helpers import call_model_inputs, start_session

CAP = 120.0
"""Seconds before a wait gives up (a way to fail instead of hanging, not a bound)."""


def dense_prompt(rows: int) -> str:
    """A system prompt with a JSON reference table: ~3 characters a token, not 4."""
    table = [{"id": f"r{i}", "k": i % 7, "v": [i, i + 1], "ok": i % 2 == 0} for i in range(rows)]
    return "Reference table (JSON lines):\n" + "\n".join(json.dumps(r) for r in table)


async def chain_of(client: Client, handle: WorkflowHandle[Any, Any]) -> list[RunSummary]:
    rows = await session_chain(client, handle.id)
    for row in rows:  # never stuck: no run of the chain has a failing workflow task
        failures = waits.task_failures(await waits.history(client, handle.id, row.run_id))
        assert not failures, f"generation {row.generation}: {failures[0]}"
    return rows


async def max_tokens_asked(client: Client, workflow_id: str, rows: list[RunSummary]) -> set[int]:
    """Every `max_tokens` the session's `call_model` activities were given."""
    asked: set[int] = set()
    for row in rows:
        history = await client.get_workflow_handle(workflow_id, run_id=row.run_id).fetch_history()
        for payload in call_model_inputs(history):
            (req,) = await client.data_converter.decode([payload], [ModelRequest])
            asked.add(req.max_tokens)
    return asked


def calls_per_generation(rows: list[RunSummary]) -> str:
    return "model calls per generation: " + ", ".join(
        f"gen {r.generation}: {r.turns} ({r.termination})" for r in rows
    )


async def test_max_tokens_is_lowered_when_the_first_prompt_leaves_too_little_room(
    client: Client, task_queue: str
) -> None:
    """Prompt ≈ 4,700 of an 8,000 window, max_tokens 4,096: every generation's first
    call is refused; with the guard it is sent with max_tokens 800 (room up to the 0.9
    threshold) and the session works through its tasks."""
    with FakeAnthropicServer(brain=ScriptedAgentBrain()) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start_session(
                client, task_queue, synthetic_project(12, 2), prefix="zero-shrink",
                context_window=8_000, max_tokens=4_096, system_prompt=dense_prompt(100),
                max_generations=6,
            )
            result = await waits.guarded(client, handle.id, handle.result(), "the result", CAP)
            rows = await chain_of(client, handle)
            asked = await max_tokens_asked(client, handle.id, rows)
    report = f"{result.reason.value}: {result.message}; {calls_per_generation(rows)}"
    assert all(r.turns > 0 for r in rows), report
    assert result.reason == TerminationReason.TASK_COMPLETED, report
    assert 800 in asked, asked  # the guard's max_tokens: room up to the threshold


async def test_a_prompt_over_the_threshold_stops_with_config_error_then_resumes(
    client: Client, task_queue: str
) -> None:
    """Prompt ≈ 6,700 tokens, window 5,000 (threshold 4,500): no call can be sent.
    Generation 0 hands off once (its successor's prompt has another form); generation
    1, seeded by that handoff, stops with the numbers instead of handing off again."""
    config: dict[str, Any] = dict(
        context_window=5_000, max_tokens=4_096, system_prompt=dense_prompt(150),
        max_generations=6,
    )
    with FakeAnthropicServer(brain=ScriptedAgentBrain()) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start_session(
                client, task_queue, synthetic_project(12, 2), prefix="zero-stop", **config
            )
            result: SessionResult = await waits.guarded(
                client, handle.id, handle.result(), "the result", CAP
            )
            rows = await chain_of(client, handle)
            report = f"{result.reason.value}: {result.message}; {calls_per_generation(rows)}"
            assert result.reason == TerminationReason.CONFIG_ERROR, report
            assert result.generation == 1, report
            assert fake.message_requests() == []
            for number in ("5,000", "4,500", "4,096", "0.9", "max_tokens", "context_window",
                           "compression_level", "--resume-from"):
                assert number in result.message, (number, result.message)
            assert result.final_handoff is not None  # --resume-from accepts it

            # `handoff status` shows why it closed (the closed run answers the query).
            address = client.service_client.config.target_host
            shown = await asyncio.to_thread(
                CliRunner().invoke, app, ["status", handle.id, "--address", address]
            )
            assert shown.exit_code == 0, shown.output
            flat = " ".join(shown.output.split())
            assert "CONFIG_ERROR" in flat and "4,500" in flat, shown.output

            # Resumed with a window that holds it, the session works.
            resumed = await resume_session(client, handle.id, {"context_window": 20_000})
            nxt = await client.start_workflow(
                "AgentSessionWorkflow", resumed.input, id=f"zero-resumed-{uuid.uuid4()}",
                task_queue=task_queue, result_type=SessionResult,
            )
            done = await waits.guarded(client, nxt.id, nxt.result(), "the resumed result", CAP)
            assert done.reason == TerminationReason.TASK_COMPLETED, done.message
            assert fake.message_requests(), "the resumed session made no call"


def test_the_verdict_lowers_max_tokens_or_says_why_not() -> None:
    # Fits under the threshold: room up to it (800), less than asked.
    assert first_call_verdict(4_700, 4_096, 8_000, 0.9, 256, 2).max_tokens == 800
    # Room up to the threshold below the minimum: the minimum, if the window has it.
    assert first_call_verdict(4_700, 4_096, 8_000, 0.99, 256, 2).max_tokens == 256
    # Over the threshold: no call.
    over = first_call_verdict(7_300, 4_096, 8_000, 0.9, 256, 3)
    assert over.max_tokens is None
    assert "7,300" in over.message and "7,200" in over.message and "generation 3" in over.message
    # The window leaves less than the minimum.
    tight = first_call_verdict(7_900, 4_096, 8_000, 0.99, 256, 1)
    assert tight.max_tokens is None and "min_max_tokens 256" in tight.message
    # Refused already with what fits: lowering it again would not help.
    assert first_call_verdict(4_700, 800, 8_000, 0.9, 256, 1).max_tokens is None


async def test_a_first_call_the_api_refuses_as_too_long_is_not_handed_off_again(
    client: Client, task_queue: str
) -> None:
    """The pre-flight lets the call through (the window taken is larger than the
    model's), the API answers "prompt is too long": the seeded generation stops."""
    too_long = "prompt is too long: 212000 tokens > 200000 maximum"
    with FakeAnthropicServer(brain=ScriptedAgentBrain()) as fake:
        fake.add_fault(Fault(status=400, message=too_long, path="/v1/messages"))
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start_session(
                client, task_queue, synthetic_project(6, 1), prefix="zero-overflow",
                max_generations=6,
            )
            result = await waits.guarded(client, handle.id, handle.result(), "the result", CAP)
            rows = await chain_of(client, handle)
    report = f"{result.reason.value}: {result.message}; {calls_per_generation(rows)}"
    assert result.reason == TerminationReason.CONFIG_ERROR, report
    assert result.generation == 1, report  # generation 0 handed off once
    assert too_long in result.message and "max_tokens 4,096" in result.message, report
    assert result.final_handoff is not None


async def test_human_text_that_fills_a_first_call_hands_off_instead_of_stopping(
    client: Client, task_queue: str
) -> None:
    """A successor's first call that is refused because of the human messages flushed
    into it is not a config error: one handoff puts those messages into the payload
    (within its budget) and the session goes on. Only a second zero-call generation in a
    row stops. (The 500-command storm met this with bursts of `say`.)"""
    from temporal_handoff.schemas.lifecycle import LifecycleState
    from temporal_handoff.schemas.session import SayArgs

    with FakeAnthropicServer(brain=ScriptedAgentBrain(tasks_per_turn=1)) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start_session(
                client, task_queue, synthetic_project(10, 2), prefix="zero-say",
                context_window=4_000, max_tokens=300, max_generations=8,
            )

            await waits.wait_status(client, handle.id, lambda s: s.turn >= 2, "2 turns", CAP)
            await handle.signal("pause")
            paused = await waits.wait_status(
                client, handle.id, lambda s: s.lifecycle == LifecycleState.PAUSED, "paused", CAP
            )
            gen = paused.generation
            said = 0
            for i in range(12):  # as many as the inbox takes: more than fits beside the prompt
                # Checksums: dense text (~2 characters a token) that the say check's
                # rough sizing (4 a token) lets in, but the real count does not fit.
                text = f"checksums {i}: " + " ".join(
                    hashlib.sha256(f"{i}-{j}".encode()).hexdigest() for j in range(20)
                )
                try:
                    await handle.execute_update("say", SayArgs(text=text), result_type=str)
                    said += 1
                except WorkflowUpdateFailedError:  # the inbox is full: enough
                    break
            await handle.signal("flush")
            await handle.signal("resume")
            result = await waits.guarded(client, handle.id, handle.result(), "the result", CAP)
            rows = await chain_of(client, handle)
    report = f"{said} says; {result.reason.value}: {result.message}; {calls_per_generation(rows)}"
    refused_first = [r for r in rows if r.generation > gen and r.turns == 0]
    assert refused_first, f"no first call was refused (the says did not fill it): {report}"
    assert result.reason == TerminationReason.TASK_COMPLETED, report


async def test_a_first_reply_that_cannot_grow_raises_a_blocker_not_a_handoff_loop(
    client: Client, task_queue: str
) -> None:
    """Prompt ≈ 4,700 of an 8,000 window: the first call goes out with max_tokens lowered
    to 800 and the model's reply (two long task summaries) is cut; the doubled call is
    refused and the session hands off. Its successor's first prompt is as large (before
    patch first-call-cut-1 every generation made one cut call and handed off, to
    max_generations): generation 1's cut reply raises the max_tokens blocker, saying why."""
    from temporal_handoff.schemas.session import AbortArgs, SessionStatus

    brain = ScriptedAgentBrain(tasks_per_turn=2, summary_words=1_500)
    with FakeAnthropicServer(brain=brain) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start_session(
                client, task_queue, synthetic_project(12, 2), prefix="zero-cut",
                context_window=8_000, max_tokens=4_096, system_prompt=dense_prompt(100),
                max_generations=6,
            )

            async def blocked_or_closed() -> SessionStatus | None:
                while True:
                    desc = await handle.describe()
                    if desc.status is not None and desc.status.name != "RUNNING":
                        return None
                    st = await handle.query("status", result_type=SessionStatus)
                    if any("max_tokens" in str(b) for b in st.open_blockers):
                        return st
                    await asyncio.sleep(0.2)

            st = await waits.guarded(client, handle.id, blocked_or_closed(), "a blocker or the end", CAP)
            if st is None:
                result = await handle.result()
                rows = await chain_of(client, handle)
                raise AssertionError(
                    f"no blocker: {result.reason.value}: {result.message}; {calls_per_generation(rows)}"
                )
            await handle.signal("abort", AbortArgs(reason="seen"))
            result = await handle.result()
            await chain_of(client, handle)  # no failing workflow task anywhere
    assert st.generation == 1, st.generation
    (blocker,) = [str(b) for b in st.open_blockers if "max_tokens" in str(b)]
    assert "cannot grow" in blocker, blocker
    full = result.project.model_dump_json()
    assert "another handoff would not help" in full and "Raise context_window" in full
