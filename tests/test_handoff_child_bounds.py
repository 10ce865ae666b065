"""A handoff child never outlives its session.

Each `HandoffWorkflow` child has an execution timeout (`SessionConfig.
handoff_child_timeout_s`) and the parent close policy TERMINATE. Seen the way an
operator sees it, with the plain `temporal` CLI: `temporal workflow describe` on the
child and its session, `temporal workflow terminate` on the session mid-handoff. A
child that times out while its session waits (paused) is replaced; the session still
completes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from temporal_handoff.schemas.lifecycle import LifecycleState, TerminationReason
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from tests.conftest import running_worker
from tests.test_operator_actions import (
    PauseOn,
    assert_children_closed,
    assert_children_payloads_clean,
    assert_each_task_completed_once,
    assert_no_task_failures_any_run,
    cleanup,
    current_run,
    event_ids,
    session_result,
    start,
    temporal_cli,
)
from tests.waits import CAP, guarded, history, wait_status

CHILD_TIMEOUT_S = 5_400
"""Not the default (24 h), so the describe shows the session's own setting."""


async def describe(env: WorkflowEnvironment, workflow_id: str) -> dict[str, Any]:
    """`temporal workflow describe -o json`."""
    out = await temporal_cli(env, "workflow", "describe", "--workflow-id", workflow_id, "-o", "json")
    data: dict[str, Any] = json.loads(out)
    return data


def status_of(desc: dict[str, Any]) -> str:
    return str(desc["workflowExecutionInfo"]["status"])


async def wait_child_status(
    env: WorkflowEnvironment, client: Client, wid: str, child_id: str, status: str, what: str
) -> dict[str, Any]:
    async def poll() -> dict[str, Any]:
        while True:
            desc = await describe(env, child_id)
            if status in status_of(desc):
                return desc
            await asyncio.sleep(0.2)

    return await guarded(client, wid, poll(), what, CAP)


async def paused_with_child(client: Client, wid: str) -> str:
    """Wait until the session is paused (at WARNING) with its child started; the child id."""
    await wait_status(
        client, wid,
        lambda s: s.lifecycle == LifecycleState.PAUSED and s.generation == 0,
        "paused in WARNING with the child running",
    )
    events = await history(client, wid, await current_run(client, wid))
    started = event_ids(events, EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED)
    assert started, "the handoff child had not started"
    event = next(e for e in events if e.event_id == started[-1])
    return event.child_workflow_execution_started_event_attributes.workflow_execution.workflow_id


async def test_child_has_an_execution_timeout_and_dies_with_its_terminated_session(
    env: WorkflowEnvironment, client: Client, task_queue: str
) -> None:
    pauser = PauseOn(client)
    with FakeAnthropicServer(brain=ScriptedAgentBrain(summary_words=120), latency_s=0.1) as fake:
        async with running_worker(client, task_queue, fake.base_url, notifier=pauser):
            handle = await start(
                client, task_queue, 20, handoff_child_timeout_s=CHILD_TIMEOUT_S
            )
            wid = handle.id
            async with cleanup(client, env, wid):
                child_id = await paused_with_child(client, wid)
                child = await describe(env, child_id)
                session = await describe(env, wid)
                print(json.dumps(child["executionConfig"]), json.dumps(session["pendingChildren"]))
                assert child["executionConfig"].get("workflowExecutionTimeout") == (
                    f"{CHILD_TIMEOUT_S}s"
                ), child["executionConfig"]
                assert "RUNNING" in status_of(child)
                assert child["workflowExecutionInfo"]["parentExecution"]["runId"] == (
                    session["workflowExecutionInfo"]["execution"]["runId"]
                )
                [pending] = [
                    c for c in session["pendingChildren"] if c["workflowId"] == child_id
                ]
                assert pending["parentClosePolicy"] == "PARENT_CLOSE_POLICY_TERMINATE", pending
                # Mid-handoff (the child holds the events since WARNING): terminate the session.
                await temporal_cli(
                    env, "workflow", "terminate", "--workflow-id", wid,
                    "--reason", "operator test: terminate mid-handoff",
                )
                closed = await wait_child_status(
                    env, client, wid, child_id, "TERMINATED",
                    "the child terminated with its session",
                )
    assert "TERMINATED" in status_of(await describe(env, wid))
    print("child after the session was terminated:", status_of(closed))
    await assert_children_closed(env, wid)


async def test_child_that_timed_out_while_the_session_was_paused_is_replaced(
    env: WorkflowEnvironment, client: Client, task_queue: str
) -> None:
    pauser = PauseOn(client)
    with FakeAnthropicServer(brain=ScriptedAgentBrain(summary_words=120), latency_s=0.05) as fake:
        async with running_worker(client, task_queue, fake.base_url, notifier=pauser):
            handle = await start(client, task_queue, 20, handoff_child_timeout_s=2)
            wid = handle.id
            async with cleanup(client, env, wid):
                child_id = await paused_with_child(client, wid)
                await wait_child_status(
                    env, client, wid, child_id, "TIMED_OUT",
                    "the child timed out (the session is paused)",
                )
                await client.get_workflow_handle(wid).signal("resume")
                result = await session_result(client, wid)
    assert result.reason == TerminationReason.TASK_COMPLETED, (result.reason, result.message)
    assert result.generation >= 1
    assert_each_task_completed_once(result)
    await assert_no_task_failures_any_run(client, wid)
    await assert_children_payloads_clean(client, wid, result.generation)
    await assert_children_closed(env, wid)
