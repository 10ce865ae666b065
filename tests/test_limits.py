"""Payload limits: the handoff payload cap and oversized human input.

The handoff payload is hard-capped by `SessionConfig.max_payload_bytes` (default
256 KiB, far below Temporal's 2 MiB payload limit, past which the server would
terminate the workflow). A payload over the cap fails the `build_handoff` activity
with the non-retryable `HandoffPayloadTooLarge` error, whose message names the
session, the size, the cap and the critical sections that made it big. Today that
failure propagates: the handoff child fails, then the session run fails with it
(a clean workflow failure with that cause chain — no stuck or retried workflow
task, no server-side termination).
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from typer.testing import CliRunner

from temporal_handoff.activities.handoff_activity import (
    PAYLOAD_TOO_LARGE,
    BuildHandoffInput,
    build_handoff,
)
from temporal_handoff.cli import app
from temporal_handoff.schemas.config import SessionConfig
from temporal_handoff.schemas.handoff import HandoffContext
from temporal_handoff.schemas.lifecycle import LifecycleState, TerminationReason
from temporal_handoff.schemas.project import Blocker, BlockerType, ProjectState
from temporal_handoff.schemas.session import SessionInput, SessionResult, SessionStatus
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from temporal_handoff.testing.synthetic import synthetic_project
from tests.conftest import running_worker

DEFAULT_CAP = SessionConfig().max_payload_bytes


def blocked_project(n_blockers: int = 160) -> ProjectState:
    """Open blockers are critical (never dropped from the payload): enough of them, with
    long descriptions, make a payload over the default 256 KiB cap while the project
    itself (the workflow input) stays far below 2 MiB."""
    project = synthetic_project(20, 2)
    for i in range(n_blockers):
        project.blockers.append(
            Blocker(
                id=f"B{i:03d}", type=BlockerType.TECHNICAL,
                description=f"blocker {i}: " + "flaky dependency in the build " * 90,
            )
        )
    return project


async def test_build_handoff_refuses_an_oversized_payload() -> None:
    ctx = HandoffContext(session_id="s-1", generation=3, reason=TerminationReason.MANUAL_FLUSH)
    project = blocked_project()
    assert len(project.model_dump_json()) < 1024 * 1024
    with pytest.raises(ApplicationError) as info:
        await ActivityEnvironment().run(
            build_handoff, BuildHandoffInput(state=project, context=ctx)
        )
    err = info.value
    assert err.type == PAYLOAD_TOO_LARGE and err.non_retryable
    assert f"over max_payload_bytes={DEFAULT_CAP:,}" in err.message
    assert "session 's-1' generation 3" in err.message
    assert "160 open blockers" in err.message
    # Under the cap the same builder succeeds.
    small = await ActivityEnvironment().run(
        build_handoff, BuildHandoffInput(state=synthetic_project(20, 2), context=ctx)
    )
    assert len(small.model_dump_json()) < DEFAULT_CAP


async def test_session_ends_cleanly_when_the_payload_cap_is_hit(
    client: Client, task_queue: str
) -> None:
    with FakeAnthropicServer(brain=ScriptedAgentBrain(decision_every=0)) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await client.start_workflow(
                "AgentSessionWorkflow",
                SessionInput(config=SessionConfig(), project=blocked_project(), paused=True),
                id=f"limits-{uuid.uuid4()}",
                task_queue=task_queue,
                result_type=SessionResult,
            )
            await handle.signal("flush")
            result = await asyncio.wait_for(handle.result(), timeout=60)
            child = await client.get_workflow_handle(f"{handle.id}-handoff-0").describe()

    # The session ends with a clear reason and keeps its whole state; the child that
    # hit the cap failed with the cap's message.
    assert result.reason == TerminationReason.HANDOFF_FAILED
    assert f"over max_payload_bytes={DEFAULT_CAP:,}" in result.message
    assert "open blockers" in result.message
    assert len(result.project.open_blockers()) == len(blocked_project().open_blockers())
    assert any(e.source == "handoff" for e in result.project.errors)
    assert child.status == WorkflowExecutionStatus.FAILED

    # Not a stuck task or a server-side termination.
    history = await handle.fetch_history()
    types = [e.event_type for e in history.events]
    assert EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in types
    assert types[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED


async def test_cli_say_refuses_oversized_text(
    env: WorkflowEnvironment, client: Client, task_queue: str
) -> None:
    address = env.client.service_client.config.target_host
    with FakeAnthropicServer() as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await client.start_workflow(
                "AgentSessionWorkflow",
                SessionInput(project=synthetic_project(4, 1), paused=True),
                id=f"limits-say-{uuid.uuid4()}",
                task_queue=task_queue,
                result_type=SessionResult,
            )
            try:
                runner = CliRunner()
                big = await asyncio.to_thread(
                    runner.invoke, app, ["say", handle.id, "x" * 70_000, "--address", address]
                )
                ok = await asyncio.to_thread(
                    runner.invoke, app, ["say", handle.id, "small note", "--address", address]
                )
                status = await handle.query("status", result_type=SessionStatus)
            finally:
                await handle.terminate("test over")
    assert big.exit_code == 1, big.output
    text = " ".join(big.output.split())
    assert "rejected" in text and "text is 70000 bytes; the limit is 65536 bytes" in text
    assert ok.exit_code == 0, ok.output
    assert status.lifecycle == LifecycleState.PAUSED
