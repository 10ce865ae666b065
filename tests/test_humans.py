"""Humans in the loop: decisions, pause/resume, abort, skip/retry, say, bad input."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError

from temporal_handoff.schemas.lifecycle import LifecycleState, TerminationReason
from temporal_handoff.schemas.project import TaskStatus
from temporal_handoff.schemas.session import (
    AbortArgs,
    DecideArgs,
    SayArgs,
    SessionResult,
    SessionStatus,
    TaskCommandArgs,
)
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.synthetic import synthetic_project
from tests.conftest import running_worker
from tests.helpers import start_session

MODEL = "claude-sonnet-4-6"


async def status(handle: WorkflowHandle) -> SessionStatus:
    return await handle.query("status", result_type=SessionStatus)


async def wait_for(handle: WorkflowHandle, predicate, timeout: float = 30.0) -> SessionStatus:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        st = await status(handle)
        if predicate(st):
            return st
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not reached; last status {st}")
        await asyncio.sleep(0.05)


async def decide_open_blockers(handle: WorkflowHandle, result_task: asyncio.Future) -> int:
    """An operator answering every human-decision blocker until the session ends."""
    decided = 0
    while not result_task.done():
        st = await status(handle)
        for b in st.open_blockers:
            if b["type"] == "human_decision":
                try:
                    await handle.execute_update(
                        "decide", DecideArgs(blocker_id=b["id"], decision="go ahead"),
                        result_type=str,
                    )
                    decided += 1
                except WorkflowUpdateFailedError:
                    pass  # already resolved by a racing poll
        await asyncio.sleep(0.05)
    return decided


async def test_decide_resolves_a_human_blocker(client: Client, task_queue: str) -> None:
    brain = ScriptedAgentBrain(blocker_every=4, decision_every=0)
    with FakeAnthropicServer(brain=brain) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start_session(client, task_queue, synthetic_project(12, 2))
            st = await wait_for(handle, lambda s: s.lifecycle == LifecycleState.AWAITING_DECISION)
            blocker = st.open_blockers[0]["id"]
            calls = len(fake.message_requests())
            await asyncio.sleep(0.5)
            assert len(fake.message_requests()) == calls  # no model calls while waiting

            # Unknown and malformed decisions are rejected with a reason.
            with pytest.raises(WorkflowUpdateFailedError) as info:
                await handle.execute_update(
                    "decide", DecideArgs(blocker_id="nope", decision="x"), result_type=str
                )
            assert "unknown blocker 'nope'" in str(info.value.cause)
            with pytest.raises(WorkflowUpdateFailedError):
                await handle.execute_update(
                    "decide", {"blocker_id": 5, "decision": ["not", "text"]}, result_type=str
                )
            out = await handle.execute_update(
                "decide",
                DecideArgs(blocker_id=blocker, decision="use sqlite", rationale="small", by="ana"),
                result_type=str,
            )
            assert blocker in out
            with pytest.raises(WorkflowUpdateFailedError) as info:
                await handle.execute_update(
                    "decide", DecideArgs(blocker_id=blocker, decision="again"), result_type=str
                )
            assert "already resolved" in str(info.value.cause)
            result_task = asyncio.ensure_future(handle.result())
            decided = await decide_open_blockers(handle, result_task)
            result = result_task.result()
    assert result.reason == TerminationReason.TASK_COMPLETED
    assert result.project.completed_count == 12
    decision = next(d for d in result.project.decisions if d.blocker_id == blocker)
    assert (decision.title, decision.rationale, decision.by) == ("use sqlite", "small", "human:ana")
    assert decision.at is not None
    human = [d for d in result.project.decisions if d.by.startswith("human")]
    assert len(human) == decided + 1
    assert all(b.status == "resolved" for b in result.project.blockers)


async def test_pause_holds_and_resume_continues(client: Client, task_queue: str) -> None:
    with FakeAnthropicServer(brain=ScriptedAgentBrain(), latency_s=0.02) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start_session(client, task_queue, synthetic_project(40, 2))
            await wait_for(handle, lambda s: s.tasks_done >= 3)
            await handle.signal("pause")
            await wait_for(handle, lambda s: s.lifecycle == LifecycleState.PAUSED)
            calls = len(fake.message_requests())
            await asyncio.sleep(1.5)
            assert len(fake.message_requests()) == calls
            st = await status(handle)
            assert st.paused and st.tasks_done < 40
            await handle.signal("resume")
            result = await handle.result()
    assert result.reason == TerminationReason.TASK_COMPLETED
    assert result.project.completed_count == 40


async def test_abort_returns_a_document_to_resume_from(client: Client, task_queue: str) -> None:
    with FakeAnthropicServer(brain=ScriptedAgentBrain(), latency_s=0.02) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start_session(client, task_queue, synthetic_project(30, 2))
            await wait_for(handle, lambda s: s.tasks_done >= 4)
            await handle.signal("abort", AbortArgs(reason="lunch"))
            aborted = await handle.result()
            assert aborted.reason == TerminationReason.USER_ABORT
            assert aborted.message == "lunch"
            assert aborted.final_handoff is not None
            assert 0 < aborted.project.completed_count < 30
            # Resume (what `handoff start --resume-from` does).
            resumed = await client.execute_workflow(
                "AgentSessionWorkflow",
                aborted.resume_input(),
                id=f"resumed-{uuid.uuid4()}",
                task_queue=task_queue,
                result_type=SessionResult,
            )
    assert resumed.reason == TerminationReason.TASK_COMPLETED
    assert resumed.project.completed_count == 30
    assert resumed.health.tasks_completed == 30


async def test_skip_retry_say_and_bad_input(client: Client, task_queue: str) -> None:
    brain = ScriptedAgentBrain(fail_first={"P1-T003"}, decision_every=0)
    with FakeAnthropicServer(brain=brain, latency_s=0.03) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start_session(client, task_queue, synthetic_project(30, 2))
            await wait_for(handle, lambda s: s.tasks_done >= 1)
            # A task whose dependencies are not done cannot be skipped.
            with pytest.raises(WorkflowUpdateFailedError) as info:
                await handle.execute_update(
                    "skip_task", TaskCommandArgs(task_id="P2-T030"), result_type=str
                )
            assert "is not done" in str(info.value.cause)
            for bad_id in ("", "no-such-task"):
                with pytest.raises(WorkflowUpdateFailedError):
                    await handle.execute_update("retry_task", {"task_id": bad_id}, result_type=str)
            # Oversized text (> 64 KiB) is refused, and so is an empty one.
            with pytest.raises(WorkflowUpdateFailedError) as info:
                await handle.execute_update("say", SayArgs(text="x" * 70_000), result_type=str)
            assert "limit is 65536 bytes" in str(info.value.cause)
            with pytest.raises(WorkflowUpdateFailedError):
                await handle.execute_update("say", {"text": ""}, result_type=str)
            with pytest.raises(WorkflowUpdateFailedError):
                await handle.execute_update("no_such_command", {"x": 1}, result_type=str)
            # A malformed signal is dropped, never fatal.
            await handle.signal("abort", {"reason": ["not", "a", "string"]})
            await handle.execute_update("say", SayArgs(text="hello from ops"), result_type=str)
            result = await handle.result()
    assert result.reason == TerminationReason.TASK_COMPLETED
    assert result.project.completed_count == 30
    assert result.project.human_messages.count("hello from ops") == 1
    assert result.project.tasks["P1-T003"].status == TaskStatus.COMPLETED
    assert result.project.tasks["P1-T003"].attempts == 2  # failed once, then done
