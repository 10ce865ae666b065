"""What a visibility query says about a waiting session is true at every wait.

Before, `AgentLifecycle` was upserted only after a model turn, so a paused session or
one waiting for a human decision still said ACTIVE/WARNING: `temporal workflow list
--query 'AgentLifecycle="AWAITING_DECISION"'` found nothing. Now the lifecycle is
upserted when a wait starts and ends, `NeedsHuman` says whether a human decision is
pending, and a closed session's memo carries its end reason (shown by `handoff list`).
"""

from __future__ import annotations

import asyncio
import json

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from temporal_handoff.cli import app
from temporal_handoff.schemas.session import DecideArgs, SessionStatus
from temporal_handoff.testing import FakeAnthropicServer, ScriptedAgentBrain
from tests.conftest import running_worker
from tests.test_operator_actions import cleanup, session_result, start, temporal_cli, wait_status

CAP = 60.0
"""Seconds before a visibility wait gives up (visibility is eventually consistent)."""


async def _listed(env: WorkflowEnvironment, query: str) -> list[dict[str, object]]:
    out = await temporal_cli(env, "workflow", "list", "--query", query, "-o", "json")
    text = out.strip()
    if not text:
        return []
    if text.startswith("["):
        return list(json.loads(text))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def _until_listed(env: WorkflowEnvironment, query: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CAP
    while not await _listed(env, query):
        if loop.time() > deadline:
            raise AssertionError(f"`temporal workflow list --query {query!r}` stayed empty")
        await asyncio.sleep(0.2)


async def test_lifecycle_and_needs_human_are_true_while_a_session_waits(
    env: WorkflowEnvironment, client: Client, task_queue: str
) -> None:
    brain = ScriptedAgentBrain(blocker_every=2)
    with FakeAnthropicServer(brain=brain) as fake:
        async with running_worker(client, task_queue, fake.base_url):
            handle = await start(client, task_queue, 6, paused=True)
            wid = handle.id
            me = f"WorkflowId = '{wid}'"
            async with cleanup(client, env, wid):
                await _until_listed(env, f"{me} AND AgentLifecycle = 'PAUSED' AND NeedsHuman = false")
                await temporal_cli(env, "workflow", "signal", "--workflow-id", wid, "--name", "resume")
                st = await wait_status(
                    client, wid, lambda s: bool(s.open_blockers) and s.lifecycle.value == "AWAITING_DECISION",
                    "a human-decision blocker", cap=CAP,
                )
                await _until_listed(
                    env, f"{me} AND AgentLifecycle = 'AWAITING_DECISION' AND NeedsHuman = true"
                )
                listed = await asyncio.to_thread(
                    CliRunner().invoke, app,
                    ["list", "--needs-human", "--json", "--address", _address(env)],
                )
                await handle.execute_update(
                    "decide", DecideArgs(blocker_id=st.open_blockers[0]["id"], decision="go on")
                )
                await handle.signal("abort", "enough")
                result = await session_result(client, wid)
                # Closed: nobody needs to decide anything any more.
                await _until_listed(
                    env, f"{me} AND ExecutionStatus = 'Completed' AND NeedsHuman = false"
                )
                closed = await asyncio.to_thread(
                    CliRunner().invoke, app, ["list", "--address", _address(env)]
                )
                final = await handle.query("status", result_type=SessionStatus)
    assert listed.exit_code == 0, listed.output
    rows = {r["workflow_id"]: r for r in json.loads(listed.output)}
    assert wid in rows, rows  # (other tests' sessions on this server may wait too)
    assert all(r["needs_human"] is True for r in rows.values()), rows
    assert rows[wid]["lifecycle"] == "AWAITING_DECISION", rows[wid]
    assert result.reason.value == "USER_ABORT"
    assert closed.exit_code == 0, closed.output
    assert "USER_ABORT" in closed.output, closed.output
    assert not final.paused and final.lifecycle.value == "TERMINATED", final


def _address(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host
